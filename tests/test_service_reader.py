"""``streammas run`` on a CSV file read by a child process (``[source] reader = "process"``) learns and writes
exactly what it does reading the file in its own thread, and leaves no reader process behind: not at a stop, not
when it is killed. The daemon is a real subprocess on real files."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from service_support import PATIENCE, QUIET_STATE, Daemon, streammas, write_config

pytestmark = pytest.mark.slow


def _data(path: Path, rows: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 6)).round(4)
    lines = ["a,b,c,d,e,f,label"] + [",".join(map(str, r)) + f",{i % 2}" for i, r in enumerate(x)]
    lines[100] = "1,2,3"  # a row too short
    lines[rows * 2 // 5] = "1,2,x,4,5,6,0"  # a field that is not a number
    path.write_text("\n".join(lines) + "\nnot,a,row\n")  # and one after the last good row


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_dead(pid: int) -> bool:
    deadline = time.monotonic() + PATIENCE
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def test_a_reader_process_learns_and_writes_what_the_loop_thread_does(tmp_path: Path) -> None:
    _data(tmp_path / "data.csv", 5000)
    outcomes = {}
    for reader in ("process", "inline"):
        result = streammas("run", "--source", "csv:data.csv", "--sink", f"jsonl:{reader}.jsonl", "--state-dir",
                           f"state-{reader}", "--set", f'source.reader="{reader}"', "--log-format", "json",
                           cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        events = {r.get("event"): r for r in map(json.loads, result.stderr.splitlines()) if isinstance(r, dict)}
        assert events["reading"]["reader"] == reader
        outcomes[reader] = (events["stopped"]["samples_seen"], events["stopped"]["rejected"])
    assert outcomes["process"] == outcomes["inline"] == (4998, 3)
    # the same batches learned in the same order: the same scores, to the last digit
    assert (tmp_path / "process.jsonl").read_text() == (tmp_path / "inline.jsonl").read_text()
    summary = streammas("inspect", "state-process", "--json", cwd=tmp_path)
    assert json.loads(summary.stdout)["service"]["rejected"] == {"columns": 2, "parse": 1}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_no_reader_process_outlives_the_daemon(tmp_path: Path, sig: int) -> None:
    _data(tmp_path / "data.csv", 500)
    config = write_config(tmp_path / "c.toml", f"""[source]
uri = "csv:data.csv"
reader = "process"
options = {{follow = true, poll_interval = 0.05}}
{QUIET_STATE}
""")
    daemon = Daemon(config, tmp_path)
    try:
        daemon.wait_for("model")
        readers = _children(daemon.proc.pid)
        assert len(readers) == 1, readers
        with open(tmp_path / "data.csv", "a") as f:  # the followed file grows: the reader hands the rows on
            f.write("".join(f"{i},0,0,0,0,0,1\n" for i in range(300)))
        deadline = time.monotonic() + PATIENCE
        while time.monotonic() < deadline:  # checkpoints on demand, until one says the new rows were learned
            seen = daemon.count
            daemon.send(signal.SIGHUP)
            if daemon.wait_for("checkpoint", after=seen)["samples_seen"] == 500 - 2 + 300:
                break
            time.sleep(0.1)
        assert daemon.events("checkpoint")[-1]["samples_seen"] == 798, daemon.log()
        rc = daemon.stop(sig)
        assert rc == (0 if sig == signal.SIGTERM else -signal.SIGKILL), daemon.log()
        assert _wait_dead(readers[0])
    finally:
        daemon.kill()
