"""``streammas demo`` in its reduced form: the real service, the real ZeroMQ path, the report."""

from __future__ import annotations

import pytest
from service_support import streammas

from streammas.tools.demo import make_demo_stream, render_report, run_demo


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path):
    result = streammas("demo", "--quick", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "streammas demo: report" in out
    assert "consolidations" in out and "plateau" in out
    assert "streammas  no memory" in out
    assert "A: digits 0123" in out and "C: digits 789" in out
    assert "segment 6/6 learned" in result.stderr  # progress, one line per segment off a terminal


def test_demo_result_keeps_state_for_inspect(tmp_path):
    result = run_demo(quick=True, state_dir=str(tmp_path / "state"), passes=1)
    assert result.samples == len(make_demo_stream(quick=True, passes=1).x)
    assert len(result.service_error) == len(result.plain_error) == 3
    assert all(e > 0 for e in result.service_error + result.plain_error)
    assert list((tmp_path / "state").glob("ckpt-*.pt"))
    report = render_report(result)
    assert f"streammas inspect {tmp_path / 'state'}" in report


def test_progress_counts_a_consolidation_in_the_segment_where_it_happened(capsys):
    """The progress poll lands hundreds of samples into the next segment; a consolidation there is not the
    previous segment's."""
    from streammas.tools.demo.display import Display

    stream = make_demo_stream(quick=True, passes=1)
    (_, end1, _), (start2, end2, _), (_, end3, _) = stream.segments[:3]
    consolidated = [start2 + 5, end2 + 5]  # early in segment 2, early in segment 3
    display = Display(stream)
    display.update(end2 + 40, consolidated)  # seen at one poll, already past the second consolidation
    display.update(end3 + 1, consolidated)
    display.close(len(stream.x), consolidated)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == len(stream.segments)
    assert [line.rsplit(" ", 1)[1] for line in lines[:3]] == ["0", "1", "2"]
    assert lines[0].startswith("  segment 1/") and f"samples 0-{end1}" in lines[0]
