"""``streammas send --to redis+stream://...`` and ``--to mqtt://...``: a file's rows reach a real broker, read back
by a plain client and by the sources; a broker that is not there is exit status 1."""

from __future__ import annotations

import json
import queue
import time

import numpy as np
from broker_support import free_port
from service_support import streammas


def _csv(tmp_path, n: int = 100) -> None:
    rows = "".join(f"{i},{i % 7},{i % 2}\n" for i in range(n))
    (tmp_path / "rows.csv").write_text("id,a,label\n" + rows + "oops,1,0\n")


def test_send_appends_the_rows_to_a_redis_stream(tmp_path, redis_server):
    _csv(tmp_path)
    done = streammas("send", "rows.csv", "--to", f"{redis_server.uri}/rows", "--batch-size", "32", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "sent 100 samples in 4 messages" in done.stderr and "parse" in done.stderr  # the bad row, counted
    entries = redis_server.client().xrange("rows")
    assert len(entries) == 4
    x = np.concatenate([np.frombuffer(f[b"payload"], np.float32).reshape(json.loads(f[b"header"])["shape"])
                        for _, f in entries])
    y = np.concatenate([np.frombuffer(f[b"labels"], np.int64) for _, f in entries])
    assert x[:, 0].tolist() == list(range(100)) and y.tolist() == [i % 2 for i in range(100)]


def test_send_publishes_the_rows_to_an_mqtt_topic(tmp_path, mosquitto):
    from paho.mqtt.client import CallbackAPIVersion, Client

    _csv(tmp_path)
    received: queue.Queue = queue.Queue()
    client = Client(CallbackAPIVersion.VERSION2, client_id="reader")
    client.on_message = lambda c, u, m: received.put(m.payload)
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe("plant/#", qos=1)
    client.loop_start()
    try:
        time.sleep(0.3)
        done = streammas("send", "rows.csv", "--to", f"{mosquitto.uri}/plant/line-1", "--batch-size", "50",
                         cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        payloads = [received.get(timeout=30) for _ in range(2)]
    finally:
        client.loop_stop()
        client.disconnect()
    header = json.loads(payloads[1].split(b"\n", 1)[0])
    assert header["shape"] == [50, 2] and header["labels_dtype"] == "int64"


def test_send_to_a_broker_that_is_not_there_fails(tmp_path):
    _csv(tmp_path)
    done = streammas("send", "rows.csv", "--to", f"redis+stream://127.0.0.1:{free_port()}/rows", cwd=tmp_path)
    assert done.returncode == 1 and "ConnectionError" in done.stderr, done.stderr
    done = streammas("send", "rows.csv", "--to", f"mqtt://127.0.0.1:{free_port()}/t", "--linger", "1", cwd=tmp_path)
    assert done.returncode == 1 and "did not take every message" in done.stderr, done.stderr
