"""The Redis Streams connectors against a real ``redis-server``: entries in both forms of the wire format,
acknowledged only once a commit covers them, bad entries counted and acknowledged, a resume that skips exactly
what the checkpoint covers, a broker restarted under a reading source, and the sink read back by a plain client."""

from __future__ import annotations

import json
import time

import numpy as np

from connectors.base import Batch
from connectors.redis import RedisStreamProducer, RedisStreamSource
from connectors.registry import open_sink, open_source
from connectors.wire import encode_json


def _read_all(src, n: int, patience: float = 30.0) -> list:
    batches, got, deadline = [], 0, time.monotonic() + patience
    while got < n and time.monotonic() < deadline:
        batch = src.read(timeout=0.5)
        if batch is not None:
            batches.append(batch)
            got += len(batch)
    return batches


def _pending(client, stream: str = "s", group: str = "streammas") -> int:
    return int(client.xpending(stream, group)["pending"])


def _ids(batches) -> list[int]:
    return [int(v) for b in batches for v in b.x[:, 0]]


def test_both_forms_learned_and_acknowledged_only_when_a_commit_covers_them(redis_server):
    with RedisStreamProducer("s", port=redis_server.port) as producer:
        producer.send(np.arange(6, dtype=np.float32).reshape(3, 2), y=np.array([0, 1, 2]))
    client = redis_server.client()
    client.xadd("s", {"json": encode_json([[6.0, 7.0]], [3])})
    with open_source(f"{redis_server.uri}/s", batch_size=4, max_latency_ms=0) as src:
        batches = _read_all(src, 4)
        assert [b.x.tolist() for b in batches] == [[[0, 1], [2, 3], [4, 5], [6, 7]]]
        assert batches[0].y.tolist() == [0, 1, 2, 3]
        assert _pending(client) == 2  # delivered, not acknowledged: a crash now reads them again
        src.commit(batches[-1].position)
        assert _pending(client) == 0
        assert src.counters["acked"] == 2 and src.counters["entries"] == 2


def test_garbage_entries_are_counted_by_reason_and_acknowledged(redis_server):
    client = redis_server.client()
    client.xadd("s", {"json": b"not json"})
    client.xadd("s", {"header": b'{"v": 1, "dtype": "float32", "shape": [2, 2]}', "payload": b"short"})
    client.xadd("s", {"something": b"else"})
    client.xadd("s", {"header": b'{"v": 7}', "payload": b""})
    client.xadd("s", {"json": json.dumps({"x": [[1.0, float("nan")], [2.0, 3.0]]})})
    client.xadd("s", {"json": encode_json([[4.0, 5.0]])})
    with RedisStreamSource("s", port=redis_server.port, batch_size=8, max_latency_ms=0) as src:
        batches = _read_all(src, 2)
        assert [b.x.tolist() for b in batches] == [[[2.0, 3.0], [4.0, 5.0]]]
        counters = src.counters
        assert {k: v for k, v in counters.items() if k.startswith("rejected:")} == {
            "rejected:json": 1, "rejected:size": 1, "rejected:fields": 1, "rejected:version": 1,
            "rejected:nonfinite": 1}
        src.commit(batches[-1].position)
        assert _pending(client) == 0 and counters["entries"] == 6


def test_a_resume_acknowledges_what_the_checkpoint_covers_and_learns_the_rest_once(redis_server):
    with RedisStreamProducer("s", port=redis_server.port) as producer:
        for i in range(10):  # entries of 3 samples, ids in column 0
            producer.send(np.arange(3 * i, 3 * i + 3, dtype=np.float32)[:, None].repeat(2, axis=1))
    client = redis_server.client()
    first = RedisStreamSource("s", port=redis_server.port, batch_size=4, max_latency_ms=0)
    batches = _read_all(first, 12)
    checkpointed = batches[1].position  # 8 samples: ends inside the third entry
    assert checkpointed["skip"] == 2
    first.commit(checkpointed)  # the checkpoint is durable; then a crash: no more commits
    first.close()
    assert _pending(client) > 0
    with RedisStreamSource("s", port=redis_server.port, batch_size=64, max_latency_ms=0,
                           position=checkpointed) as again:
        rest = _read_all(again, 22)
        assert _ids(batches[:2]) + _ids(rest) == list(range(30))
        assert again.counters["redelivered"] >= 2
        again.commit(rest[-1].position)
    assert _pending(client) == 0


def test_the_broker_stopped_and_started_again_under_a_reading_source(redis_server):
    producer = RedisStreamProducer("s", port=redis_server.port)
    producer.send(np.zeros((2, 2), np.float32))
    with RedisStreamSource("s", port=redis_server.port, batch_size=2, max_latency_ms=0) as src:
        assert len(_read_all(src, 2)[0]) == 2
        redis_server.stop()
        for _ in range(3):
            assert src.read(timeout=0.2) is None  # never raises: counted, retried with a pause
        assert src.counters["broker_errors"] >= 1
        src.commit(src.position)  # the broker is away: kept for the next commit
        redis_server.start()  # same port, with what it persisted
        producer.send(np.ones((3, 2), np.float32))
        batches = _read_all(src, 3)
        assert sum(len(b) for b in batches) == 3 and all((b.x == 1).all() for b in batches)
        src.commit(batches[-1].position)
        assert _pending(redis_server.client()) == 0
    producer.close()


def test_the_sink_is_read_back_by_a_plain_client_and_by_the_source(redis_server):
    with open_sink(f"{redis_server.uri}/scores?maxlen=5&approximate=0") as sink:
        for k in range(20):
            batch = Batch(np.zeros((2, 3), np.float32), y=np.array([1, 0]), position={"row": 2 * k + 2})
            sink.write(batch, np.array([k, k + 0.5]), {"sample": np.array([2 * k, 2 * k + 1])})
        assert sink.sent == 20 and sink.dropped == 0
    entries = redis_server.client().xrange("scores")
    assert len(entries) == 5  # trimmed exactly (approximate trimming drops whole nodes of about 100 entries)
    _, fields = entries[-1]
    header = json.loads(fields[b"header"])
    assert header["kind"] == "scores" and header["seq"] == 38 and header["position"] == {"row": 40}
    assert header["extra"] == {"sample": [38, 39]}
    assert np.frombuffer(fields[b"payload"], np.float32).tolist() == [19.0, 19.5]
    assert np.frombuffer(fields[b"labels"], np.int64).tolist() == [1, 0]
    with open_source(f"{redis_server.uri}/scores?sample_shape=", batch_size=64, max_latency_ms=0) as src:
        assert _read_all(src, 2 * len(entries))[-1].x[-2:].tolist() == [19.0, 19.5]
