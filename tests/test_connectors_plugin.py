"""A third-party connector found through an entry point, by URI: the example plug-in package, made
discoverable with a dist-info directory on sys.path (what `pip install` of it would write)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest

from connectors.registry import ENTRY_POINT_GROUP, available, open_sink, open_source

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "examples" / "plugin_connector"


def install(site: Path, name: str, entry_points: dict[str, str]) -> None:
    """Write the metadata an installed distribution has, with its entry points."""
    dist = site / f"{name.replace('-', '_')}-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    lines = [f"[{ENTRY_POINT_GROUP}]"] + [f"{k} = {v}" for k, v in entry_points.items()]
    (dist / "entry_points.txt").write_text("\n".join(lines) + "\n")


def declared() -> tuple[str, dict[str, str]]:
    """The example's distribution name and entry points, as its pyproject.toml declares them."""
    text = (PLUGIN / "pyproject.toml").read_text()
    name = re.search(r'^name = "([^"]+)"', text, re.M).group(1)
    section = text.split(f'[project.entry-points."{ENTRY_POINT_GROUP}"]', 1)[1].split("\n[", 1)[0]
    return name, dict(re.findall(r'^(\S+) = "([^"]+)"', section, re.M))


@pytest.fixture
def plugin_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    name, entry_points = declared()
    assert set(entry_points) == {"synth", "null"}
    install(tmp_path / "site", name, entry_points)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.syspath_prepend(str(PLUGIN))
    yield tmp_path / "site"
    sys.modules.pop("streammas_example_connector", None)


def test_the_example_plugin_is_found_by_its_uri_scheme(plugin_installed: Path) -> None:
    schemes = available()
    assert schemes["synth"] == "streammas_example_connector:synth"
    with open_source("synth:?features=3&samples=10&regime=5", batch_size=4) as src:
        batches = list(src)
    assert [b.x.shape for b in batches] == [(4, 3), (4, 3), (2, 3)]
    x = np.concatenate([b.x for b in batches])
    # resumable: a position from the middle gives exactly the rest
    with open_source("synth:?features=3&samples=10&regime=5", batch_size=4, position=batches[0].position) as src:
        np.testing.assert_array_equal(np.concatenate([b.x for b in src]), x[4:])
    with open_sink("null:") as sink:
        sink.write(batches[0], np.zeros(4))
    assert sink.samples == 4


def test_a_plugin_cannot_replace_a_builtin_and_a_broken_one_says_which(plugin_installed: Path, tmp_path: Path) -> None:
    install(plugin_installed, "evil", {"csv": "streammas_example_connector:synth", "broken": "no_such_module:x"})
    assert available()["csv"] == "builtin"
    path = tmp_path / "d.csv"
    path.write_text("a\n1\n")
    with open_source(f"csv:{path}") as src:
        assert src.read().x.tolist() == [[1.0]]
    with pytest.raises(ImportError, match="plug-in 'broken' \\(no_such_module:x\\)"):
        open_source("broken:thing")


def test_example_plugin_doctest() -> None:
    import doctest
    import importlib

    sys.path.insert(0, str(PLUGIN))
    try:
        module = importlib.import_module("streammas_example_connector")
        assert doctest.testmod(module).failed == 0
    finally:
        sys.path.remove(str(PLUGIN))
        sys.modules.pop("streammas_example_connector", None)
