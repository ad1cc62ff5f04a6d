"""The MQTT connectors against a real ``mosquitto``: both forms of the wire format, bad messages counted and
acknowledged, messages not handed on sent again to the same session (at least once, duplicates counted), and the
sink read back by a plain client."""

from __future__ import annotations

import json
import queue
import time

import numpy as np

from connectors.base import Batch
from connectors.mqtt import MqttProducer, MqttSource
from connectors.registry import open_sink, open_source
from connectors.wire import encode_json, encode_packed


def _read(src, n: int, patience: float = 30.0) -> list:
    batches, got, deadline = [], 0, time.monotonic() + patience
    while got < n and time.monotonic() < deadline:
        batch = src.read(timeout=0.2)
        if batch is not None:
            batches.append(batch)
            got += len(batch)
    return batches


def _subscribed(src, patience: float = 30.0) -> None:
    deadline = time.monotonic() + patience
    while src.counters["connects"] < 1:
        assert time.monotonic() < deadline, "the source never connected"
        time.sleep(0.02)
    time.sleep(0.2)  # the SUBSCRIBE follows the CONNACK


def test_both_forms_and_bad_messages_counted(mosquitto):
    with open_source(f"{mosquitto.uri}/sensors/+?client_id=t1", batch_size=64, max_latency_ms=50) as src:
        _subscribed(src)
        with MqttProducer("sensors/a", port=mosquitto.port) as producer:
            producer.send(np.arange(6, dtype=np.float32).reshape(3, 2), np.array([0, 1, 2]))
            short = b'{"v": 1, "dtype": "float32", "shape": [1, 2]}\nxx'  # 2 bytes where 8 are declared
            for raw in (encode_json([[6.0, 7.0]], [3]), b"garbage", short,
                        json.dumps({"x": [[1.0, float("nan")]]}).encode(), b'{"x": [8,\n 9]}'):
                producer.publish(raw)
            assert producer.flush(timeout=30)
        batches = _read(src, 5)
        assert np.concatenate([b.x for b in batches]).tolist() == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
        counters = src.counters
        assert {k: v for k, v in counters.items() if k.startswith("rejected:")} == {
            "rejected:json": 1, "rejected:size": 1, "rejected:nonfinite": 1}
        src.read(timeout=0.1)  # asking for more: what was handed on is learned, and acknowledged
        assert counters["messages"] == 6 and src.counters["acked"] == 6


def test_messages_not_handed_on_come_back_to_the_same_session(mosquitto):
    first = MqttSource("rows", port=mosquitto.port, client_id="learner", batch_size=10, max_latency_ms=0)
    _subscribed(first)
    with MqttProducer("rows", port=mosquitto.port) as producer:
        for i in range(50):
            producer.send(np.array([[i, 0.0]], np.float32))
        assert producer.flush(timeout=30)
    taken = _read(first, 10)  # handed on, then the source stops before asking for more: none acknowledged
    first.close()
    with MqttProducer("rows", port=mosquitto.port) as producer:  # published while the subscriber is away
        for i in range(50, 60):
            producer.send(np.array([[i, 0.0]], np.float32))
        assert producer.flush(timeout=30)
    with MqttSource("rows", port=mosquitto.port, client_id="learner", batch_size=100, max_latency_ms=200) as again:
        rest = _read(again, 60)
        ids = sorted(int(v) for b in rest for v in b.x[:, 0])
        assert ids == list(range(60))  # nothing lost: the 10 taken before are sent again, unacknowledged
        assert again.counters["duplicates"] >= 1  # counted (the broker flags what it sends again)
    # what the first session took (in the broker's order, which queued QoS 1 messages need not keep) came again
    first_ids = [int(v) for b in taken for v in b.x[:, 0]]
    assert len(first_ids) >= 10 and len(set(first_ids)) == len(first_ids) and set(first_ids) <= set(range(50))


def test_the_sink_is_read_back_by_a_plain_client(mosquitto):
    from paho.mqtt.client import CallbackAPIVersion, Client

    received: queue.Queue = queue.Queue()
    client = Client(CallbackAPIVersion.VERSION2, client_id="dashboard")
    client.on_message = lambda c, u, m: received.put(m.payload)
    client.connect("127.0.0.1", mosquitto.port)
    client.subscribe("scores/#", qos=1)
    client.loop_start()
    try:
        time.sleep(0.3)
        with open_sink(f"{mosquitto.uri}/scores/model-1") as sink:
            for k in range(3):
                batch = Batch(np.zeros((2, 3), np.float32), y=np.array([1, 0]), position={"row": 2 * k + 2})
                sink.write(batch, np.array([k, k + 0.5]), {"sample": np.array([2 * k, 2 * k + 1])})
        payloads = [received.get(timeout=30) for _ in range(3)]
    finally:
        client.loop_stop()
        client.disconnect()
    header, _, rest = payloads[-1].partition(b"\n")
    header = json.loads(header)
    assert header["kind"] == "scores" and header["seq"] == 4 and header["position"] == {"row": 6}
    assert np.frombuffer(rest[:8], np.float32).tolist() == [2.0, 2.5]
    assert np.frombuffer(rest[8:], np.int64).tolist() == [1, 0]
    assert payloads[0] == encode_packed(np.array([0.0, 0.5], np.float32), np.array([1, 0]), kind="scores", seq=0,
                                        position={"row": 2}, extra={"sample": [0, 1]})
