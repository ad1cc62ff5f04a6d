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
from connectors.counters import Reject
from connectors.curve import CurveOptions
from connectors.samples import SampleShape, as_features, as_labels, drop_nonfinite, json_samples
from connectors.wire import Header, load_json, parse_header
from connectors.zmq.socket import ZmqSocket, topic_frame

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "ZmqSource"]

_log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
_MAX_WAIT_MS = 3_600_000


class ZmqSource(BatchingSource):
    """Samples from a ZeroMQ PULL or SUB socket, in wire format v1.

    Producers PUSH to a PULL source, which binds by default; a SUB source connects to a publisher by default.
    Counters add ``messages``. Endless: never ``finished``, and not resumable (``position`` is ``None``).

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
        The largest message taken; larger ones are counted ``too_large`` and skipped.
    sample_shape : list or tuple of int, or None, default None
        The samples' shape (``None``: the first accepted message fixes it).
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
