"""The counts an operator reads agree with each other and with what happened: ``streammas_checkpoints_total``
carries over a restart as the other counters do, ``inspect``'s total of rejected samples is the sum of its
reasons, and a sample of another shape is told where the stream's shape came from (the daemon is a real
subprocess, its /metrics scraped over HTTP)."""

from __future__ import annotations

import signal
import time

import numpy as np
import pytest
from service_support import PATIENCE, Daemon, address, metrics_url, scrape, streammas, write_config

from connectors.zmq import ZmqProducer

pytestmark = pytest.mark.slow

CONFIG = """
[source]
uri = "zmq+pull://127.0.0.1:*"
batch_size = 16
max_latency_ms = 5
[state]
dir = "state"
[metrics]
port = 0
every_batches = 1
[log]
status_every_seconds = 0
"""


def _learned(url: str, samples: int) -> None:
    deadline = time.monotonic() + PATIENCE
    while scrape(url).get("streammas_samples_total") != samples:
        assert time.monotonic() < deadline, f"never learned {samples} samples"
        time.sleep(0.1)


def _checkpoint(daemon: Daemon) -> None:
    after = daemon.count
    daemon.send(signal.SIGHUP)
    daemon.wait_for("checkpoint", after=after)


def test_checkpoints_total_carries_over_and_the_shape_says_it_came_from_the_checkpoint(tmp_path):
    config = write_config(tmp_path / "streammas.toml", CONFIG)
    rng = np.random.default_rng(0)
    daemon = Daemon(config, tmp_path)
    try:
        with ZmqProducer(address(daemon)) as producer:
            producer.send(rng.random((32, 4), dtype=np.float32))
        daemon.wait_for("model")
        url = metrics_url(daemon)
        _checkpoint(daemon)
        assert scrape(url)["streammas_checkpoints_total"] == 1
        assert daemon.stop() == 0  # the shutdown checkpoint: the second
    finally:
        daemon.kill()

    daemon = Daemon(config, tmp_path)
    try:
        url = metrics_url(daemon)
        assert scrape(url)["streammas_checkpoints_total"] == 2  # as samples and rejects do, from the checkpoint
        with ZmqProducer(address(daemon)) as producer:
            producer.send(rng.random((8, 5), dtype=np.float32))  # not the shape the resumed model takes
            producer.send(rng.random((8, 4), dtype=np.float32))
        _learned(url, 40)
        _checkpoint(daemon)
        metrics = scrape(url)
        assert metrics["streammas_checkpoints_total"] == 3
        assert metrics['streammas_rejected_samples_total{reason="shape"}'] == 8
        assert daemon.stop() == 0
    finally:
        daemon.kill()
    log = daemon.log()
    assert "differs from the stream's (4,), from the checkpoint resumed (the model was built for it)" in log
    assert "(4,), configured" not in log


def test_inspect_totals_are_the_sum_of_their_reasons(tmp_path):
    rows = ["1,2", "3,4", "5", "6,7,8", "x,1", "2,y", "nan,1", "9,10"]
    (tmp_path / "data.csv").write_text("a,b\n" + "\n".join(rows) + "\n")
    result = streammas("run", "--source", "csv:data.csv", "--state-dir", "state", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    result = streammas("inspect", "state", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "rejected        5 samples: columns 2, nonfinite 1, parse 2" in lines
    counters = next(line for line in lines if line.startswith("counters"))
    assert "rejected" not in counters  # one line for every reject, the learner's own included, one total
