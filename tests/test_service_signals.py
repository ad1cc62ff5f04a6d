"""The daemon as a real subprocess: SIGTERM checkpoints and exits 0, a restart restores the whole state
(samples seen, consolidations, Omega) and learning continues; SIGHUP checkpoints on demand."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from service_support import QUIET_STATE, Daemon, address, digits, streammas, write_config

from connectors.zmq import ZmqProducer
from streammas.service.checkpoint import CheckpointStore

pytestmark = pytest.mark.slow  # daemons as real subprocesses, stopped and restarted

CONFIG = """
[source]
uri = "zmq+pull://127.0.0.1:*"
batch_size = 32
[learner]
# plain SGD on the raw digits: the detector consolidates within the 6,400 samples sent
optimizer = "sgd"
lr = 0.05
reg_lambda = 0.15
scale_inputs = "none"
consolidate_at = "plateau"
[learner.plateau]
window = 10
patience = 10
progress_steps = 20
""" + QUIET_STATE + """
"""


def _send(addr: str, x) -> None:
    with ZmqProducer(addr) as producer:
        for start in range(0, len(x), 32):
            producer.send(x[start:start + 32])


def _newest(tmp_path):
    return CheckpointStore(tmp_path / "state", create=False).load_latest()


def test_sigterm_restart_restores_state_and_learning_continues(tmp_path):
    config = write_config(tmp_path / "streammas.toml", CONFIG)
    x = digits(6400)

    # First run: learn until the detector has consolidated, then SIGTERM.
    first = Daemon(config, tmp_path)
    try:
        _send(address(first), x)
        first.wait_for("consolidation")
        seen = len(x)
        assert first.stop(signal.SIGTERM) == 0, first.log()
    finally:
        first.kill()
    stopped = first.events("stopped")[-1]
    assert stopped["reason"] == "SIGTERM" and stopped["exit_code"] == 0
    saved = _newest(tmp_path)
    assert saved is not None and saved.meta["reason"] == "shutdown"
    assert saved.meta["samples_seen"] == saved.learner["samples_seen"] <= seen
    assert saved.meta["consolidations"] >= 1
    omega = saved.learner["synapses"]["omega"]
    assert any(float(t.abs().sum()) > 0 for t in omega.values())

    inspected = streammas("inspect", "state", "--json", cwd=tmp_path)
    assert inspected.returncode == 0, inspected.stderr
    summary = json.loads(inspected.stdout)
    assert summary["samples_seen"] == saved.meta["samples_seen"]
    assert summary["consolidations"] == saved.meta["consolidations"]
    assert any(e["kind"] == "consolidation" for e in summary["plateau_history"])

    # Second run: the state comes back exactly (SIGHUP right after start-up writes it unchanged) ...
    second = Daemon(config, tmp_path)
    try:
        resumed = second.wait_for("resumed")
        assert resumed["samples_seen"] == saved.meta["samples_seen"]
        assert resumed["consolidations"] == saved.meta["consolidations"]
        addr = address(second)
        mark = second.count
        second.send(signal.SIGHUP)
        second.wait_for("checkpoint", lambda r: r["reason"] == "signal", after=mark)
        again = _newest(tmp_path)
        assert again.seq > saved.seq
        assert again.learner["samples_seen"] == saved.learner["samples_seen"]
        assert again.learner["synapses"]["consolidations"] == saved.learner["synapses"]["consolidations"]
        for name, tensor in omega.items():
            assert torch.equal(again.learner["synapses"]["omega"][name], tensor), name
        for name, tensor in saved.learner["model"].items():
            assert torch.equal(again.learner["model"][name], tensor), name

        # ... and learning continues from it.
        more = digits(640)
        _send(addr, more)
        mark = second.count
        target = saved.meta["samples_seen"] + len(more)
        # SIGHUP until the checkpoint shows every new sample learned (the socket delivers them in order).
        while True:
            second.send(signal.SIGHUP)
            record = second.wait_for("checkpoint", lambda r: r["reason"] == "signal", after=mark)
            mark = second.count
            if record["samples_seen"] >= target:
                break
        assert second.stop(signal.SIGINT) == 0, second.log()
    finally:
        second.kill()
    final = _newest(tmp_path)
    assert final.meta["samples_seen"] == target
    assert final.meta["consolidations"] >= saved.meta["consolidations"]
    changed = [n for n, t in saved.learner["model"].items() if not torch.equal(final.learner["model"][n], t)]
    assert changed, "the model did not learn after the restart"
