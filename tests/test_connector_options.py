"""A connector's options explain themselves: an option in the wrong place or misspelt, or left over from another
scheme, is refused (exit 2) naming what the connector accepts, and ``--help-config`` lists every connector's
options with their defaults, read from the connectors themselves."""

from __future__ import annotations

import inspect

import pytest
from service_support import streammas, write_config

from connectors.csv_source import CsvSource
from connectors.jsonl_sink import JsonlSink
from connectors.registry import open_sink, open_source, register, unregister
from connectors.text import LineSource
from connectors.zmq import ZmqSource

pytestmark = pytest.mark.slow


@pytest.fixture
def data(tmp_path):
    (tmp_path / "data.csv").write_text("ts,a,b\n" + "".join(f"2024-01-01T00:0{i},{i},{2 * i}\n" for i in range(8)))
    return tmp_path


def _refused(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "unexpected keyword" not in result.stderr
    return result.stderr


def test_an_option_under_source_points_at_the_options_table(data):
    config = write_config(data / "c.toml", '[source]\nuri = "csv:data.csv"\ncolumns = ["a", "b"]\n')
    err = _refused(streammas("run", "--config", str(config), cwd=data))
    assert "[source] unknown key 'columns'" in err
    assert 'options = { columns = ["a", "b"] }' in err


def test_a_misspelt_option_names_those_accepted(data):
    config = write_config(data / "c.toml", '[source]\nuri = "csv:data.csv"\noptions = { colums = ["a", "b"] }\n')
    err = _refused(streammas("run", "--config", str(config), cwd=data))
    assert "unknown option 'colums' for csv:; accepted: columns, delimiter, follow, header, label, label_dtype" in err
    assert "did you mean 'columns'?" in err
    # --check says the same, before anything is opened
    err = _refused(streammas("run", "--config", str(config), "--check", cwd=data))
    assert "unknown option 'colums' for csv:" in err


def test_an_option_left_over_from_another_scheme(data):
    config = write_config(data / "c.toml", '[source]\nuri = "csv:data.csv"\noptions = { columns = ["a", "b"] }\n')
    err = _refused(streammas("run", "--config", str(config), "--source", "zmq+pull://127.0.0.1:*", cwd=data))
    assert "unknown option 'columns' for zmq+pull:; accepted: bind, check_finite," in err


def test_a_sink_option_is_checked_too(data):
    config = write_config(data / "c.toml", '[source]\nuri = "csv:data.csv"\noptions = { columns = ["a"] }\n'
                                           '[sink]\nuri = "jsonl:out.jsonl"\noptions = { max_byte = 1000 }\n')
    err = _refused(streammas("run", "--config", str(config), cwd=data))
    assert "unknown option 'max_byte' for jsonl:" in err and "did you mean 'max_bytes'?" in err
    assert not (data / "out.jsonl").exists()


def test_help_config_lists_each_connectors_options_with_their_defaults(tmp_path):
    result = streammas("run", "--help-config", cwd=tmp_path)
    assert result.returncode == 0
    sections = {}
    for block in result.stdout.split("Connector options", 1)[1].split("\n")[1:]:
        if block and not block.startswith(" "):
            current = sections.setdefault(block.strip(), {})
        elif block.strip():
            name, default = block.split(maxsplit=1)
            current[name] = default.strip()
    # the defaults shown are the classes' own, so the list cannot drift from the code
    csv = sections["csv: source options"]
    for cls, names in ((CsvSource, ("columns", "header", "label", "label_dtype", "delimiter")),
                       (LineSource, ("follow", "poll_interval"))):
        for name in names:
            default = inspect.signature(cls).parameters[name].default
            assert csv[name] == ("(unset)" if default is None else repr(default))
    assert sections["zmq+pull: source options"]["hwm"] == repr(inspect.signature(ZmqSource).parameters["hwm"].default)
    assert "max_message_bytes" in sections["zmq+pull: source options"]
    sink = sections["jsonl: sink options"]
    assert sink["keep"] == repr(inspect.signature(JsonlSink).parameters["keep"].default)
    assert {"max_bytes", "rotate_seconds", "max_pending"} <= set(sink)
    assert "q" in sections["alerts: sink options"] and "zmq+pub: sink options" in sections


def test_the_registry_checks_options_before_opening(tmp_path):
    (tmp_path / "a.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"unknown option 'follw' for csv:; accepted: .*\(did you mean 'follow'\?\)"):
        open_source(f"csv:{tmp_path}/a.csv", follw=True)
    with pytest.raises(ValueError, match="unknown option 'rotate' for jsonl:"):
        open_sink(f"jsonl:{tmp_path}/out.jsonl", rotate=10)
    assert not (tmp_path / "out.jsonl").exists()


def test_a_connector_that_declares_nothing_gets_every_option():
    """A plug-in's open_source that takes **options and declares nothing is handed whatever is given."""
    seen = {}

    class Open:
        def open_source(self, uri, *, batch_size, max_latency_ms, position, **options):
            seen.update(options)
            return CsvSource  # never read: the test looks at what it was handed

    register("anything", Open())
    try:
        open_source("anything:x", whatever=1)
    finally:
        unregister("anything")
    assert seen == {"whatever": 1}
