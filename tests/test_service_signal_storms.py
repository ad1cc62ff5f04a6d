"""Signals as an adversary sends them, to the daemon as a real subprocess: a storm of SIGHUPs must not
deadlock it (SIGTERM still stops it with a checkpoint), and a SIGTERM during start-up, before torch has
loaded, must stop it cleanly instead of killing it by the default action."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest
from service_support import PATIENCE, QUIET_STATE, Daemon, write_config

from streammas.service.checkpoint import CheckpointStore

pytestmark = pytest.mark.slow  # daemons as real subprocesses

CONFIG = """
[source]
uri = "csv:data.csv"
options = {follow = true}
batch_size = 16
""" + QUIET_STATE + """
"""


def _data(tmp_path, rows: int = 64) -> None:
    x = np.random.default_rng(0).random((rows, 4))
    lines = ["a,b,c,d", *(",".join(f"{v:.4f}" for v in row) for row in x)]
    (tmp_path / "data.csv").write_text("\n".join(lines) + "\n")


def _learned_everything(daemon: Daemon, rows: int) -> None:
    """Ask for checkpoints (SIGHUP) until one records every row learned."""
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        after = daemon.count
        daemon.send(signal.SIGHUP)
        if daemon.wait_for("checkpoint", after=after)["samples_seen"] == rows:
            return
        time.sleep(0.1)
    raise AssertionError(daemon.log())


def _mapped(pid: int, library: str) -> bool:
    """Whether a shared library whose name contains ``library`` is loaded in the process."""
    with open(f"/proc/{pid}/maps") as f:
        return any(library in line for line in f)


def _catches(pid: int, sig: int) -> bool:
    """Whether the process has a handler for ``sig`` (Linux: the SigCgt mask of /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except OSError:
        pass
    return False


def test_a_storm_of_sighups_does_not_deadlock_and_sigterm_still_stops(tmp_path):
    config = write_config(tmp_path / "streammas.toml", CONFIG)
    _data(tmp_path)
    daemon = Daemon(config, tmp_path)
    try:
        daemon.wait_for("model")  # the first batch arrived
        _learned_everything(daemon, 64)
        before = len(daemon.events("checkpoint"))
        for _ in range(20000):
            os.kill(daemon.proc.pid, signal.SIGHUP)
        time.sleep(0.5)
        code = daemon.stop(signal.SIGTERM)
    finally:
        daemon.kill()
    assert code == 0, daemon.log()
    stopped = daemon.events("stopped")[-1]
    assert stopped["reason"] == "SIGTERM" and stopped["samples_seen"] == 64
    # The storm was coalesced into a few checkpoints (one per turn of the loop at most), not 1000.
    written = [r for r in daemon.events("checkpoint")[before:] if r["reason"] == "signal"]
    assert 1 <= len(written) < 100, len(written)
    saved = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert saved is not None and saved.meta["samples_seen"] == 64


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc to see when handlers are in place")
def test_sigterm_during_start_up_stops_cleanly(tmp_path):
    config = write_config(tmp_path / "streammas.toml", CONFIG)
    _data(tmp_path)
    daemon = Daemon(config, tmp_path)
    try:
        deadline = time.monotonic() + PATIENCE
        while not _catches(daemon.proc.pid, signal.SIGTERM):
            assert daemon.proc.poll() is None and time.monotonic() < deadline, daemon.log()
            time.sleep(0.005)
        # The handler is in place before torch (seconds of start-up) is loaded, so no window is left in which
        # a signal kills the process by its default action.
        torch_loaded = _mapped(daemon.proc.pid, "libtorch")
        daemon.send(signal.SIGTERM)
        code = daemon.wait()
    finally:
        daemon.kill()
    assert code == 0, daemon.log()
    assert not torch_loaded
    assert daemon.events("stopped")[-1]["reason"] == "SIGTERM"
