"""The ZeroMQ source: :class:`ZmqSource` reads wire format v1 (:mod:`connectors.wire`) from PULL or SUB.

The source decodes without copying: a batch's array is a writable view of the buffer libzmq received
the message into (a batch that spans messages is one ``np.concatenate``); it also caches the last
header it parsed, so that decoding costs little beyond the receive itself.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import zmq

from connectors.batching import BatchingSource
from connectors.counters import RateLimitedLog, Reject
from connectors.curve import CurveOptions
from connectors.samples import SampleShape, as_features, as_labels, drop_nonfinite, json_samples
from connectors.wire import Header, load_json, parse_header, short_repr
from connectors.zmq.socket import ZmqSocket, topic_frame

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "ZmqSource"]

_log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
_MAX_WAIT_MS = 3_600_000
#: Decoding JSON holds a Python object per number, up to about this many times the message's size: a JSON
#: message is taken up to this fraction of max_message_bytes, so that decoding it stays within that.
JSON_EXPANSION = 8
#: Bytes a frame may exceed max_message_bytes by on the wire before libzmq drops it: CurveZMQ adds a few
#: dozen to each frame, and a message the source itself can count as too large is better than a dropped peer.
FRAME_SLACK = 1024
#: How long :meth:`ZmqSource.drain` waits, once the queue is empty, for messages still on their way.
DRAIN_QUIET_S = 0.1
#: How many messages a drain counts without decoding when the receive queue has no bound (``hwm=0``).
_UNBOUNDED_QUEUE_COUNT = 10_000


class ZmqSource(BatchingSource):
    """Samples from a ZeroMQ PULL or SUB socket, in wire format v1.

    Producers PUSH to a PULL source, which binds by default; a SUB source connects to a publisher by default.
    Endless: never ``finished``, and not resumable (``position`` is ``None``).

    Nothing a producer sends can stop the source: every declared size is checked before anything is
    allocated for it (:func:`connectors.wire.header_from`), and input that is not accepted is skipped and
    counted. Counters (see :class:`~connectors.counters.Counters`) add ``messages``;
    ``rejected:<reason>`` counts samples (one for a message whose samples cannot be known) and
    ``rejected_messages:<reason>`` the messages; :meth:`drain` adds ``dropped_at_shutdown`` (samples, one
    per message whose samples are not known) and ``dropped_messages_at_shutdown``.

    The stream's sample shape is ``sample_shape`` when given; otherwise the first samples taken fix it, and
    input that cannot be learned (samples without a dimension or without a value), or that is turned away
    for any other reason, never does. Samples of another shape are rejected (reason ``shape``) and a
    warning naming both shapes is logged at most once a minute, whatever else is being rejected.

    Parameters
    ----------
    address : str, default "tcp://127.0.0.1:5555"
        Where to bind or connect (see :func:`connectors.zmq.socket.endpoint`).
    pattern : {"pull", "sub"}, default "pull"
        ``"pull"`` or ``"sub"``.
    bind : bool or None, default None
        Bind or connect (``None``: a PULL source binds, a SUB source connects).
    batch_size : int, default 32
        Micro-batching, as :class:`~connectors.batching.BatchingSource`'s.
    max_latency_ms : float, default 50.0
        Micro-batching, as :class:`~connectors.batching.BatchingSource`'s.
    max_message_bytes : int, default DEFAULT_MAX_MESSAGE_BYTES
        The largest message taken; larger ones, and headers declaring more, are counted ``too_large`` and
        skipped. libzmq itself refuses a frame over it (``ZMQ_MAXMSGSIZE``, set to it plus
        :data:`FRAME_SLACK`) before allocating anything for it: it then **disconnects the peer** that sent
        it, the source never sees that message (it is not counted), and what that peer had queued on the
        connection is lost; a producer's socket reconnects by itself. A JSON message is taken up to
        ``1 / JSON_EXPANSION`` of it, as decoding one takes up to that many times its size. The receive
        queue holds at most ``hwm`` messages of frames of at most this size.
    sample_shape : list or tuple of int, or None, default None
        The samples' shape (``None``: the first samples taken fix it). ``[]`` takes samples without a
        dimension (a bare ``[B]`` array, such as a :class:`~connectors.zmq.ZmqSink`'s scores), which a
        stream without a configured shape refuses.
    shape_origin : {"configured", "checkpoint"}, default "configured"
        Where ``sample_shape`` came from, as the message about a sample of another shape says (the service
        passes ``"checkpoint"`` when it resumes a model built for that shape).
    topic : str, bytes or None, default None
        (SUB) Subscribe to the messages whose first frame is this topic.
    hwm : int, default 100
        The receive queue, in messages.
    check_finite : bool, default True
        ``False`` skips the NaN/infinity scan, the one pass over the data that decoding makes (about the
        cost of copying it); only for producers that cannot send such values.
    curve : CurveOptions or None, default None
        CurveZMQ: ``secret_key`` (this server's key file) with optional ``authorized_keys`` (a directory
        of client public keys), or ``server_key`` (+ optional ``secret_key``) when this socket is the
        client.
    context : zmq.Context or None, default None
        A ZeroMQ context to share (``None``: one of its own).
    name : str or None, default None
        The name in logs and counters (``None``: the scheme and the address).
    **curve_keys
        ``curve_secret_key``, ``curve_server_key``, ``curve_authorized_keys``: the fields of ``curve``
        as URI query strings and the service's options spell them.

    Examples
    --------
    >>> from connectors.zmq import ZmqProducer
    >>> with ZmqSource("tcp://127.0.0.1:*", batch_size=4) as src:
    ...     with ZmqProducer(src.address) as producer:
    ...         producer.send(np.arange(6, dtype=np.float32).reshape(3, 2), y=np.array([0, 1, 2]))
    ...     batch = src.read(timeout=10)
    >>> batch.x.tolist(), batch.y.tolist(), src.counters["messages"]
    ([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], [0, 1, 2], 1)

    At a stop, :meth:`drain` yields what the socket and the batcher already hold, a batch at a time:

    >>> with ZmqSource("inproc://doc-drain", batch_size=4, max_latency_ms=60_000) as src:
    ...     with ZmqProducer(src.address, context=src.context) as producer:
    ...         for k in range(3):
    ...             producer.send(np.full((2, 2), k, dtype=np.float32))
    ...     [len(b) for b in src.drain(timeout=10)], src.counters["dropped_at_shutdown"]
    ([4, 2], 0)
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
        shape_origin: str = "configured",
        topic: str | bytes | None = None,
        hwm: int = 100,
        check_finite: bool = True,
        curve: CurveOptions | None = None,
        context: zmq.Context | None = None,
        name: str | None = None,
        **curve_keys: str | None,
    ) -> None:
        curve = CurveOptions.from_keywords(curve, curve_keys, type(self).__name__)
        if pattern not in ("pull", "sub"):
            raise ValueError(f"pattern must be 'pull' or 'sub', got {pattern!r}")
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be >= 1")
        self._topic = topic_frame(topic)
        if self._topic is not None and pattern != "sub":
            raise ValueError("topic is for pattern='sub'")
        super().__init__(
            name or f"zmq+{pattern} {address}",
            batch_size=batch_size,
            max_latency_ms=max_latency_ms,
            logger=_log,
            counter_keys=("messages", "dropped_at_shutdown", "dropped_messages_at_shutdown"),
        )
        self.pattern = pattern
        self._max = int(max_message_bytes)
        self._check_finite = bool(check_finite)
        self._shape = SampleShape(sample_shape, shape_origin)
        self._shape_log = RateLimitedLog(lambda m: _log.warning("%s", m), burst=1, interval=60.0)
        self._last_raw: bytes | None = None
        self._last_header: Header | None = None
        self._messages = 0
        self._hwm = int(hwm)
        # libzmq drops a larger frame while reading its length, before allocating it (see the docstring).
        options: dict[int, Any] = {zmq.RCVHWM: self._hwm, zmq.LINGER: 0, zmq.MAXMSGSIZE: self._max + FRAME_SLACK}
        if pattern == "sub":
            options[zmq.SUBSCRIBE] = self._topic or b""
        self._sock = ZmqSocket(
            zmq.PULL if pattern == "pull" else zmq.SUB,
            address,
            pattern == "pull" if bind is None else bool(bind),
            curve=curve,
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

    @property
    def context(self) -> zmq.Context | None:
        """The socket's ZeroMQ context (to share with ``inproc://`` peers); ``None`` once closed."""
        return self._sock.context

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        """The stream's sample shape: configured, fixed by the first samples taken, or ``None`` before."""
        return self._shape.shape

    def forget_sample_shape(self) -> None:
        self._shape.forget()

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

    def _drain_input(self, until: float) -> bool:
        """Decode what the socket holds until a batch is ready, or until it has been quiet for
        :data:`DRAIN_QUIET_S` (messages still in flight: then ``True``), or until ``until``."""
        socket, receive, clock, batcher = self._socket, self._receive, time.monotonic, self._batcher
        while (left := until - clock()) > 0:
            try:
                receive(zmq.NOBLOCK)
            except zmq.Again:
                if not socket.poll(math.ceil(min(left, DRAIN_QUIET_S) * 1000.0)):
                    return True
                continue
            if batcher.ready:
                return False
        return False

    def _count_queued(self) -> int:
        """Count, without decoding and without waiting, the messages the socket still holds (at most ``hwm``:
        the receive queue's bound; what is still in flight is the producers' to resend)."""
        socket = self._socket
        messages = samples = 0
        for _ in range(self._hwm or _UNBOUNDED_QUEUE_COUNT):
            try:
                frames = socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            messages += 1
            samples += self._declared_count(frames)
        counts = self._counters.counts
        counts["dropped_messages_at_shutdown"] += messages
        counts["dropped_at_shutdown"] += samples
        return samples

    def _declared_count(self, frames: list[zmq.Frame]) -> int:
        """The samples of a binary message whose payload agrees with its header, else 1 (the message)."""
        if self._topic is not None:
            frames = frames[1:]
        if len(frames) in (2, 3):
            try:
                header = self._header(frames[0].bytes)
            except Reject:
                return 1
            if len(frames[1]) == header.nbytes:
                return header.count
        return 1

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
            self._reject_message(e)
        except Exception as e:  # what the checks did not foresee must still not stop the source
            self._reject_message(Reject("decode", f"{type(e).__name__}: {short_repr(str(e))}"))

    def _reject_message(self, e: Reject) -> None:
        detail = f"message {self._messages}: {e.detail}"
        self._counters.reject(Reject(e.reason, detail, e.count), piece="messages")
        if e.reason == "shape" and self._shape.shape is not None:
            # Its own, slower budget: a shape change must show even amid a flood of other rejects.
            rejected = self._counters["rejected:shape"]
            hint = "" if self._shape.configured else " (a configured sample_shape decides it up front)"
            self._shape_log.emit(f"{self.name}: {detail}; {rejected} samples rejected for their shape so far{hint}")

    def _header(self, raw: bytes) -> Header:
        if raw != self._last_raw:
            self._last_header = parse_header(raw, self._max)
            self._last_raw = raw
        return self._last_header

    def _binary(self, frames: list[zmq.Frame]) -> None:
        header = self._header(frames[0].bytes)
        payload = frames[1]
        # The declared count is believed only when the payload agrees with it.
        count = header.count if len(payload) == header.nbytes else 1
        try:
            size = sum(len(f) for f in frames)
            if size > self._max:
                raise Reject("too_large", f"{size} bytes > max_message_bytes {self._max}")
            self._shape.admit(header.sample_shape)
            x = self._array(payload, header.dtype, header.shape, header.nbytes, "payload")
            y = None
            if len(frames) == 3:
                labels = self._array(frames[2], header.labels_dtype, header.shape[:1], header.labels_nbytes, "labels")
                y = as_labels(labels)
        except Reject as e:
            e.count = count
            raise
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
        if len(frame) * JSON_EXPANSION > self._max:
            raise Reject("too_large", f"JSON of {len(frame)} bytes > max_message_bytes {self._max} / {JSON_EXPANSION}")
        obj = load_json(frame.bytes)
        if isinstance(obj, dict) and "v" in obj:
            if "x" not in obj:
                raise Reject("frames", "a binary header without its payload frame")
            if obj["v"] != 1:
                raise Reject("version", f"unknown wire format version {short_repr(obj['v'])}")
        x, y = json_samples(obj, self._shape, fix=False)
        self._accept(x, y)

    def _accept(self, x: np.ndarray, y: np.ndarray | None) -> None:
        if self._check_finite:
            x, y, dropped = drop_nonfinite(x, y)
            if dropped:
                self._reject_message(Reject("nonfinite", f"{dropped} samples with NaN or infinity", dropped))
        if x.shape[0]:
            self._shape.fix(x.shape[1:])
            self._push(x, y)
