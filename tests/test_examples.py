"""The examples a user copies from run as they are, from a fresh process, and print what they promise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from streammas.learner import learner_defaults

pytestmark = pytest.mark.slow  # each example trains in a fresh process

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(name: str, *args: str) -> str:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_embedded_loop_consolidates_and_remembers_better_than_its_twin_with_no_memory():
    out = _run("embedded_loop.py")
    assert len(re.findall(r"consolidated after [\d,]+ samples", out)) >= 1
    # the twin is named for what it is: the same learner under Adam (its default) with no memory, not SGD
    assert "SGD" not in out and learner_defaults()["optimizer"] == "adam"
    pairs = [(float(a), float(b)) for a, b in re.findall(r"streammas ([\d.]+)\s+no memory \(Adam\) ([\d.]+)", out)]
    assert len(pairs) == 3
    ours, plain = (sum(p[i] for p in pairs) / 3 for i in (0, 1))
    assert ours < 0.9 * plain, out


def test_river_anomaly_example_compares_three_detectors():
    out = _run("river_anomaly.py", "--passes", "1")
    aucs = re.findall(r"whole stream (0\.\d+), returning regime (0\.\d+)", out)
    assert len(aucs) == 3 and all(0.5 < float(a) <= 1 for pair in aucs for a in pair), out


def test_river_classification_example_runs_progressive_validation():
    out = _run("river_classification.py")
    accuracies = [float(a) for a in re.findall(r"Accuracy: ([\d.]+)%", out)]
    assert len(accuracies) == 3 and all(a > 60 for a in accuracies), out


def test_the_replay_ratio_example_shows_what_the_memory_keeps():
    out = _run("river_replay_ratio.py", "--ratios", "0", "1", "--seeds", "0", "--passes", "1")
    rows = {m.group(1): [float(v) for v in re.findall(r"([\d.]+) \(", m.group(2))]  # the means
            for m in re.finditer(r"^(0 \(no replay\)|1)\s{2,}(.*)$", out, re.M)}
    assert set(rows) == {"0 (no replay)", "1"} and all(len(v) == 4 for v in rows.values()), out
    assert all(0.5 < v <= 1 for v in rows["1"]), out
    assert rows["1"][3] > rows["0 (no replay)"][3] + 0.03, out  # the memory keeps the regime that returns


def test_the_input_clip_example_prints_each_setting():
    out = _run("sgd_input_clip.py", "--seeds", "1", "--permutations", "2", "--passes", "1")
    lines = [line for line in out.splitlines() if "%" in line]
    assert [line.split()[0] for line in lines] == ["input_clip=30", "input_clip=100", "scale_inputs='none'"]
    assert all(20.0 < float(line.split("%")[0].split()[-1]) <= 100.0 for line in lines), out
