"""The daemon on a Redis stream (a real ``redis-server``): 10,000 entries learned exactly once through a ``kill -9``
at a random moment and a restart (counted by the model itself, in its state), two workers sharing one consumer
group, and a broker stopped and started again under the running daemon."""

from __future__ import annotations

import random
import signal
import time

import numpy as np
import pytest
import torch
from service_support import Daemon, metrics_url, scrape, write_config, write_counting_model

from connectors.redis import RedisStreamProducer
from connectors.wire import encode
from streammas.service.checkpoint import CheckpointStore

pytestmark = pytest.mark.slow  # daemons in subprocesses

ENTRIES = 10_000


def _fill(port: int, first: int, n: int, stream: str = "rows", seed: int = 0) -> None:
    """``n`` entries of one sample each, ``[id, a, b]``, the id in column 0 (what the counting model counts by)."""
    rng = np.random.default_rng(seed)
    with RedisStreamProducer(stream, port=port) as producer:
        pipe = producer._client.pipeline(transaction=False)
        for i in range(first, first + n):
            row = np.array([[i, *rng.random(2)]], np.float32)
            header, payload = encode(row)
            pipe.xadd(stream, {"header": header, "payload": bytes(payload)})
            if len(pipe) >= 1000:
                pipe.execute()
        pipe.execute()


def _config(tmp_path, port: int, rows: int, extra: str = "", batch: int = 256):
    write_counting_model(tmp_path)
    return write_config(tmp_path / "streammas.toml", f"""
[source]
uri = "redis+stream://127.0.0.1:{port}/rows"
batch_size = 16
options = {{ batch = {batch}, block_ms = 50 }}
[model]
factory = "counting_model:make"
options = {{ n_rows = {rows}, ballast_mb = 4 }}
[learner]
# the model counts the rows of each training forward by their raw id: no held or replayed rows, no scaling
hard_buffer = 0
replay = 0
scale_inputs = "none"
[state]
dir = "state"
every_samples = 400
every_seconds = 1
keep = 2
[metrics]
port = 0
[log]
status_every_seconds = 0
{extra}""")


def _learned_once(tmp_path, rows: int):
    done = CheckpointStore(tmp_path / "state").load_latest()
    seen = done.learner["model"]["seen"]
    twice = torch.nonzero(seen > 1).flatten().tolist()
    never = torch.nonzero(seen == 0).flatten().tolist()
    assert twice == [] and never == [], f"learned twice: {twice[:10]}, never: {never[:10]}"
    assert done.learner["samples_seen"] == rows
    return done


def _wait_learned(daemon: Daemon, rows: int, after: int = 0) -> None:
    daemon.wait_for("checkpoint", lambda r: r["samples_seen"] >= rows, after=after)


def test_ten_thousand_entries_exactly_once_through_a_kill_9(tmp_path, redis_server):
    _fill(redis_server.port, 0, ENTRIES)
    config = _config(tmp_path, redis_server.port, ENTRIES)
    chooser = random.Random(24)
    first = Daemon(config, tmp_path)
    try:
        target = chooser.randint(1000, ENTRIES // 2)
        first.wait_for("checkpoint", lambda r: r["samples_seen"] >= target)
        time.sleep(chooser.uniform(0.0, 0.3))  # a random moment of the cycle, a checkpoint write included
    finally:
        first.kill()
    assert first.proc.returncode == -9
    client = redis_server.client()
    assert int(client.xpending("rows", "streammas")["pending"]) > 0, "nothing was in flight at the kill"
    second = Daemon(config, tmp_path)
    try:
        resumed = second.wait_for("resumed")["samples_seen"]
        assert 0 < resumed < ENTRIES
        _wait_learned(second, ENTRIES)
        url = metrics_url(second)
        metrics = scrape(url)
        assert metrics['streammas_source_events_total{event="redelivered"}'] > 0  # the pending list, read again
        assert second.stop(signal.SIGTERM) == 0, second.log()
    finally:
        second.kill()
    _learned_once(tmp_path, ENTRIES)
    assert int(client.xpending("rows", "streammas")["pending"]) == 0  # acknowledged once a checkpoint covered them


#: Each worker's model is its own (the checkpoint holds rank 0's): this one also writes the ids of every row a
#: training forward sees to a file of its process, so that the group's rows can be counted over all workers.
LOGGING_MODEL = """
import os
from counting_model import Counting


class Logging(Counting):
    def forward(self, x):
        if self.training and len(x):
            with open(f"learned-{os.getpid()}.txt", "a") as f:
                f.write("".join(f"{int(round(float(i)))}\\n" for i in x[:, 0]))
        return super().forward(x)


def make(sample_shape, n_rows=100, ballast_mb=0):
    return Logging(n_rows, ballast_mb)
"""


def test_two_workers_share_one_consumer_group_and_learn_every_entry_once(tmp_path, redis_server):
    rows = 3000
    _fill(redis_server.port, 0, rows)
    config = _config(tmp_path, redis_server.port, rows, batch=8)
    (tmp_path / "logging_model.py").write_text(LOGGING_MODEL)
    config.write_text(config.read_text().replace("counting_model:make", "logging_model:make"))
    group = Daemon(config, tmp_path, "--workers", "2")
    try:
        _wait_learned(group, rows)
        assert group.stop(signal.SIGTERM) == 0, group.log()
    finally:
        group.kill()
    logs = sorted(tmp_path.glob("learned-*.txt"))
    learned = [[int(v) for v in path.read_text().split()] for path in logs]
    assert len(learned) == 2 and all(learned), [len(ids) for ids in learned]  # the broker shared the stream
    everything = sorted(i for ids in learned for i in ids)
    assert everything == list(range(rows))  # every entry once, over both workers
    done = CheckpointStore(tmp_path / "state").load_latest()
    assert done.learner["samples_seen"] == rows
    shares = [w["tally"]["received"] for w in done.meta["workers"]]
    assert sum(shares) == rows and min(shares) > 0, shares  # the broker shared the stream
    consumers = [p["consumer"] for p in done.meta["source"]["positions"]]
    assert consumers == ["streammas-0", "streammas-1"]
    assert int(redis_server.client().xpending("rows", "streammas")["pending"]) == 0


def test_the_broker_stopped_and_started_again_while_the_daemon_runs(tmp_path, redis_server):
    rows = 2000
    _fill(redis_server.port, 0, rows // 2)
    config = _config(tmp_path, redis_server.port, rows)
    daemon = Daemon(config, tmp_path)
    try:
        _wait_learned(daemon, rows // 2)
        url = metrics_url(daemon)
        redis_server.stop()
        deadline = time.monotonic() + 60
        while "the broker failed" not in daemon.log():
            assert time.monotonic() < deadline, daemon.log()
            time.sleep(0.1)
        time.sleep(1.0)  # a few retries, with their pauses
        assert daemon.proc.poll() is None  # never fatal
        redis_server.start()
        _fill(redis_server.port, rows // 2, rows // 2, seed=1)
        _wait_learned(daemon, rows)
        assert scrape(url)['streammas_source_events_total{event="broker_errors"}'] >= 1
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
    finally:
        daemon.kill()
    _learned_once(tmp_path, rows)
    assert int(redis_server.client().xpending("rows", "streammas")["pending"]) == 0
