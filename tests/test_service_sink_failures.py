"""A sink that cannot write (a full disk) loses no record silently: the daemon, a real subprocess, keeps learning,
counts every record it could not deliver (in the stop line and the metrics) and writes again once space is back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from service_support import PATIENCE, QUIET_STATE, Daemon, write_config

pytestmark = pytest.mark.slow  # daemons as real subprocesses

COLUMNS = "a,b,c,d"


def _rows(start: int, n: int) -> str:
    x = np.random.default_rng(start).random((n, 4))
    return "".join(",".join(f"{v:.4f}" for v in row) + "\n" for row in x)


def _config(tmp_path: Path, sink: str, follow: bool, options: str = "") -> Path:
    return write_config(tmp_path / "streammas.toml", f"""
[source]
uri = "csv:data.csv"
batch_size = 20
{'options = {follow = true}' if follow else ''}
[sink]
uri = "jsonl:{sink}"
{options}
""" + QUIET_STATE + """
""")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (every write fails with ENOSPC)")
def test_every_record_a_full_device_refuses_is_counted(tmp_path):
    (tmp_path / "data.csv").write_text(COLUMNS + "\n" + _rows(0, 500))
    daemon = Daemon(_config(tmp_path, "/dev/full", follow=False), tmp_path)
    try:
        code = daemon.wait()
    finally:
        daemon.kill()
    assert code == 0, daemon.log()
    stopped = daemon.events("stopped")[-1]
    assert stopped["samples_seen"] == 500
    assert stopped["sink_failed"] == 500, stopped
    assert daemon.events("sink_error")  # said, and rate-limited: far fewer lines than the 25 failed batches
    assert len(daemon.events("sink_error")) < 25


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def _learned(daemon: Daemon, rows: int) -> None:
    """Ask for checkpoints (SIGHUP) until one records ``rows`` samples learned."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        after = daemon.count
        daemon.send(signal.SIGHUP)
        record = daemon.wait_for("checkpoint", after=after)
        if record["samples_seen"] == rows:
            return
        time.sleep(0.2)
    raise AssertionError(daemon.log())


def test_a_full_disk_then_space_back(tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "64k"):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        ballast = disk / "ballast"
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT)
        try:  # fill the whole disk
            while os.write(fd, b"\0" * 1024):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        scores = disk / "scores.jsonl"
        (tmp_path / "data.csv").write_text(COLUMNS + "\n" + _rows(0, 300))
        config = _config(tmp_path, str(scores), follow=True, options="options = {max_pending = 2048}")
        daemon = Daemon(config, tmp_path)
        try:
            daemon.wait_for("sink_error")
            _learned(daemon, 300)
            ballast.unlink()  # space is back
            with open(tmp_path / "data.csv", "a") as f:
                f.write(_rows(1, 300))
            _learned(daemon, 600)
            code = daemon.stop(signal.SIGTERM)
        finally:
            daemon.kill()
        assert code == 0, daemon.log()
        stopped = daemon.events("stopped")[-1]
        written = [json.loads(line) for line in scores.read_text().splitlines()]
        samples = {int(r["sample"]) for r in written}
        # Every record is either in the file or counted as lost, and some were lost.
        assert stopped["sink_failed"] > 0
        assert len(samples) + stopped["sink_failed"] == 600, (len(samples), stopped)
        # Once space was back, everything learned after it was written.
        assert set(range(300, 600)) <= samples
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
