"""SIGTERM with samples still queued in the ZeroMQ socket: the daemon, a real subprocess, learns what had
arrived before its final checkpoint, and counts what it could not, so that nothing vanishes uncounted."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from service_support import PATIENCE, QUIET_STATE, Daemon, address, digits, peak_rss_mib, write_config

from connectors.zmq import ZmqProducer
from streammas.service.checkpoint import CheckpointStore

pytestmark = pytest.mark.slow  # daemons as real subprocesses

CONFIG = """
[source]
uri = "zmq+pull://127.0.0.1:*"
batch_size = 8
{drain}
""" + QUIET_STATE + """
"""

MESSAGES, PER_MESSAGE = 300, 64


def _flood(tmp_path, drain: str = "") -> tuple[Daemon, int]:
    """Start the daemon, send it far more than it learns at once, and SIGTERM it at once."""
    config = write_config(tmp_path / "streammas.toml", CONFIG.format(drain=drain))
    x = digits(PER_MESSAGE)
    daemon = Daemon(config, tmp_path)
    with ZmqProducer(address(daemon)) as producer:
        producer.send(x)
        daemon.wait_for("model")  # learning has begun
        for _ in range(MESSAGES - 1):
            producer.send(x)
        daemon.send(signal.SIGTERM)
        code = daemon.wait()
    return daemon, code


def test_sigterm_learns_what_was_queued_before_the_final_checkpoint(tmp_path):
    daemon, code = _flood(tmp_path)
    daemon.kill()
    assert code == 0, daemon.log()
    drained = daemon.events("drained")
    assert drained and drained[-1]["samples"] > 0, daemon.log()  # a backlog was there, and it was learned
    stopped = daemon.events("stopped")[-1]
    lost = drained[-1]["dropped"]
    assert stopped["samples_seen"] + lost == MESSAGES * PER_MESSAGE, (stopped, drained)
    saved = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert saved.meta["samples_seen"] == stopped["samples_seen"]
    assert saved.meta["service"]["rejected"].get("dropped_at_shutdown", 0) == lost


def test_without_a_drain_what_was_queued_is_counted_not_lost_silently(tmp_path):
    daemon, code = _flood(tmp_path, drain="drain_seconds = 0")
    daemon.kill()
    assert code == 0, daemon.log()
    drained = daemon.events("drained")[-1]
    stopped = daemon.events("stopped")[-1]
    # only what the source had already decoded is learned; the socket's queue is counted, unread
    assert drained["dropped"] > drained["samples"], drained
    assert stopped["samples_seen"] + drained["dropped"] <= MESSAGES * PER_MESSAGE
    saved = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert saved.meta["service"]["rejected"]["dropped_at_shutdown"] == drained["dropped"]


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the peak RSS from /proc")
def test_sigterm_under_a_blasting_producer_ends_in_bounded_time_and_memory(tmp_path):
    """The drain learns for at most drain_seconds, holding a batch at a time: a producer that never stops
    sending 256x784 float32 messages (800 KB each) cannot make a SIGTERM wait or grow the daemon's memory."""
    config = write_config(tmp_path / "streammas.toml", CONFIG.format(drain="drain_seconds = 2"))
    daemon = Daemon(config, tmp_path)
    x = np.random.default_rng(0).random((256, 784), dtype=np.float32)
    stop_sending = threading.Event()
    sent = [0]

    def blast() -> None:
        with ZmqProducer(address(daemon), linger_ms=0, send_timeout=0.5) as producer:
            while not stop_sending.is_set():
                try:
                    producer.send(x)
                except TimeoutError:  # the daemon is not taking more (or has gone): try again
                    continue
                sent[0] += 1

    sender = threading.Thread(target=blast, daemon=True)
    sender.start()
    try:
        daemon.wait_for("model")
        while sent[0] < 200:  # the socket's queue (hwm 100 messages) is full, and the producer's too
            time.sleep(0.05)
        before = peak_rss_mib(daemon.proc.pid)
        daemon.send(signal.SIGTERM)
        signalled = time.monotonic()
        peak = before
        while daemon.proc.poll() is None and time.monotonic() - signalled < PATIENCE:
            peak = max(peak, peak_rss_mib(daemon.proc.pid))
            time.sleep(0.05)
        took = time.monotonic() - signalled
        code = daemon.wait()
    finally:
        stop_sending.set()
        sender.join(timeout=10)
        daemon.kill()
    assert code == 0, daemon.log()
    # A bound, not a speed: 2 s of drain, a batch, a checkpoint; systemd's stop timeout is 90 s.
    assert took < 45, (took, daemon.log())
    # At most the receive queue (hwm 100 x 800 KB) over what the daemon held before the stop, with a margin.
    assert peak - before < 400, (before, peak)
    drained = daemon.events("drained")[-1]
    stopped = daemon.events("stopped")[-1]
    assert drained["dropped"] > 0 and stopped["rejected"] >= drained["dropped"], (drained, stopped)
    saved = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert saved.meta["reason"] == "shutdown" and saved.meta["samples_seen"] == stopped["samples_seen"]
    assert saved.meta["service"]["rejected"]["dropped_at_shutdown"] == drained["dropped"]
