"""ZeroMQ connectors over real sockets on 127.0.0.1 (ports picked by the OS)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from connectors.base import Batch
from connectors.curve import create_keys
from connectors.registry import open_sink, open_source
from connectors.zmq import ZmqProducer, ZmqSink, ZmqSource, endpoint, is_loopback
from connectors.zmq.source import FRAME_SLACK

REPO = Path(__file__).resolve().parents[1]
GUARD_S = 60.0  # a safety net against hangs, never a performance assertion


def read_samples(src, n: int) -> tuple[np.ndarray, np.ndarray | None, list[Batch]]:
    """Read batches until ``n`` samples arrived (fails if the stream stalls for GUARD_S)."""
    batches: list[Batch] = []
    got = 0
    deadline = time.monotonic() + GUARD_S
    while got < n:
        batch = src.read(timeout=0.5)
        if batch is None:
            assert time.monotonic() < deadline, f"stalled after {got} of {n} samples: {dict(src.counters)}"
            continue
        batches.append(batch)
        got += len(batch)
    x = np.concatenate([b.x for b in batches])
    ys = [b.y for b in batches]
    y = None if any(v is None for v in ys) else np.concatenate(ys)
    return x, y, batches


PRODUCER = r"""
import sys
import numpy as np
from connectors.zmq import ZmqProducer

address, total, features = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(1)
with ZmqProducer(address, linger_ms=-1) as producer:
    i = 0
    while i < total:
        n = min(total - i, int(rng.integers(1, 1000)))
        ids = np.arange(i, i + n)
        x = (ids[:, None] * features + np.arange(features)).astype(np.float32)
        if n <= 3:  # the JSON slow path, in the same stream
            producer.send_json(x, ids)
        else:
            producer.send(x, ids)
        i += n
"""


def test_100k_samples_from_a_producer_process_arrive_intact_and_in_order() -> None:
    total, features = 100_000, 16
    with ZmqSource("tcp://127.0.0.1:*", batch_size=256, max_latency_ms=20) as src:
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.Popen(
            [sys.executable, "-c", PRODUCER, src.address, str(total), str(features)], cwd=REPO, env=env
        )
        try:
            x, y, batches = read_samples(src, total)
        finally:
            assert proc.wait(timeout=GUARD_S) == 0
        counters = dict(src.counters)
    ids = np.arange(total)
    assert x.shape == (total, features) and x.dtype == np.float32
    np.testing.assert_array_equal(x, (ids[:, None] * features + np.arange(features)).astype(np.float32))
    np.testing.assert_array_equal(y, ids)
    assert y.dtype == np.int64
    assert all(len(b) <= 256 and b.x.flags.c_contiguous and b.x.flags.writeable for b in batches)
    assert counters["samples"] == total and counters["batches"] == len(batches)
    assert not [k for k in counters if k.startswith("rejected:")]


def hdr(shape, **extra) -> bytes:
    return json.dumps({"v": 1, "dtype": "float32", "shape": list(shape), **extra}).encode()


def f32(*shape, fill=1.0) -> bytes:
    return np.full(shape, fill, dtype=np.float32).tobytes()


def test_each_kind_of_bad_input_is_counted_and_the_source_keeps_going(caplog: pytest.LogCaptureFixture) -> None:
    nan_rows = np.ones((3, 4), dtype=np.float32)
    nan_rows[1, 2], nan_rows[2, 0] = np.nan, np.inf
    labels = np.zeros(600, np.int64).tobytes()
    # (frames, reason, samples rejected): a message's samples when its payload agrees with its header, else 1
    bad: list[tuple[list[bytes], str, int]] = [
        ([b"{bad"], "json", 1),
        ([b"\xff\xfe\x00"], "json", 1),
        ([b""], "json", 1),
        ([b"", b""], "json", 1),
        ([hdr((1, 4))], "frames", 1),
        ([hdr((1, 4)), f32(1, 4), np.zeros(1, np.int64).tobytes(), b"more"], "frames", 1),
        ([b"[1, 2]", f32(1, 4)], "header", 1),
        ([json.dumps({"v": 2, "dtype": "float32", "shape": [1, 4]}).encode(), f32(1, 4)], "version", 1),
        ([json.dumps({"v": 1, "dtype": "complex64", "shape": [1, 4]}).encode(), f32(1, 4)], "dtype", 1),
        ([hdr((1, 4)), f32(1, 4)[:-1]], "size", 1),
        ([hdr((2, 4)), f32(2, 4), np.zeros(1, np.int64).tobytes()], "size", 2),
        ([hdr((1, 5)), f32(1, 5)], "shape", 1),
        ([hdr((3, 5)), f32(3, 5)], "shape", 3),
        ([hdr((3,)), f32(3)], "shape", 3),  # samples without a dimension
        ([hdr((1, 0)), b""], "shape", 1),  # samples without a value
        ([hdr((0, 10**30)), b""], "too_large", 1),  # once a fatal ValueError in numpy's reshape
        ([hdr((600, 4)), f32(600, 4), labels], "too_large", 600),  # each frame fits, the message does not
        ([json.dumps({"x": [1.0] * 400}).encode()], "too_large", 1),  # JSON takes ~8x its size to decode
        ([b'{"y": 1}'], "schema", 1),
        ([b'{"x": [1, 2, 3]}'], "shape", 1),
        ([b'{"x": [[1, 2, 3], [4, 5, 6]]}'], "shape", 2),
        ([b'{"x": []}'], "shape", 1),
        ([b'{"x": [1, 2, 3, 4], "y": "cat"}'], "label", 1),
        ([b'{"x": [1, 2, 3, NaN]}'], "nonfinite", 1),
        ([hdr((3, 4)), nan_rows.tobytes()], "nonfinite", 2),  # row 0 is fine and is kept
    ]
    samples: dict[str, int] = {}
    messages: dict[str, int] = {}
    for _, reason, n in bad:
        samples[reason] = samples.get(reason, 0) + n
        messages[reason] = messages.get(reason, 0) + 1

    ctx = zmq.Context()
    with ZmqSource("tcp://127.0.0.1:*", batch_size=1000, max_latency_ms=10, max_message_bytes=10_000) as src:
        push = ctx.socket(zmq.PUSH)
        push.connect(src.address)
        expected: list[float] = []
        push.send_multipart([hdr((1, 4)), f32(1, 4, fill=-1.0)])  # fixes the stream's sample shape (4,)
        expected.append(-1.0)
        with caplog.at_level(logging.WARNING, logger="connectors.zmq"):
            for k, (frames, _, _) in enumerate(bad):
                push.send_multipart(frames)
                if frames[0] == hdr((3, 4)):
                    expected.append(1.0)
                push.send_multipart([hdr((1, 4)), f32(1, 4, fill=float(k))])
                expected.append(float(k))
            x, _, _ = read_samples(src, len(expected))
        counters = dict(src.counters)
        push.close(linger=0)
    ctx.term()
    assert x[:, 0].tolist() == expected
    assert np.isfinite(x).all()
    assert {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("rejected:")} == samples
    assert {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("rejected_messages:")} == messages
    assert counters["messages"] == 1 + 2 * len(bad)
    assert "skipped input (json): message 2: " in caplog.text
    skipped = [r for r in caplog.records if "skipped input" in r.getMessage()]
    assert len(skipped) == 10  # logged at a bounded rate: a burst of 10, then 1 per 10 s
    # A shape change is logged on its own (once a minute), naming both shapes, however many rejects come first.
    shape_lines = [r.getMessage() for r in caplog.records if "rejected for their shape" in r.getMessage()]
    assert len(shape_lines) == 1
    assert "sample shape (5,) differs from the stream's (4,), fixed by its first samples" in shape_lines[0]


def test_a_partial_batch_is_flushed_after_max_latency() -> None:
    with ZmqSource("tcp://127.0.0.1:*", batch_size=10_000, max_latency_ms=5) as src:
        assert src.read(timeout=0) is None  # nothing sent yet
        with ZmqProducer(src.address) as producer:
            producer.send(np.ones((3, 2), np.float32))
        batch = src.read(timeout=GUARD_S)
    assert batch is not None and batch.x.shape == (3, 2)
    assert src.position is None and not src.finished


def test_labelled_and_unlabelled_messages_never_share_a_batch() -> None:
    with ZmqSource("tcp://127.0.0.1:*", batch_size=100, max_latency_ms=10) as src:
        with ZmqProducer(src.address) as producer:
            producer.send(np.zeros((2, 2), np.float32), y=np.array([1, 2]))
            producer.send(np.ones((3, 2), np.float32))
        _, _, batches = read_samples(src, 5)
    assert [(len(b), b.y is not None) for b in batches] == [(2, True), (3, False)]


def test_pub_sink_to_sub_source_with_topic_and_extras() -> None:
    with ZmqSink("tcp://127.0.0.1:*", topic="scores") as sink:
        ctx = zmq.Context()
        raw = ctx.socket(zmq.SUB)
        raw.subscribe(b"scores")
        raw.connect(sink.address)
        # Scores are samples without a dimension, which only a stream configured for them takes.
        with ZmqSource(
            sink.address, pattern="sub", topic="scores", sample_shape=[], batch_size=4, max_latency_ms=5
        ) as src:
            batch = Batch(np.zeros((2, 3), np.float32), y=np.array([1, 0]), position={"row": 2})
            deadline = time.monotonic() + GUARD_S
            got, frames = None, None
            # PUB drops what it sends before a subscriber has joined, and the two subscribers join
            # independently: keep publishing the same message until each has one.
            while got is None or frames is None:
                assert time.monotonic() < deadline, "a subscriber never received a message"
                sink.write(batch, np.array([0.5, 2.5]), {"loss": np.array([1.0, 2.0]), "events": ["plateau"]})
                if got is None:
                    got = src.read(timeout=0.2)
                if frames is None and raw.poll(200):
                    frames = raw.recv_multipart()
        assert got.x.tolist() == [0.5, 2.5] and got.y.tolist() == [1, 0]
        topic, header, payload, labels = frames
        raw.close(linger=0)
        ctx.term()
    assert topic == b"scores"
    meta = json.loads(header)
    assert meta["kind"] == "scores" and meta["position"] == {"row": 2}
    assert meta["extra"] == {"loss": [1.0, 2.0], "events": ["plateau"]}
    assert np.frombuffer(payload, np.float32).tolist() == [0.5, 2.5]
    assert np.frombuffer(labels, np.int64).tolist() == [1, 0]


def test_input_that_cannot_be_learned_never_fixes_the_stream_shape() -> None:
    nan = np.full((2, 7), np.nan, np.float32).tobytes()
    first = [
        [hdr((1, 0)), b""],  # no value
        [hdr((3,)), f32(3)],  # no dimension
        [b'{"x": []}'],
        [hdr((2, 7)), nan],  # every sample non-finite
        [b'{"x": [1, 2, 3, 4, 5], "y": "cat"}'],  # rejected for its label
        [hdr((0, 9)), b""],  # no samples at all
    ]
    ctx = zmq.Context()
    with ZmqSource("tcp://127.0.0.1:*", batch_size=100, max_latency_ms=5) as src:
        push = ctx.socket(zmq.PUSH)
        push.connect(src.address)
        for frames in first:
            push.send_multipart(frames)
        for k in range(5):
            push.send_multipart([hdr((2, 4)), f32(2, 4, fill=float(k))])
        x, _, _ = read_samples(src, 10)
        shape, counters = src.sample_shape, dict(src.counters)
        push.close(linger=0)
    ctx.term()
    assert shape == (4,) and x[:, 0].tolist() == [k for k in range(5) for _ in range(2)]
    rejected = {k: v for k, v in counters.items() if k.startswith("rejected")}
    assert rejected == {
        "rejected:shape": 5, "rejected_messages:shape": 3,
        "rejected:nonfinite": 2, "rejected_messages:nonfinite": 1,
        "rejected:label": 1, "rejected_messages:label": 1,
    }  # fmt: skip


def test_a_configured_sample_shape_decides_from_the_first_message() -> None:
    with ZmqSource("tcp://127.0.0.1:*", sample_shape=[4], batch_size=100, max_latency_ms=5) as src:
        assert src.sample_shape == (4,)
        with ZmqProducer(src.address) as producer:
            producer.send(np.ones((1, 200_000), np.float32))  # valid, but not this stream's
            producer.send_json([[1.0, 2.0, 3.0]] * 3)
            producer.send(np.full((3, 4), 7, np.float32))
        x, _, _ = read_samples(src, 3)
        counters = dict(src.counters)
    assert x.tolist() == [[7.0] * 4] * 3
    assert counters["rejected:shape"] == 4 and counters["rejected_messages:shape"] == 2


def test_libzmq_drops_an_oversized_frame_before_allocating_it() -> None:
    limit = 1 << 20
    with ZmqSource("tcp://127.0.0.1:*", max_message_bytes=limit, batch_size=4, max_latency_ms=1) as src:
        assert src._socket.getsockopt(zmq.MAXMSGSIZE) == limit + FRAME_SLACK
        with ZmqProducer(src.address, linger_ms=-1) as big:
            big.send_frames([hdr((1, 1 << 20)), f32(1, 1 << 20)])  # a 4 MiB payload frame
        # libzmq drops it with the connection: it never reaches the source, not even to be counted
        assert src.read(timeout=1.0) is None
        with ZmqProducer(src.address) as producer:  # a new connection is served as before
            producer.send(np.ones((2, 3), np.float32))
        x, _, _ = read_samples(src, 2)
        counters = dict(src.counters)
    assert x.tolist() == [[1.0] * 3] * 2 and counters["messages"] == 1


def test_drain_yields_what_the_socket_and_the_batcher_hold() -> None:
    messages, per = 40, 3
    with ZmqSource("tcp://127.0.0.1:*", batch_size=16, max_latency_ms=60_000) as src:
        with ZmqProducer(src.address, linger_ms=-1) as producer:
            for k in range(messages):
                producer.send(np.full((per, 2), k, np.float32), y=np.full(per, k))
        first = src.read(timeout=GUARD_S)  # leaves part of a message in the batcher
        assert first is not None and len(first) == 16
        time.sleep(0.5)  # (a margin for a loaded machine: drain itself waits a moment for messages in flight)
        batches = list(src.drain(timeout=GUARD_S))
        counters = dict(src.counters)
        assert list(src.drain(timeout=0)) == []
    assert list(src.drain(timeout=GUARD_S)) == []  # closed
    x = np.concatenate([first.x] + [b.x for b in batches])
    y = np.concatenate([first.y] + [b.y for b in batches])
    assert x[:, 0].tolist() == y.tolist() == [k for k in range(messages) for _ in range(per)]
    assert all(len(b) <= 16 for b in batches)
    assert counters["samples"] == messages * per and counters["batches"] == 1 + len(batches)
    assert counters["dropped_at_shutdown"] == counters["dropped_messages_at_shutdown"] == 0


def test_what_a_drain_has_no_time_for_is_counted(caplog: pytest.LogCaptureFixture) -> None:
    with ZmqSource("tcp://127.0.0.1:*", batch_size=100, max_latency_ms=60_000) as src:
        with ZmqProducer(src.address, linger_ms=-1) as producer:
            producer.send(np.zeros((3, 2), np.float32))
            deadline = time.monotonic() + GUARD_S
            while src.counters["messages"] < 1:  # taken into the batcher, not yet due
                assert src.read(timeout=0.1) is None and time.monotonic() < deadline
            for k in range(20):
                producer.send(np.full((5, 2), k, np.float32))
            producer.send_json([1.0, 2.0])  # its samples are not known without decoding: one
        time.sleep(0.5)
        with caplog.at_level(logging.WARNING, logger="connectors.zmq"):
            batches = list(src.drain(timeout=0))
        counters = dict(src.counters)
    assert batches == []  # no time: the batcher's 3 samples are counted with the socket's queue
    assert counters["dropped_at_shutdown"] == 3 + 101 and counters["dropped_messages_at_shutdown"] == 21
    assert "104 samples still held at shutdown were not learned" in caplog.text


def test_uris_options_and_transports(tmp_path: Path) -> None:
    with open_source("zmq+pull://127.0.0.1:*?hwm=10&max_message_bytes=100000", batch_size=8) as src:
        assert src._max == 100_000 and src.address.startswith("tcp://127.0.0.1:")
    address = f"ipc://{tmp_path}/s.sock"
    with open_source(f"zmq+pull:{address}", batch_size=8, max_latency_ms=1) as src:
        with ZmqProducer(address) as producer:
            producer.send(np.arange(4, dtype=np.float64).reshape(2, 2))
        x, _, _ = read_samples(src, 2)
    assert x.dtype == np.float32 and x.tolist() == [[0, 1], [2, 3]]
    with open_sink("zmq+pub://127.0.0.1:*") as sink:
        assert isinstance(sink, ZmqSink)
    assert endpoint(":5555") == "tcp://127.0.0.1:5555"
    assert is_loopback("tcp://127.0.0.1:1") and is_loopback("ipc:///x") and not is_loopback("tcp://0.0.0.0:1")


def test_binding_beyond_loopback_without_curve_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="connectors.zmq"), ZmqSource("tcp://0.0.0.0:*"):
        pass
    assert "unauthenticated" in caplog.text


# -- CurveZMQ -----------------------------------------------------------------------------------------
HANDSHAKE_FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


def wait_event(monitor: zmq.Socket, events: int) -> int:
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        if monitor.poll(500):
            event = recv_monitor_message(monitor)["event"]
            if event & events:
                return event
    raise AssertionError("no handshake event")


def try_send(producer: ZmqProducer) -> None:
    """Queue a message if the socket still takes one (a refused peer's pipe may already be gone)."""
    with contextlib.suppress(TimeoutError):
        producer.send(np.full((1, 2), 666, np.float32))


@pytest.mark.skipif(not zmq.has("curve"), reason="libzmq without CurveZMQ")
def test_curve_refuses_unauthenticated_and_unknown_clients(tmp_path: Path) -> None:
    _, server_secret = create_keys(str(tmp_path / "server"), "server")
    server_public = str(tmp_path / "server" / "server.key")
    alice_public, alice_secret = create_keys(str(tmp_path / "clients"), "alice")
    _, mallory_secret = create_keys(str(tmp_path / "others"), "mallory")
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    shutil.copy(alice_public, authorized)

    with ZmqSource(
        "tcp://127.0.0.1:*",
        batch_size=10,
        max_latency_ms=1,
        curve_secret_key=server_secret,
        curve_authorized_keys=str(authorized),
    ) as src:
        monitor = src._socket.get_monitor_socket(HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
        # No Curve at all: the handshake fails, nothing is delivered.
        plain = ZmqProducer(src.address, linger_ms=0, send_timeout=0)
        try_send(plain)
        assert wait_event(monitor, HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED) & HANDSHAKE_FAILED
        plain.close()
        # Curve, but a key the server does not list: refused by the authenticator.
        mallory = ZmqProducer(
            src.address, linger_ms=0, send_timeout=0, curve_server_key=server_public, curve_secret_key=mallory_secret
        )
        try_send(mallory)
        assert wait_event(monitor, HANDSHAKE_FAILED | zmq.EVENT_HANDSHAKE_SUCCEEDED) & HANDSHAKE_FAILED
        mallory.close()
        # An authorized client gets through.
        with ZmqProducer(src.address, curve_server_key=server_public, curve_secret_key=alice_secret) as alice:
            alice.send(np.full((1, 2), 1, np.float32))
        x, _, _ = read_samples(src, 1)
        assert x.tolist() == [[1, 1]]
        assert src.read(timeout=0.2) is None  # and nothing of the refused clients ever arrives
        src._socket.disable_monitor()
        monitor.close(linger=0)


def test_curve_key_problems_are_reported(tmp_path: Path) -> None:
    public, _ = create_keys(str(tmp_path), "k")
    with pytest.raises(FileNotFoundError):
        ZmqSource("tcp://127.0.0.1:*", curve_secret_key=str(tmp_path / "missing.key_secret"))
    with pytest.raises(ValueError, match="no secret key"):
        ZmqSource("tcp://127.0.0.1:*", curve_secret_key=public)
    with pytest.raises(ValueError, match="server side"):
        ZmqProducer("tcp://127.0.0.1:1", curve_server_key=public, curve_authorized_keys=str(tmp_path))
