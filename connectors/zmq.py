"""ZeroMQ connectors: :class:`ZmqSource` (PULL or SUB), :class:`ZmqSink` (PUB) and
:class:`ZmqProducer` (PUSH or PUB, for Python producers), all speaking wire format v1
(:mod:`connectors.wire`).

Addresses: ``tcp://host:port`` (``host:port`` and ``:port`` work; the host defaults to 127.0.0.1, and
binding anywhere but the loopback interface without CurveZMQ logs a warning), ``ipc://path``,
``inproc://name``; ``tcp://127.0.0.1:*`` binds a free port (see ``.address``). URIs:
``zmq+pull://127.0.0.1:5555``, ``zmq+sub://host:port``, ``zmq+pub://127.0.0.1:5556`` (sink), or with
another transport ``zmq+pull:ipc:///tmp/streammas.sock``; options may also be given as a query string
(``zmq+sub://10.0.0.5:5556?topic=sensors&hwm=50``).

The source decodes without copying: a batch's array is a writable view of the buffer libzmq received
the message into (a batch that spans messages is one ``np.concatenate``); it also caches the last
header it parsed, so that decoding costs little beyond the receive itself.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
import zmq

from connectors.base import Batch, Sink
from connectors.batching import BatchingSource
from connectors.counters import Reject
from connectors.curve import CurveOptions, configure
from connectors.records import check_scores, split_extra
from connectors.samples import SampleShape, as_features, as_labels, drop_nonfinite, json_samples
from connectors.wire import Header, encode, encode_json, load_json, parse_header

_log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
_MAX_WAIT_MS = 3_600_000
_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


def endpoint(address: str) -> str:
    """A ZeroMQ endpoint from an address; bare ``host:port`` means TCP, a missing host 127.0.0.1.

    >>> endpoint("5555"), endpoint(":5555"), endpoint("10.0.0.2:5555"), endpoint("ipc:///tmp/s")
    ('tcp://127.0.0.1:5555', 'tcp://127.0.0.1:5555', 'tcp://10.0.0.2:5555', 'ipc:///tmp/s')
    """
    if "://" in address:
        return address
    host, _, port = address.rpartition(":")
    return f"tcp://{host or '127.0.0.1'}:{port}"


def is_loopback(address: str) -> bool:
    if not address.startswith("tcp://"):
        return True  # ipc and inproc never leave the machine
    host = address[len("tcp://") :].rpartition(":")[0]
    return host.startswith(_LOOPBACK)


class _Socket:
    """One socket with its context and optional Curve authenticator; owns what it created."""

    def __init__(
        self,
        kind: int,
        address: str,
        bind: bool,
        *,
        curve: CurveOptions,
        context: zmq.Context | None,
        options: dict[int, Any],
    ) -> None:
        self.address = endpoint(address)
        self.bind = bind
        self._owns_context = context is None
        self.context = zmq.Context() if context is None else context
        self.socket = self.context.socket(kind)
        self.auth = None
        try:
            for opt, value in options.items():
                self.socket.setsockopt(opt, value)
            if "[" in self.address:
                self.socket.ipv6 = True
            self.auth = configure(self.socket, self.context, curve)
            if bind:
                if not curve.enabled and not is_loopback(self.address):
                    _log.warning(
                        "%s: unauthenticated ZeroMQ socket bound beyond the loopback interface; anyone who "
                        "can reach it can send to it (set curve_secret_key to require keys)",
                        self.address,
                    )
                self.socket.bind(self.address)
                self.address = self.socket.last_endpoint.decode()
            else:
                self.socket.connect(self.address)
        except BaseException:
            self.close(0)
            raise

    def close(self, linger_ms: int) -> None:
        if self.socket is not None:
            self.socket.close(linger=linger_ms)
            self.socket = None
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        if self._owns_context and self.context is not None:
            self.context.term()
            self.context = None


def _curve(secret_key: str | None, server_key: str | None, authorized_keys: str | None) -> CurveOptions:
    return CurveOptions(secret_key=secret_key, server_key=server_key, authorized_keys=authorized_keys)


def _topic(topic: str | bytes | None) -> bytes | None:
    if topic is None or topic in ("", b""):
        return None
    return topic.encode() if isinstance(topic, str) else bytes(topic)


class ZmqSource(BatchingSource):
    """Samples from a ZeroMQ PULL (producers PUSH to it; it binds by default) or SUB socket (it connects
    to a publisher by default), in wire format v1.

    ``max_message_bytes`` bounds a message (larger ones are counted ``too_large`` and skipped);
    ``sample_shape`` fixes the samples' shape (otherwise the first accepted message does); ``topic``
    (SUB) subscribes to messages whose first frame is that topic; ``hwm`` is the receive queue in
    messages. ``check_finite=False`` skips the NaN/infinity scan, the one pass over the data that
    decoding makes (about the cost of copying it); only for producers that cannot send such values.
    Curve: ``curve_secret_key`` (this server's key file) with optional
    ``curve_authorized_keys`` (a directory of client public keys), or ``curve_server_key`` (+ optional
    ``curve_secret_key``) when this socket is the client. Counters add ``messages``. Endless: never
    ``finished``, and not resumable (``position`` is ``None``).

    >>> with ZmqSource("tcp://127.0.0.1:*", batch_size=4) as src:
    ...     with ZmqProducer(src.address) as producer:
    ...         producer.send(np.arange(6, dtype=np.float32).reshape(3, 2), y=np.array([0, 1, 2]))
    ...     batch = src.read(timeout=10)
    >>> batch.x.tolist(), batch.y.tolist(), src.counters["messages"]
    ([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], [0, 1, 2], 1)
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:5555",
        pattern: str = "pull",
        bind: bool | None = None,
        *,
        batch_size: int = 32,
        max_latency_ms: float = 50.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        sample_shape: list[int] | tuple[int, ...] | None = None,
        topic: str | bytes | None = None,
        hwm: int = 100,
        check_finite: bool = True,
        curve_secret_key: str | None = None,
        curve_server_key: str | None = None,
        curve_authorized_keys: str | None = None,
        context: zmq.Context | None = None,
        name: str | None = None,
    ) -> None:
        if pattern not in ("pull", "sub"):
            raise ValueError(f"pattern must be 'pull' or 'sub', got {pattern!r}")
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be >= 1")
        self._topic = _topic(topic)
        if self._topic is not None and pattern != "sub":
            raise ValueError("topic is for pattern='sub'")
        super().__init__(
            name or f"zmq+{pattern} {address}",
            batch_size=batch_size,
            max_latency_ms=max_latency_ms,
            logger=_log,
            counter_keys=("messages",),
        )
        self.pattern = pattern
        self._max = int(max_message_bytes)
        self._check_finite = bool(check_finite)
        self._shape = SampleShape(sample_shape)
        self._last_raw: bytes | None = None
        self._last_header: Header | None = None
        self._messages = 0
        options: dict[int, Any] = {zmq.RCVHWM: int(hwm), zmq.LINGER: 0}
        if pattern == "sub":
            options[zmq.SUBSCRIBE] = self._topic or b""
        self._sock = _Socket(
            zmq.PULL if pattern == "pull" else zmq.SUB,
            address,
            pattern == "pull" if bind is None else bool(bind),
            curve=_curve(curve_secret_key, curve_server_key, curve_authorized_keys),
            context=context,
            options=options,
        )
        self._socket = self._sock.socket
        if name is None:
            self.name = self._counters.name = f"zmq+{pattern} {self._sock.address}"
        self._copy = self._sock.address.startswith("inproc://")
        self._rcvtimeo = -1

    @property
    def address(self) -> str:
        """The endpoint bound or connected to (the real port when bound to ``*``)."""
        return self._sock.address

    # -- BatchingSource ------------------------------------------------------------------------------
    def _fill(self, until: float | None) -> None:
        batcher = self._batcher
        receive = self._receive
        # Wait (a blocking receive, as a bare loop does) for the first message only ...
        # (At most an hour per call: read() calls again when a longer timeout is cut short.)
        left = None if until is None else math.ceil(max(0.0, until - time.monotonic()) * 1000.0)
        wanted = -1 if left is None else min(_MAX_WAIT_MS, left)
        if wanted == 0:
            flags = zmq.NOBLOCK
        else:
            flags = 0
            current = self._rcvtimeo
            if wanted == -1 and current != -1 or wanted != -1 and not (0.9 * wanted - 1 <= current <= wanted):
                # A slightly shorter wait is harmless (read() waits again for the rest); a longer one not.
                self._socket.rcvtimeo = self._rcvtimeo = wanted
        try:
            receive(flags)
        except zmq.Again:
            return
        # ... then take what is already there, without waiting, until a batch is ready (or, should a flood
        # of bad messages keep it from ever being ready, until the caller's time is up).
        taken = 1
        while not batcher.ready:
            try:
                receive(zmq.NOBLOCK)
            except zmq.Again:
                return
            taken += 1
            if taken % 64 == 0 and until is not None and time.monotonic() >= until:
                return

    def _release(self) -> None:
        self._sock.close(0)

    # -- decoding ------------------------------------------------------------------------------------
    def _receive(self, flags: int) -> None:
        """Take one whole message (raises ``zmq.Again`` when none is waiting) and push its samples."""
        frames = self._socket.recv_multipart(flags, copy=False)
        self._messages += 1
        self._counters.counts["messages"] += 1
        try:
            if self._topic is not None:
                frames = frames[1:]
            n = len(frames)
            if n == 1:
                self._json(frames[0])
            elif n in (2, 3):
                self._binary(frames)
            else:
                raise Reject("frames", f"{n} frames; wire format v1 has 1, 2 or 3 (after any topic)")
        except Reject as e:
            self._reject(Reject(e.reason, f"message {self._messages}: {e.detail}", e.count))

    def _binary(self, frames: list[zmq.Frame]) -> None:
        raw = frames[0].bytes
        if raw == self._last_raw:
            header = self._last_header
        else:
            header = parse_header(raw)
            self._last_raw, self._last_header = raw, header
        self._shape.check(header.sample_shape)
        size = sum(len(f) for f in frames)
        if size > self._max:
            raise Reject("too_large", f"{size} bytes > max_message_bytes {self._max}")
        x = self._array(frames[1], header.dtype, header.shape, header.nbytes, "payload")
        y = None
        if len(frames) == 3:
            y = as_labels(self._array(frames[2], header.labels_dtype, header.shape[:1], header.labels_nbytes, "labels"))
        self._accept(as_features(x), y)

    def _array(self, frame: zmq.Frame, dtype: np.dtype, shape: tuple[int, ...], nbytes: int, what: str) -> np.ndarray:
        """A frame as an array, without a copy: a writable view of the buffer libzmq received the message
        into, kept alive by the array (copied only when misaligned, or over ``inproc://``, where the
        buffer may be the sender's own)."""
        buffer = frame.buffer
        if buffer.nbytes != nbytes:
            raise Reject(
                "size", f"{what} of {buffer.nbytes} bytes where the header's shape {list(shape)} needs {nbytes}"
            )
        out = np.frombuffer(buffer, dtype=dtype).reshape(shape)
        if self._copy or not out.flags.aligned or not out.flags.writeable:
            out = out.copy()
        return out

    def _json(self, frame: zmq.Frame) -> None:
        if len(frame) > self._max:
            raise Reject("too_large", f"{len(frame)} bytes > max_message_bytes {self._max}")
        obj = load_json(frame.bytes)
        if isinstance(obj, dict) and "v" in obj:
            if "x" not in obj:
                raise Reject("frames", "a binary header without its payload frame")
            if obj["v"] != 1:
                raise Reject("version", f"unknown wire format version {obj['v']!r}")
        x, y = json_samples(obj, self._shape)
        self._accept(x, y)

    def _accept(self, x: np.ndarray, y: np.ndarray | None) -> None:
        if not self._check_finite:
            self._push(x, y)
            return
        x, y, dropped = drop_nonfinite(x, y)
        if dropped:
            detail = f"message {self._messages}: {dropped} samples with NaN or infinity"
            self._reject(Reject("nonfinite", detail, dropped))
        self._push(x, y)


class ZmqSink(Sink):
    """Publishes each batch's scores on a PUB socket (binds by default) as one wire-format-v1 message:
    the scores are the payload (float32, shape ``[B]``), the labels ride along when the batch has them,
    and the header adds ``"kind": "scores"``, ``"seq"`` (the first sample's running number),
    ``"position"`` and ``"extra"`` (per-sample arrays as lists, batch-level values as given).

    A ``zmq+sub`` source can read it back. Nothing blocks: with no subscriber, or a slow one past
    ``hwm`` messages, messages are dropped (counted in ``dropped``), as PUB does.

    >>> with ZmqSink("tcp://127.0.0.1:*") as sink:
    ...     sink.write(Batch(np.zeros((2, 3), dtype=np.float32)), np.array([0.1, 0.2]), {"events": []})
    >>> sink.sent
    1
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:5556",
        bind: bool = True,
        *,
        topic: str | bytes | None = None,
        hwm: int = 1000,
        curve_secret_key: str | None = None,
        curve_server_key: str | None = None,
        curve_authorized_keys: str | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self._topic = _topic(topic)
        self._sock = _Socket(
            zmq.PUB,
            address,
            bool(bind),
            curve=_curve(curve_secret_key, curve_server_key, curve_authorized_keys),
            context=context,
            options={zmq.SNDHWM: int(hwm), zmq.LINGER: 0},
        )
        self._seq = 0
        self.sent = 0
        self.dropped = 0

    @property
    def address(self) -> str:
        return self._sock.address

    def write(self, batch: Batch, scores: np.ndarray, extra: dict | None = None) -> None:
        if self._sock.socket is None:
            raise ValueError("write to a closed sink")
        values = check_scores(batch, scores).astype(np.float32)
        per_sample, per_batch = split_extra(extra, len(values))
        fields: dict[str, Any] = {"kind": "scores", "seq": self._seq}
        if batch.position is not None:
            fields["position"] = batch.position
        if per_sample or per_batch:
            fields["extra"] = {**per_sample, **per_batch}
        frames = encode(values, batch.y, **fields)
        if self._topic is not None:
            frames.insert(0, self._topic)
        try:
            self._sock.socket.send_multipart(frames, flags=zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:
            self.dropped += 1
        self._seq += len(values)

    def close(self) -> None:
        self._sock.close(0)


class ZmqProducer:
    """Sends samples in wire format v1 from Python: PUSH (connects by default, to a PULL source) or PUB
    (binds by default; SUB sources connect to it).

    ``send`` blocks while the receiver's and this socket's queues (``hwm`` messages each) are full,
    which is how a slow consumer slows a producer down; ``send_timeout`` (seconds) turns a block that
    long into ``TimeoutError``. ``close`` waits up to ``linger_ms`` for queued messages to leave
    (``-1``: as long as it takes). The Curve options are :class:`ZmqSource`'s.

    >>> with ZmqSource("tcp://127.0.0.1:*", batch_size=8, max_latency_ms=1) as src:
    ...     with ZmqProducer(src.address) as producer:
    ...         producer.send(np.zeros((2, 3), dtype=np.float64))
    ...         producer.send_json([1.0, 2.0, 3.0])
    ...     got = 0
    ...     while got < 3:  # one batch, or two if the latency flush came in between
    ...         got += len(src.read(timeout=10))
    >>> producer.sent, got
    (2, 3)
    """

    def __init__(
        self,
        address: str = "tcp://127.0.0.1:5555",
        pattern: str = "push",
        bind: bool | None = None,
        *,
        topic: str | bytes | None = None,
        hwm: int = 1000,
        linger_ms: int = 30_000,
        send_timeout: float | None = None,
        curve_secret_key: str | None = None,
        curve_server_key: str | None = None,
        curve_authorized_keys: str | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        if pattern not in ("push", "pub"):
            raise ValueError(f"pattern must be 'push' or 'pub', got {pattern!r}")
        self._topic = _topic(topic)
        if self._topic is not None and pattern != "pub":
            raise ValueError("topic is for pattern='pub'")
        self._linger = int(linger_ms)
        options: dict[int, Any] = {zmq.SNDHWM: int(hwm), zmq.LINGER: self._linger}
        if send_timeout is not None:
            options[zmq.SNDTIMEO] = max(0, int(send_timeout * 1000))
        self._sock = _Socket(
            zmq.PUSH if pattern == "push" else zmq.PUB,
            address,
            pattern == "pub" if bind is None else bool(bind),
            curve=_curve(curve_secret_key, curve_server_key, curve_authorized_keys),
            context=context,
            options=options,
        )
        self.sent = 0

    @property
    def address(self) -> str:
        return self._sock.address

    def send(self, x: np.ndarray, y: np.ndarray | None = None, **fields: Any) -> None:
        """Send ``x`` (``[B, ...]``) and optional labels ``y`` (``[B]``) as one binary message."""
        self.send_frames(encode(x, y, **fields))

    def send_json(self, x: Any, y: Any = None) -> None:
        """Send the single-frame JSON form (the slow path; for tests and tiny rates)."""
        self.send_frames([encode_json(x, y)])

    def send_frames(self, frames: list) -> None:
        """Send raw frames as one message (the topic frame is added on a topic-filtered PUB)."""
        if self._sock.socket is None:
            raise ValueError("send on a closed producer")
        if self._topic is not None:
            frames = [self._topic, *frames]
        try:
            self._sock.socket.send_multipart(frames)
        except zmq.Again:
            raise TimeoutError(f"{self.address}: the receiver is not taking messages") from None
        self.sent += 1

    def close(self, linger_ms: int | None = None) -> None:
        self._sock.close(self._linger if linger_ms is None else int(linger_ms))

    def __enter__(self) -> ZmqProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the registry's URI connectors -------------------------------------------------------------------
_INT_OPTIONS = {"hwm", "max_message_bytes", "linger_ms"}
_BOOL_OPTIONS = {"bind", "check_finite"}


def parse_uri(uri: str) -> tuple[str, dict[str, Any]]:
    """``(address, options)`` of a ``zmq+...`` URI (query-string options converted to their types).

    >>> parse_uri("zmq+sub://10.0.0.5:5556?topic=sensors&bind=0")
    ('tcp://10.0.0.5:5556', {'topic': 'sensors', 'bind': False})
    >>> parse_uri("zmq+pull:ipc:///tmp/s.sock")[0]
    'ipc:///tmp/s.sock'
    """
    rest = uri.split(":", 1)[1]
    rest, _, query = rest.partition("?")
    address = rest[2:] if rest.startswith("//") else rest
    if not address:
        raise ValueError(f"{uri!r} has no address; e.g. zmq+pull://127.0.0.1:5555")
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in _INT_OPTIONS:
            options[key] = int(value)
        elif key in _BOOL_OPTIONS:
            options[key] = value.lower() in ("1", "true", "yes", "on")
        elif key == "sample_shape":
            options[key] = [int(d) for d in value.split(",") if d]
        else:
            options[key] = value
    return endpoint(address), options


class ZmqConnector:
    """The registry's connector for one ZeroMQ scheme (``zmq+pull``, ``zmq+sub``, ``zmq+pub``).

    >>> with PUB.open_sink("zmq+pub://127.0.0.1:*?hwm=10") as sink:
    ...     sink.address.startswith("tcp://127.0.0.1:")
    True
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def open_source(
        self, uri: str, *, batch_size: int, max_latency_ms: float, position: dict | None, **options: Any
    ) -> ZmqSource:
        if self.pattern == "pub":
            raise ValueError("zmq+pub is a sink; read a publisher with zmq+sub://host:port")
        address, query = parse_uri(uri)
        if position is not None:
            _log.debug("%s: a ZeroMQ source cannot resume; ignoring the saved position", uri)
        return ZmqSource(
            address, self.pattern, batch_size=batch_size, max_latency_ms=max_latency_ms, **{**query, **options}
        )

    def open_sink(self, uri: str, **options: Any) -> ZmqSink:
        if self.pattern != "pub":
            raise ValueError(f"zmq+{self.pattern} is a source; publish results with zmq+pub://host:port")
        address, query = parse_uri(uri)
        return ZmqSink(address, **{**query, **options})


PULL = ZmqConnector("pull")
SUB = ZmqConnector("sub")
PUB = ZmqConnector("pub")
