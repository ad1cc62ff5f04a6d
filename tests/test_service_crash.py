"""``kill -9`` at random moments, five times in a row: every restart comes back from an intact checkpoint, and
with a file source no row is ever learned twice nor skipped (counted by the model itself, in its state)."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest
import torch
from service_support import Daemon, write_config, write_counting_model

from streammas.service.checkpoint import CheckpointStore, read_checkpoint

pytestmark = pytest.mark.slow  # a daemon killed and restarted five times

ROWS = 8000


def test_kill_9_five_times_then_resume_learns_every_row_exactly_once(tmp_path):
    write_counting_model(tmp_path)
    rng = np.random.default_rng(0)
    with open(tmp_path / "rows.csv", "w") as f:
        f.write("id,a,b\n")
        for i in range(ROWS):
            a, b = rng.random(2)
            f.write(f"{i},{a:.6f},{b:.6f}\n")
    config = write_config(tmp_path / "streammas.toml", f"""
[source]
uri = "csv:rows.csv"
batch_size = 4
[model]
factory = "counting_model:make"
options = {{ n_rows = {ROWS}, ballast_mb = 8 }}
[learner]
# the model counts the rows of each training forward by their raw id: no held or replayed rows, no scaling
hard_buffer = 0
replay = 0
scale_inputs = "none"
consolidate_at = "plateau"
[learner.plateau]
window = 5
patience = 5
[state]
dir = "state"
every_samples = 200
keep = 2
[log]
status_every_seconds = 0
""")
    store = CheckpointStore(tmp_path / "state")
    chooser = random.Random(1234)
    resumed_at = []
    for _ in range(5):
        daemon = Daemon(config, tmp_path)
        try:
            start = daemon.wait_for("resumed")["samples_seen"] if resumed_at else 0
            resumed_at.append(start)
            # A random moment while it learns and checkpoints: somewhere in the first third of what is left,
            # then a random fraction of a checkpoint cycle (writing a checkpoint takes a good part of it).
            target = chooser.randint(start + 1, start + (ROWS - start) // 3)
            daemon.wait_for("checkpoint", lambda r, target=target: r["samples_seen"] >= target)
            time.sleep(chooser.uniform(0.0, 0.1))
        finally:
            daemon.kill()
        assert daemon.proc.returncode == -9
        assert daemon.events("source_finished") == [], "the file was learned before the kill; make it longer"
        # Whatever the moment, the newest checkpoint on disk is intact and verifies.
        newest = store.paths()[-1]
        assert read_checkpoint(newest).learner["samples_seen"] >= resumed_at[-1]

    final = Daemon(config, tmp_path)
    try:
        resumed_at.append(final.wait_for("resumed")["samples_seen"])
        final.wait_for("source_finished")
        assert final.wait() == 0, final.log()
    finally:
        final.kill()
    assert resumed_at == sorted(resumed_at) and resumed_at[-1] > 0, resumed_at
    corrupt = [r for r in final.records if r.get("event") == "corrupt_checkpoint"]
    assert corrupt == []

    done = store.load_latest()
    seen = done.learner["model"]["seen"]
    assert done.learner["samples_seen"] == ROWS
    twice = torch.nonzero(seen > 1).flatten().tolist()
    never = torch.nonzero(seen == 0).flatten().tolist()
    assert twice == [] and never == [], f"learned twice: {twice[:10]}, never: {never[:10]}"
    assert list((tmp_path / "state").glob("*.tmp")) == []
