"""The daemon against a hostile producer, as a real subprocess on a real ZeroMQ socket: no message can stop
it, poison its stream's sample shape or grow its memory past ``max_message_bytes``, and what it turns away is
counted in samples, the same in every place that reports it."""

from __future__ import annotations

import json
import signal
import sys
import time

import numpy as np
import pytest
from service_support import (
    PATIENCE,
    QUIET_STATE,
    Daemon,
    address,
    digits,
    metrics_url,
    peak_rss_mib,
    scrape,
    write_config,
)

from connectors.zmq import ZmqProducer
from streammas.service.checkpoint import CheckpointStore

pytestmark = pytest.mark.slow  # daemons as real subprocesses

CONFIG = """
[source]
uri = "zmq+pull://127.0.0.1:*"
batch_size = 32
max_latency_ms = 5
{extra}
""" + QUIET_STATE + """
"""


def header(shape: str, dtype: str = "float32") -> bytes:
    """A header frame with ``shape`` written out as given (sizes beyond what Python prints as integers)."""
    return b'{"v": 1, "dtype": "' + dtype.encode() + b'", "shape": [' + shape.encode() + b"]}"


def learned(daemon: Daemon, target: int) -> dict:
    """SIGHUP until a checkpoint shows ``target`` samples learned (the socket delivers them in order)."""
    daemon.wait_for("model")  # the learner exists: each SIGHUP now writes a checkpoint
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        mark = daemon.count
        daemon.send(signal.SIGHUP)
        record = daemon.wait_for("checkpoint", lambda r: r.get("reason") == "signal", after=mark)
        if record["samples_seen"] >= target:
            return record
        time.sleep(0.05)
    raise AssertionError(f"never learned {target} samples:\n{daemon.log()}")


def test_hostile_and_unlearnable_first_messages_neither_stop_nor_poison_the_daemon(tmp_path):
    config = write_config(tmp_path / "streammas.toml", CONFIG.format(extra=""))
    x = digits(320)
    nan = np.full((1000, 64), np.nan, np.float32)
    hostile = [
        [header("0, 1" + "0" * 30), b""],  # once exited 1: "Maximum allowed dimension exceeded"
        [header("1" + "0" * 30 + ", 1"), b""],
        [header(f"1, {2**62}, {2**62}"), b""],
        [header("1, 0"), b""],  # samples without a value
        [header("3"), np.ones(3, np.float32).tobytes()],  # samples without a dimension
        [b'{"x": []}'],
        [header("1000, 64"), nan.tobytes()],  # every sample non-finite
    ]
    daemon = Daemon(config, tmp_path)
    try:
        with ZmqProducer(address(daemon)) as producer:  # one connection: the messages arrive in this order
            for frames in hostile:
                producer.send_frames(frames)
            producer.send(x[:160])  # the first samples that can be learned fix the shape: (64,)
            producer.send(np.ones((500, 8), np.float32))  # valid, of another shape: 500 samples turned away
            producer.send(x[160:])
        learned(daemon, len(x))
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
    finally:
        daemon.kill()
    stopped = daemon.events("stopped")[-1]
    saved = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert saved.meta["samples_seen"] == len(x) and saved.meta["model"]["sample_shape"] == [64]
    # Samples everywhere: the checkpoint's counts by reason and the final log line's total agree.
    rejected = saved.meta["service"]["rejected"]
    assert rejected == {"too_large": 3, "shape": 1 + 3 + 1 + 500, "nonfinite": 1000}, rejected
    assert stopped["rejected"] == sum(rejected.values()) and stopped["exit_code"] == 0
    assert "Maximum allowed dimension" not in daemon.log()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the peak memory is read from /proc")
def test_a_configured_shape_decides_and_an_oversized_frame_never_reaches_memory(tmp_path):
    config = write_config(tmp_path / "streammas.toml", CONFIG.format(extra="sample_shape = [64]"))
    x = digits(192)
    daemon = Daemon(config, tmp_path)
    try:
        addr = address(daemon)
        with ZmqProducer(addr) as producer:
            producer.send(np.ones((1, 200_000), np.float32))  # valid, first, and 3,000 times too wide
            producer.send_json(np.ones((2, 200_000), np.float32))
            producer.send(x[:64])
        learned(daemon, 64)
        before = peak_rss_mib(daemon.proc.pid)
        # One frame of 256 MiB, four times max_message_bytes (64 MiB by default): libzmq drops it, with the
        # connection, before allocating it.
        with ZmqProducer(addr, linger_ms=-1) as hostile:
            hostile.send_frames([header("1, 67108864"), bytes(256 << 20)])
        with ZmqProducer(addr) as producer:  # a connection of its own, untouched by the one dropped
            producer.send(x[64:])
        learned(daemon, len(x))
        grown = peak_rss_mib(daemon.proc.pid) - before
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
    finally:
        daemon.kill()
    assert grown < 64, f"the daemon's peak memory grew by {grown:.0f} MiB"
    saved = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert saved.meta["samples_seen"] == len(x) and saved.meta["model"]["sample_shape"] == [64]
    assert saved.meta["service"]["rejected"] == {"shape": 3}
    assert json.loads(saved.meta["config"])["source"]["sample_shape"] == [64]


def test_after_a_restart_the_checkpoints_shape_decides(tmp_path):
    # No sample_shape configured: the first run learns the digits' shape; after a restart, a stray first message
    # of another shape must not take the stream over (the learner can only learn the shape it was made for).
    config = write_config(tmp_path / "streammas.toml", CONFIG.format(extra=""))
    x = digits(320)
    first = Daemon(config, tmp_path)
    try:
        with ZmqProducer(address(first)) as producer:
            producer.send(x)
            learned(first, len(x))
        assert first.stop(signal.SIGTERM) == 0, first.log()
    finally:
        first.kill()
    second = Daemon(config, tmp_path)
    try:
        with ZmqProducer(address(second)) as producer:
            producer.send(np.ones((2, 100), np.float32))  # valid, but not the shape learned so far
            producer.send(x)
            learned(second, 2 * len(x))
        assert second.stop(signal.SIGTERM) == 0, second.log()
    finally:
        second.kill()
    saved = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert saved.meta["samples_seen"] == 2 * len(x)
    assert saved.meta["service"]["rejected"].get("shape") == 2


def test_a_first_message_too_large_to_model_is_refused_and_the_stream_goes_on(tmp_path):
    """One valid 16 MB message of shape [1, 4_000_000] once made the daemon build a model it could not
    allocate and exit 1. The model is counted on PyTorch's meta device first: over [model] max_parameters it
    is refused, the batch counted (reason ``model``), and the next samples decide the shape."""
    config = write_config(tmp_path / "streammas.toml", CONFIG.format(extra=""))
    x = digits(320)
    daemon = Daemon(config, tmp_path)
    try:
        with ZmqProducer(address(daemon)) as producer:
            producer.send(np.zeros((1, 4_000_000), np.float32))
            refused = daemon.wait_for("model_refused")
            assert refused["shape"] == [4_000_000] and "max_parameters" in refused["msg"], refused
            for k in range(0, len(x), 32):
                producer.send(x[k:k + 32])
            record = learned(daemon, len(x))
        code = daemon.stop()
    finally:
        daemon.kill()
    assert code == 0, daemon.log()
    assert record["samples_seen"] == len(x)
    model = daemon.events("model")
    assert len(model) == 1 and model[0]["sample_shape"] == [64], daemon.log()
    stopped = daemon.events("stopped")[-1]
    assert stopped["samples_seen"] == len(x) and stopped["rejected"] == 1, stopped
    saved = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert saved.meta["service"]["rejected"] == {"model": 1}


def test_a_model_factory_that_fails_for_the_first_shape_does_not_end_the_daemon(tmp_path):
    (tmp_path / "picky_model.py").write_text(
        "from torch import nn\n"
        "def make(shape):\n"
        "    if shape != (64,):\n"
        "        raise ValueError(f'this model takes 64 features, not {shape}')\n"
        "    return nn.Sequential(nn.Linear(64, 8), nn.Tanh(), nn.Linear(8, 64))\n")
    config = write_config(tmp_path / "streammas.toml",
                          CONFIG.format(extra='[model]\nfactory = "picky_model:make"'))
    x = digits(64)
    daemon = Daemon(config, tmp_path)
    try:
        with ZmqProducer(address(daemon)) as producer:
            producer.send(np.zeros((3, 10), np.float32))
            refused = daemon.wait_for("model_refused")
            assert "takes 64 features" in refused["msg"], refused
            for k in range(0, len(x), 32):
                producer.send(x[k:k + 32])
            learned(daemon, len(x))
        code = daemon.stop()
    finally:
        daemon.kill()
    assert code == 0, daemon.log()
    assert daemon.events("stopped")[-1]["rejected"] == 3


def _rejected_on_metrics(url: str, wanted: int) -> float:
    """Scrape until ``streammas_rejected_samples_total`` reaches ``wanted`` (or PATIENCE passes); its sum."""
    deadline = time.monotonic() + PATIENCE
    total = 0.0
    while time.monotonic() < deadline:
        total = sum(v for k, v in scrape(url).items() if k.startswith("streammas_rejected_samples_total"))
        if total >= wanted:
            break
        time.sleep(0.2)
    return total


def test_rejects_show_on_metrics_while_only_garbage_arrives(tmp_path):
    """Operators alert on a stream of nothing but bad input: the rejects must show on /metrics without waiting
    for a valid message, before the learner exists and after."""
    config = write_config(tmp_path / "streammas.toml",
                          CONFIG.format(extra="") + "[metrics]\nport = 0\nevery_batches = 1\n")
    daemon = Daemon(config, tmp_path)
    try:
        url = metrics_url(daemon)
        with ZmqProducer(address(daemon)) as producer:
            for _ in range(500):
                producer.send_frames([b"not a header", b"x"])
            assert _rejected_on_metrics(url, 500) == 500
            producer.send(digits(32))
            daemon.wait_for("model")
            for _ in range(300):
                producer.send_json("not samples")
            assert _rejected_on_metrics(url, 800) == 800
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.kill()
