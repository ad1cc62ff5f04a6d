"""The daemon on an MQTT topic (a real ``mosquitto``) through a restart: QoS 1 and a persistent session, so that
what is published while the daemon is down is learned when it is back; nothing is lost, and a message learned twice
is one the broker flagged as sent again (counted)."""

from __future__ import annotations

import signal

import numpy as np
import pytest
import torch
from service_support import Daemon, metrics_url, scrape, write_config, write_counting_model

from connectors.mqtt import MqttProducer
from streammas.service.checkpoint import CheckpointStore

pytestmark = pytest.mark.slow  # daemons in subprocesses

ROWS = 1200


def _publish(port: int, first: int, n: int) -> None:
    rng = np.random.default_rng(first)
    with MqttProducer("plant/line-1", port=port) as producer:
        for i in range(first, first + n, 4):  # four samples per message
            producer.send(np.column_stack([np.arange(i, i + 4), rng.random((4, 2))]).astype(np.float32))
        assert producer.flush(timeout=60)


def test_qos1_through_a_daemon_restart_with_a_persistent_session(tmp_path, mosquitto):
    write_counting_model(tmp_path)
    config = write_config(tmp_path / "streammas.toml", f"""
[source]
uri = "mqtt://127.0.0.1:{mosquitto.port}/plant/#?client_id=learner-1"
batch_size = 16
[model]
factory = "counting_model:make"
options = {{ n_rows = {ROWS} }}
[learner]
hard_buffer = 0
replay = 0
scale_inputs = "none"
[state]
dir = "state"
every_samples = 200
every_seconds = 1
[metrics]
port = 0
[log]
status_every_seconds = 0
""")
    first = Daemon(config, tmp_path)
    try:
        _wait_connected(first)
        _publish(mosquitto.port, 0, ROWS // 2)
        first.wait_for("checkpoint", lambda r: r["samples_seen"] >= ROWS // 2)
        assert first.stop(signal.SIGTERM) == 0, first.log()
    finally:
        first.kill()
    _publish(mosquitto.port, ROWS // 2, ROWS // 2)  # while the daemon is down: the broker queues them for its session
    second = Daemon(config, tmp_path)
    try:
        second.wait_for("resumed")
        second.wait_for("checkpoint", lambda r: r["samples_seen"] >= ROWS)
        duplicates = scrape(metrics_url(second)).get('streammas_source_events_total{event="duplicates"}', 0)
        assert second.stop(signal.SIGTERM) == 0, second.log()
    finally:
        second.kill()
    done = CheckpointStore(tmp_path / "state").load_latest()
    seen = done.learner["model"]["seen"]
    never = torch.nonzero(seen == 0).flatten().tolist()
    twice = int((seen > 1).sum())
    assert never == [], f"lost: {never[:10]}"
    assert done.learner["samples_seen"] == ROWS + int((seen - 1).sum())
    assert twice == 0 or duplicates > 0, "rows learned twice that no counter shows"


def _wait_connected(daemon: Daemon) -> None:
    import time

    deadline = time.monotonic() + 60
    while "connected as" not in daemon.log():
        assert time.monotonic() < deadline and daemon.proc.poll() is None, daemon.log()
        time.sleep(0.05)
    time.sleep(0.3)  # the subscription follows the connection
