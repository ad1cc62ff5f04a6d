"""Sinks that run for weeks: JSON Lines rotation by size and time, logrotate's copytruncate and create,
``seq`` across restarts, failed writes (a full disk, a file size limit) that raise and are retried; and the
alerts-only sink on real files, alone and behind the service."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from service_support import child_env

from connectors.alerts_sink import AlertsSink, parse_uri
from connectors.base import Batch
from connectors.jsonl_sink import JsonlSink
from connectors.registry import open_sink, open_source
from connectors.rotating import RotatingFile


def _batch(n: int) -> Batch:
    return Batch(np.zeros((n, 1), dtype=np.float32))


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _seqs(*paths: Path) -> list[int]:
    return [r["seq"] for p in paths for r in _records(p)]


# -- rotation ----------------------------------------------------------------------------------------------------
def test_size_rotation_keeps_files_under_the_limit_and_the_newest_records(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    with JsonlSink(str(path), max_bytes=2000, keep=2) as sink:
        for k in range(60):
            sink.write(_batch(4), np.full(4, k / 7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.jsonl", "scores.jsonl.1", "scores.jsonl.2"]
    assert all(p.stat().st_size <= 2000 for p in tmp_path.iterdir())
    assert sink.rotations > 2
    kept = _seqs(path.with_name("scores.jsonl.2"), path.with_name("scores.jsonl.1"), path)
    assert kept == list(range(kept[0], 240)) and kept[0] > 0  # oldest files deleted, the rest contiguous


def test_a_file_from_an_earlier_period_is_rotated_at_the_first_write(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    with JsonlSink(str(path)) as sink:
        sink.write(_batch(3), np.ones(3))
    yesterday = time.time() - 86400
    os.utime(path, (yesterday, yesterday))
    with JsonlSink(str(path), rotate_seconds=86400) as sink:  # a restart the next day
        sink.write(_batch(2), np.ones(2))
        sink.write(_batch(2), np.ones(2))  # same day: no second rotation
    assert sink.rotations == 1
    assert _seqs(path.with_name("scores.jsonl.1")) == [0, 1, 2] and _seqs(path) == [3, 4, 5, 6]


def test_time_rotation_at_each_new_period(tmp_path: Path) -> None:
    now = [1200.0]
    with RotatingFile(str(tmp_path / "t.log"), rotate_seconds=60, keep=3, clock=lambda: now[0]) as f:
        for t in (1200, 1210, 1259, 1260, 1500, 1501):
            now[0] = t
            f.write(f"{t}\n".encode())
    names = {p.name: p.read_text() for p in tmp_path.iterdir()}
    assert names == {"t.log": "1500\n1501\n", "t.log.1": "1260\n", "t.log.2": "1200\n1210\n1259\n"}


# -- logrotate ---------------------------------------------------------------------------------------------------
def test_copytruncate_goes_on_at_the_new_end_without_a_hole(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    with JsonlSink(str(path), max_bytes=1150) as sink:
        sink.write(_batch(50), np.ones(50))  # 1,140 bytes
        shutil.copyfile(path, tmp_path / "scores.jsonl.1")  # what logrotate's copytruncate does
        with open(path, "r+b") as f:
            f.truncate(0)
        sink.write(_batch(2), np.zeros(2))
    data = path.read_bytes()
    assert b"\0" not in data and _seqs(path) == [50, 51]
    assert _seqs(tmp_path / "scores.jsonl.1") == list(range(50))
    assert sink.rotations == 0  # the size that rotation goes by went back to 0 with the file


def test_a_file_moved_away_is_replaced_by_a_new_one(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    with RotatingFile(str(path), check_every=0) as f:
        f.write(b"before\n")
        os.rename(path, tmp_path / "t.log.1")  # logrotate's default, create
        f.write(b"after\n")
    assert path.read_text() == "after\n" and (tmp_path / "t.log.1").read_text() == "before\n"


# -- seq -----------------------------------------------------------------------------------------------------------
def test_seq_goes_on_after_a_restart_also_right_after_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    with JsonlSink(str(path)) as sink:
        sink.write(_batch(3), np.ones(3))
    with JsonlSink(str(path), max_bytes=10) as sink:  # rotates before its first write
        sink.write(_batch(2), np.ones(2), {"sample": np.array([7, 8])})
    # logrotate moved the file away, and the process stopped before writing again
    os.rename(path.with_name("scores.jsonl.1"), path.with_name("scores.jsonl.2"))
    os.rename(path, path.with_name("scores.jsonl.1"))
    with JsonlSink(str(path)) as sink:
        sink.write(_batch(1), np.ones(1))
    assert _seqs(path.with_name("scores.jsonl.1")) == [3, 4] and _seqs(path) == [5]
    with JsonlSink(str(path), append=False) as sink:
        sink.write(_batch(1), np.ones(1))
    assert _seqs(path) == [0]


def test_a_line_cut_by_a_crash_is_ended_before_the_next_record(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    path.write_text('{"seq":0,"score":1.0}\n{"seq":1,"sco')
    with JsonlSink(str(path)) as sink:
        sink.write(_batch(1), np.ones(1))
    lines = path.read_text().splitlines()
    assert lines[1] == '{"seq":1,"sco' and json.loads(lines[2]) == {"seq": 1, "score": 1.0}


# -- failed writes -------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_raises_on_every_write_and_keeps_a_bounded_backlog() -> None:
    f = RotatingFile("/dev/full", max_pending=1000)
    for _ in range(100):
        with pytest.raises(OSError) as failed:
            f.write(b'{"seq":0,"score":0.5}\n' * 4)
        assert failed.value.errno == errno.ENOSPC
        assert f.pending <= 1000
    with pytest.raises(OSError):
        f.close()  # the last try fails too: close says so, and gives the backlog up
    assert f.dropped == 400 and f.pending == 0
    sink = JsonlSink("/dev/full")
    with pytest.raises(OSError, match="No space left"):
        sink.write(_batch(2), np.ones(2))
    with pytest.raises(OSError):
        sink.close()
    assert sink.dropped == 2


WRITER = """
import json, resource, signal, sys
import numpy as np
from connectors.base import Batch
from connectors.jsonl_sink import JsonlSink

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
sink = JsonlSink(sys.argv[1])
failures = []
for k in range(20):
    try:
        sink.write(Batch(np.zeros((4, 1), np.float32)), np.full(4, k + 0.5))
    except OSError as e:
        failures.append(e.errno)
resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space is back
sink.write(Batch(np.zeros((1, 1), np.float32)), np.zeros(1))
sink.close()
print(json.dumps({"failures": failures, "dropped": sink.dropped}))
"""


def test_writes_that_failed_are_written_once_space_is_back(tmp_path: Path) -> None:
    path = tmp_path / "scores.jsonl"
    done = subprocess.run([sys.executable, "-c", WRITER, str(path)], env=child_env(), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["failures"] and set(report["failures"]) == {errno.EFBIG} and report["dropped"] == 0
    assert 5 <= len(report["failures"]) < 20  # ~1,900 bytes were written against a limit of 1,000
    records = _records(path)  # every line whole, each record once, in order
    assert [r["seq"] for r in records] == list(range(81))
    assert [r["score"] for r in records[:-1]] == [k + 0.5 for k in range(20) for _ in range(4)]


# -- the alerts sink -----------------------------------------------------------------------------------------------
def test_alerts_are_the_planted_scores_and_about_one_percent_of_the_rest(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    scores = rng.exponential(1.0, 30_000)
    planted = np.array([1500, 4000, 9000, 12_345, 20_000, 29_999])
    scores[planted] = 50.0
    path = tmp_path / "alerts.jsonl"
    with open_sink(f"alerts:{path}?q=0.99&warmup=1000&window=5000") as sink:
        assert isinstance(sink, AlertsSink) and sink.threshold is None
        for start in range(0, len(scores), 64):
            part = scores[start:start + 64]
            sink.write(_batch(len(part)), part, {"sample": np.arange(start, start + len(part)),
                                                  "events": [{"kind": "plateau"}]})
    records = _records(path)
    alerted = np.array([r["sample"] for r in records])
    assert set(planted) <= set(alerted.tolist()) and alerted.min() >= 1000
    assert all(r["score"] > r["threshold"] and "events" not in r for r in records)
    false = len(alerted) - len(planted)
    assert 0.005 < false / (len(scores) - 1000) < 0.016, false
    assert sink.alerts == len(records) and sink.seen == len(scores)
    assert [r["seq"] for r in records] == list(range(len(records)))
    assert 3.5 < sink.threshold < 5.7  # the exponential's 0.99-quantile is ln(100) = 4.6


def test_alerts_uri_options_and_roles(tmp_path: Path) -> None:
    assert parse_uri("alerts:~/a.jsonl?window=50&keep=2")[1] == {"window": 50, "keep": 2}
    with pytest.raises(ValueError, match="unknown option 'qq'"):
        open_sink(f"alerts:{tmp_path}/a.jsonl?qq=1")
    with pytest.raises(ValueError, match=r"q must be in \(0, 1\)"):
        open_sink(f"alerts:{tmp_path}/a.jsonl?q=1")
    with pytest.raises(ValueError, match="sink only"):
        open_source(f"alerts:{tmp_path}/a.jsonl")


def test_the_service_writes_only_alerts_with_their_sample_numbers(tmp_path: Path) -> None:
    from streammas.config import parse_config
    from streammas.service import Service

    x = np.random.default_rng(3).random((2400, 8), dtype=np.float32)
    x[[1600, 2000, 2300]] = 40.0  # samples the model cannot reconstruct
    np.save(tmp_path / "x.npy", x)
    cfg = parse_config(f'[source]\nuri = "npy:{tmp_path}/x.npy"\nbatch_size = 16\n'
                       f'[sink]\nuri = "alerts:{tmp_path}/alerts.jsonl?warmup=1000&window=1000"\n'
                       f'[state]\ndir = "{tmp_path}/state"\n[log]\nstatus_every_seconds = 0\nprogress = "never"\n')
    service = Service(cfg, handle_signals=False)
    assert service.run() == 0
    records = _records(tmp_path / "alerts.jsonl")
    samples = [r["sample"] for r in records]
    assert {1600, 2000, 2300} <= set(samples) and min(samples) >= 1000
    assert len(records) < 0.1 * 1400
