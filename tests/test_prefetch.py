"""A file source read ahead in a child process gives what the source gives in the caller's process: the same
batches, positions, counts and log lines; it survives its child's death and dies with its parent."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from connectors.prefetch import ProcessSource
from connectors.registry import open_source

PATIENCE = 60.0


def _csv(path: Path, rows: int, bad: dict[int, str]) -> Path:
    with open(path, "w") as f:
        f.write("a,b,label\n")
        for i in range(rows):
            f.write((bad[i] if i in bad else f"{i},{2 * i},{i % 3}") + "\n")
    return path


def _jsonl(path: Path, rows: int, bad: dict[int, str]) -> Path:
    with open(path, "w") as f:
        for i in range(rows):
            f.write((bad[i] if i in bad else json.dumps({"x": [i, -i], "y": i % 2})) + "\n")
    return path


def _read(source) -> tuple[list, dict, dict]:
    """Every batch with the counters and position seen right after it, the final counters, the first examples."""
    with source:
        seen = [(b.x, b.y, b.position, dict(source.counters), source.finished) for b in source]
        return (seen, dict(source.counters), dict(source.reject_examples), getattr(source, "failed_columns", {}),
                getattr(source, "feature_columns", None))


def _same(inline: tuple, process: tuple) -> None:
    assert len(process[0]) == len(inline[0])
    for (x1, y1, *rest1), (x2, y2, *rest2) in zip(inline[0], process[0]):
        np.testing.assert_array_equal(x1, x2)
        assert x2.dtype == x1.dtype and x2.flags.writeable
        np.testing.assert_array_equal(y1, y2)
        assert rest1 == rest2
    assert process[1:] == inline[1:]


@pytest.mark.parametrize("batch_size", [1, 32, 700])
def test_a_csv_read_in_a_child_is_the_csv_read_here(tmp_path: Path, batch_size: int) -> None:
    bad = {3: "3,oops,1", 600: "1,2", 900: "nan,1,0", 901: "", 1500: "1,2,3,4", 1998: "x,y,z", 1999: "3,4,1.5"}
    path = _csv(tmp_path / "d.csv", 2000, bad)  # rejects inside blocks, and after the last good row
    inline = _read(open_source(f"csv:{path}", batch_size=batch_size))
    process = _read(ProcessSource(f"csv:{path}", batch_size=batch_size))
    _same(inline, process)
    assert process[1]["rejected:parse"] == 2 and process[1]["rejected:label"] == 1
    assert process[1]["samples"] == 2000 - len(bad)
    assert process[3] == {"a": 1, "b": 2} and process[4] == ["a", "b"]


def test_a_jsonl_file_too(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "d.jsonl", 300, {7: "not json", 150: '{"x": [1, 2, 3]}', 299: '{"x": "a"}'})
    _same(_read(open_source(f"jsonl:{path}", batch_size=16)), _read(ProcessSource(f"jsonl:{path}", batch_size=16)))


def test_each_position_it_gives_resumes_right_after_its_batch(tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", 1500, {10: "bad,1,1"})
    batches = _read(ProcessSource(f"csv:{path}", batch_size=100))[0]
    ids = [int(v) for b in batches for v in b[0][:, 0]]
    for k in (0, 6, len(batches) - 1):
        position = json.loads(json.dumps(batches[k][2]))  # as a checkpoint keeps it
        with ProcessSource(f"csv:{path}", batch_size=100, position=position) as resumed:
            rest = [int(v) for b in resumed for v in b.x[:, 0]]
        done = sum(len(b[0]) for b in batches[: k + 1])
        assert rest == ids[done:]


def test_the_childs_rejects_are_logged_by_the_parent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = _csv(tmp_path / "d.csv", 50, {20: "20,oops,1"})
    with caplog.at_level(logging.WARNING):
        _read(open_source(f"csv:{path}", batch_size=8))
    here = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _read(ProcessSource(f"csv:{path}", batch_size=8))
    child = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert child == here and any("line 22" in message for _, _, message in child)


@pytest.mark.parametrize("options", [{}, {"label": "nope"}])
def test_a_source_that_cannot_open_raises_its_own_error(tmp_path: Path, options: dict) -> None:
    uri = f"csv:{_csv(tmp_path / 'd.csv', 5, {})}" if options else f"csv:{tmp_path / 'missing.csv'}"
    with pytest.raises(Exception) as here:
        open_source(uri, **options)
    with pytest.raises(type(here.value)) as child:
        ProcessSource(uri, **options)
    assert str(child.value) == str(here.value)


def _wide_csv(path: Path, rows: int, bad: dict[int, str]) -> Path:
    """Rows of 64 features: more than the pipe holds, so that the child waits on it, in the middle of a message."""
    with open(path, "w") as f:
        f.write(",".join(f"f{j}" for j in range(64)) + "\n")
        for i in range(rows):
            f.write((bad[i] if i in bad else f"{i}," + ",".join(["0.125"] * 63)) + "\n")
    return path


def test_a_killed_child_is_started_again_from_the_last_batch(tmp_path: Path, caplog) -> None:
    path = _wide_csv(tmp_path / "d.csv", 8000, {5000: "bad"})
    inline = _read(open_source(f"csv:{path}", batch_size=32))
    with ProcessSource(f"csv:{path}", batch_size=32) as src, caplog.at_level(logging.WARNING):
        got = [src.read(PATIENCE) for _ in range(10)]
        time.sleep(0.5)  # the child fills the pipe and waits on it
        assert src._process.poll() is None  # still reading: 8,000 wide rows are more than the pipe holds
        os.kill(src._process.pid, signal.SIGKILL)
        got += list(src)
        counters = dict(src.counters)
    assert np.concatenate([b.x for b in got]).tolist() == np.concatenate([b[0] for b in inline[0]]).tolist()
    assert [b.position for b in got] == [b[2] for b in inline[0]]
    assert counters == inline[1]
    assert any("reader process exited" in r.getMessage() for r in caplog.records)


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except FileNotFoundError:
        return True


def _wait_gone(pid: int) -> bool:
    deadline = time.monotonic() + PATIENCE
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return _gone(pid)


def test_close_stops_the_child_and_a_dead_parent_leaves_none_behind(tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", 10, {})
    src = ProcessSource(f"csv:{path}", follow=True)  # never finished: the child waits for more rows
    pid = src._process.pid
    assert src.read(PATIENCE) is not None and not _gone(pid)
    src.close()
    assert _wait_gone(pid)
    script = ("import sys, time\nfrom connectors.prefetch import ProcessSource\n"
              f"src = ProcessSource({f'csv:{path}'!r}, follow=True)\nprint(src._process.pid, flush=True)\n"
              "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    child = int(parent.stdout.readline())
    assert not _gone(child)
    parent.kill()
    parent.wait()
    assert _wait_gone(child)


def test_a_followed_file_counts_rows_turned_away_after_its_last_batch(tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", 10, {})
    with ProcessSource(f"csv:{path}", batch_size=4, follow=True, poll_interval=0.05) as src:
        assert sum(len(src.read(PATIENCE)) for _ in range(3)) == 10
        with open(path, "a") as f:
            f.write("1,oops,0\n")
        deadline = time.monotonic() + PATIENCE
        while src.counters.get("rejected:parse", 0) == 0 and time.monotonic() < deadline:
            assert src.read(0.05) is None
        assert src.counters["rejected:parse"] == 1 and src.failed_columns == {"b": 1}


def test_a_csv_forgets_no_shape_and_keeps_its_reader(tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", 100, {})
    with ProcessSource(f"csv:{path}", batch_size=10) as src:
        first = src.read(PATIENCE)
        pid = src._process.pid
        for _ in range(20):  # as often as a model too large for the stream is refused: no process started
            src.forget_sample_shape()
        assert src._process.pid == pid
        rest = list(src)
    assert [int(v) for b in [first, *rest] for v in b.x[:, 0]] == list(range(100))


def test_forgetting_the_shape_lets_the_next_samples_decide_again(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"x": [i, i]}) + "\n" for i in range(4))
                    + "".join(json.dumps({"x": [i, i, i]}) + "\n" for i in range(4, 10)))
    with ProcessSource(f"jsonl:{path}", batch_size=4, follow=True) as src:  # followed: the reader never ends
        first = src.read(PATIENCE)
        pid = src._process.pid
        src.forget_sample_shape()
        rest = [src.read(PATIENCE), src.read(PATIENCE)]
        counters = dict(src.counters)
        assert src._process.pid == pid  # the reader opened the file again: no new process
    assert first.x.shape == (4, 2) and [b.x.shape[1] for b in rest] == [3, 3]
    assert np.concatenate([b.x[:, 0] for b in rest]).tolist() == list(range(4, 10))
    assert counters["samples"] == 10 and not any(k.startswith("rejected") for k in counters)


def test_a_workers_share_of_the_rows_is_the_inline_share(tmp_path: Path) -> None:
    path = _csv(tmp_path / "d.csv", 1000, {50: "bad,1,1"})
    for rank in range(3):
        options = {"batch_size": 16, "shard": (rank, 3)}
        _same(_read(open_source(f"csv:{path}", **options)), _read(ProcessSource(f"csv:{path}", **options)))
