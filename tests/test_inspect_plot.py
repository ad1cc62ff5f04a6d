"""``streammas inspect --plot``: a real checkpoint from a short real run, drawn to a PNG by the command; without
matplotlib the command says what to install and exits with status 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from service_support import child_env, digits, streammas

from streammas.config import parse_config
from streammas.service import Service
from streammas.tools.inspect import summarize

pytestmark = pytest.mark.slow  # a run of the service, then the command in a fresh process

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CONFIG = """
[source]
uri = "npy:{dir}/x.npy"
batch_size = 16
[learner]
# plain SGD on the raw digits, a short detector: a plateau and a consolidation within 2,400 samples
optimizer = "sgd"
lr = 0.05
reg_lambda = 0.15
scale_inputs = "none"
consolidate_at = "plateau"
[learner.plateau]
window = 5
patience = 5
progress_steps = 10
[state]
dir = "{dir}/state"
[log]
status_every_seconds = 0
progress = "never"
"""


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("inspect")
    np.save(directory / "x.npy", digits(2400))
    service = Service(parse_config(CONFIG.format(dir=directory)), handle_signals=False)
    assert service.run() == 0
    return directory / "state"


def test_plot_draws_the_history_and_the_importance_to_a_png(state_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (pip install 'streammas[plot]')")
    summary = summarize(state_dir)
    assert summary["consolidations"] >= 1 and summary["loss_window"]["values"]
    out = tmp_path / "figures" / "state.png"
    out.parent.mkdir()
    done = streammas("inspect", str(state_dir), "--plot", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "consolidations" in done.stdout  # the text summary is printed as before
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 800 and height >= 600


def test_without_matplotlib_the_command_names_the_extra_and_exits_2(state_dir: Path, tmp_path: Path) -> None:
    # A None entry in sys.modules makes every import of matplotlib fail, as when it is not installed.
    code = ("import sys; sys.modules['matplotlib'] = None; from streammas.cli import main; "
            f"sys.exit(main(['inspect', {str(state_dir)!r}, '--plot', {str(tmp_path / 'out.png')!r}]))")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=child_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install 'streammas[plot]'" in done.stderr
    assert not (tmp_path / "out.png").exists()


def test_an_unwritable_plot_path_is_a_clear_error(state_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (pip install 'streammas[plot]')")
    done = streammas("inspect", str(state_dir), "--plot", str(tmp_path / "missing" / "out.png"), cwd=tmp_path)
    assert done.returncode == 2 and "cannot write" in done.stderr, done.stderr
