"""A finite source that yields nothing to learn says why at the end, counts what it turned away (in the stop line,
the checkpoint and ``streammas inspect``) and exits 1; the daemon is a real subprocess on real files."""

from __future__ import annotations

import contextlib
import json

import pytest
from service_support import streammas

pytestmark = pytest.mark.slow

ROWS = 20


def _run(tmp_path, *args: str):
    result = streammas("run", "--state-dir", "state", "--log-format", "json", *args, cwd=tmp_path)
    records = []
    for line in result.stderr.splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return result, {r.get("event"): r for r in records if isinstance(r, dict)}


def _inspect(tmp_path) -> dict:
    result = streammas("inspect", "state", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_csv_with_a_timestamp_column_says_why_nothing_was_learned(tmp_path):
    (tmp_path / "data.csv").write_text("ts,a,b\n" + "".join(f"2024-01-01T00:{i:02d},{i},{2 * i}\n"
                                                            for i in range(ROWS)))
    result, events = _run(tmp_path, "--source", "csv:data.csv")
    assert result.returncode == 1, result.stderr
    why = events["no_valid_samples"]["msg"]
    assert f"{ROWS} turned away, parse {ROWS} (the first: data.csv line 2: column 'ts':" in why
    assert f"the columns that were not numbers: 'ts' ({ROWS} rows)" in why
    assert '[source] options = { columns = ["a", "b"] }' in why
    stopped = events["stopped"]
    assert (stopped["rejected"], stopped["exit_code"], stopped["reason"]) == (ROWS, 1, "source yielded no valid sample")
    summary = _inspect(tmp_path)  # the rejects are kept, though nothing was learned
    assert summary["service"]["rejected"] == {"parse": ROWS} and summary["samples_seen"] == 0

    # with the columns chosen as suggested, the file is read from its start and learned
    result, events = _run(tmp_path, "--source", "csv:data.csv", "--set", 'source.options={columns=["a", "b"]}')
    assert result.returncode == 0, result.stderr
    assert "no_valid_samples" not in events
    assert events["stopped"]["samples_seen"] == ROWS and events["stopped"]["rejected"] == ROWS  # the first run's
    assert _inspect(tmp_path)["samples_seen"] == ROWS


@pytest.mark.parametrize("text", ["", "a,b\n"], ids=["empty", "header only"])
def test_an_empty_csv_says_it_yielded_nothing(tmp_path, text):
    (tmp_path / "data.csv").write_text(text)
    result, events = _run(tmp_path, "--source", "csv:data.csv")
    assert result.returncode == 1, result.stderr
    assert "csv:data.csv yielded no sample: it holds no data" in events["no_valid_samples"]["msg"]
    assert events["stopped"]["exit_code"] == 1


def test_rows_all_bad_after_a_restart_are_counted_once(tmp_path):
    data = tmp_path / "data.csv"
    data.write_text("a,b\n" + "".join(f"{i},{2 * i}\n" for i in range(ROWS)))
    result, events = _run(tmp_path, "--source", "csv:data.csv")
    assert result.returncode == 0 and events["stopped"]["samples_seen"] == ROWS
    with data.open("a") as f:  # rows appended with a field that is not a number
        f.write("".join(f"{i},oops\n" for i in range(5)))
    result, events = _run(tmp_path, "--source", "csv:data.csv")
    assert result.returncode == 1, result.stderr
    assert "5 turned away, parse 5" in events["no_valid_samples"]["msg"]
    assert events["stopped"]["rejected"] == 5
    assert _inspect(tmp_path)["service"]["rejected"] == {"parse": 5}
    # the checkpoint moved past them: the next run has nothing new, turns nothing away again, and ends normally
    result, events = _run(tmp_path, "--source", "csv:data.csv")
    assert result.returncode == 0, result.stderr
    assert events["stopped"]["rejected"] == 5 and events["stopped"]["samples_seen"] == ROWS
