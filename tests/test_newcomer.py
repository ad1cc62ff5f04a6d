"""What a newcomer reads and types matches what the code does: the README's plug-in snippet, the help of the
fused step and of every option, the demo's verdict, and clear refusals for a file URI with a host, a port that is
not one and a state directory that is a file (the commands run as real subprocesses)."""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import tomllib
from dataclasses import fields
from pathlib import Path

import pytest
from service_support import streammas

from streammas.cli import command_parser
from streammas.learner.settings import LearnerSettings
from streammas.tools.demo.report import DemoResult, render_report

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
PLUGIN = REPO / "examples" / "plugin_connector"


def test_the_readme_plugin_snippet_names_what_the_example_exports(monkeypatch):
    snippet = next(block for block in re.findall(r"```toml\n(.*?)```", README, re.DOTALL)
                   if "streammas.connectors" in block)
    shown = tomllib.loads(snippet)["project"]["entry-points"]["streammas.connectors"]
    example = tomllib.loads((PLUGIN / "pyproject.toml").read_text())["project"]["entry-points"]["streammas.connectors"]
    assert shown == example
    monkeypatch.syspath_prepend(str(PLUGIN))
    for value in shown.values():
        module, _, attribute = value.partition(":")
        assert hasattr(importlib.import_module(module), attribute), value
    sys.modules.pop("streammas_example_connector", None)


def test_the_fused_step_help_says_it_feeds_adam_too():
    """The README: under SGD each weight is updated in place, under Adam the gradients go to torch's fused Adam."""
    assert "under Adam the hand-derived gradients go to torch's fused Adam kernel" in " ".join(README.split())
    help_ = next(f for f in fields(LearnerSettings) if f.name == "fused_step").metadata["help"]
    assert "SGD" in help_ and "Adam" in help_


def test_the_readme_gives_no_test_count_that_rots():
    assert not re.search(r"\b\d[\d,]* tests\b", README)


def _result(service: list[float], plain: list[float]) -> DemoResult:
    return DemoResult(samples=300, seconds=1.0, counters={}, consolidations=0, events=[], regimes=["a", "b", "c"],
                      segments=[(0, 100, 0), (100, 200, 1), (200, 300, 2)], settings={}, service_error=service,
                      plain_error=plain, state_dir="")


def test_the_demo_calls_forgetting_mild_only_when_it_was():
    # the case of the issue: no better on the mean, but regime A, shown first, 5x worse without memory
    forgot = render_report(_result([0.010, 0.050, 0.060], [0.050, 0.030, 0.030]))
    assert "mild" not in forgot
    assert "but forgot regime A, shown first: its error there is 5.0x streammas's" in forgot
    kept = render_report(_result([0.010, 0.050, 0.060], [0.011, 0.030, 0.030]))
    assert "on this stream, forgetting was mild" in kept


def _options(parser: argparse.ArgumentParser, name: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                yield from _options(subparser, f"{name} {sub}")
        elif action.option_strings and action.help != argparse.SUPPRESS and not isinstance(action,
                                                                                          argparse._HelpAction):
            yield name, parser, action


@pytest.mark.parametrize("command", ["demo", "inspect", "evaluate", "bench"])
def test_every_option_has_help_and_its_default(command):
    for name, parser, action in _options(command_parser(command), command):
        flag = action.option_strings[-1]
        assert action.help, f"streammas {name} {flag} has no help"
        shown = " ".join(parser.formatter_class(parser.prog)._expand_help(action).split())  # as --help prints it
        if action.nargs != 0 and action.default != []:  # a value (not a flag, not a list to add to): its default
            assert "default" in shown, f"streammas {name} {flag}: {shown!r} does not say its default"


@pytest.mark.slow
def test_a_file_uri_with_a_host_is_refused(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    result = streammas("run", "--source", "csv://data.csv", "--state-dir", "state", cwd=tmp_path)
    assert result.returncode == 2
    assert "'//data.csv' names a host, not a file" in result.stderr and "csv:data.csv" in result.stderr


@pytest.mark.slow
def test_send_flags_a_port_that_is_not_one(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    result = streammas("send", "data.csv", "--to", "127.0.0.1:55555555", "--connect-timeout", "1", cwd=tmp_path)
    assert result.returncode == 2
    assert "'55555555' is not a TCP port (0 to 65535" in result.stderr


@pytest.mark.slow
def test_a_state_directory_that_is_a_file(tmp_path):
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    (tmp_path / "state").write_text("")
    result = streammas("run", "--source", "csv:data.csv", "--state-dir", "state", cwd=tmp_path)
    assert result.returncode == 2
    assert "[state] dir state is a file, not a directory" in result.stderr and "File exists" not in result.stderr
