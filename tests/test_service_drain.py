"""SIGTERM with samples still queued in the ZeroMQ socket: the daemon, a real subprocess, learns what had
arrived before its final checkpoint, and counts what it could not, so that nothing vanishes uncounted."""

from __future__ import annotations

import signal

import pytest
from service_support import QUIET_STATE, Daemon, address, digits, write_config

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
