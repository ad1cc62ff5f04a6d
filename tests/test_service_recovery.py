"""A daemon whose weights run away keeps learning: it restores theta* instead of skipping every update forever."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from service_support import Daemon, digits, write_config

from streammas.service.checkpoint import CheckpointStore, read_checkpoint


@pytest.mark.slow
def test_a_diverging_daemon_recovers_logs_it_and_checkpoints_finite_weights(tmp_path):
    x = digits(4000)
    np.savetxt(tmp_path / "digits.csv", x, delimiter=",", fmt="%.4f",
               header=",".join(f"p{i}" for i in range(x.shape[1])), comments="")
    # A plain SGD step size far beyond stable: the weights overflow within a few batches, every loss becomes inf
    # (Adam's steps are bounded by lr: its weights stay finite).
    config = write_config(tmp_path / "streammas.toml", """
[source]
uri = "csv:digits.csv"
batch_size = 10
[learner]
optimizer = "sgd"
lr = 50.0
recover_after = 32
[state]
dir = "state"
every_samples = 1000
[log]
status_every_seconds = 0
""")
    daemon = Daemon(config, tmp_path)
    try:
        recovered = daemon.wait_for("recovered")
        daemon.wait_for("source_finished")
        assert daemon.wait() == 0, daemon.log()
    finally:
        daemon.kill()
    assert recovered["level"] == "warning" and np.isfinite(recovered["value"])
    state = read_checkpoint(CheckpointStore(tmp_path / "state").paths()[-1])
    assert state.learner["counters"]["recoveries"] >= 1
    assert state.learner["samples_seen"] == len(x)
    assert all(torch.isfinite(v).all() for v in state.learner["model"].values() if v.is_floating_point())
