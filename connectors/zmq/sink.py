"""The ZeroMQ sink: :class:`ZmqSink` publishes each batch's scores on a PUB socket, in wire format v1."""

from __future__ import annotations

from typing import Any

import numpy as np
import zmq

from connectors.base import Batch, Sink
from connectors.curve import CurveOptions
from connectors.records import check_scores, split_extra
from connectors.wire import encode
from connectors.zmq.socket import ZmqSocket, topic_frame

__all__ = ["ZmqSink"]


class ZmqSink(Sink):
    """Publishes each batch's scores on a PUB socket (binds by default) as one wire-format-v1 message.

    The scores are the payload (float32, shape ``[B]``), the labels ride along when the batch has them,
    and the header adds ``"kind": "scores"``, ``"seq"`` (the first sample's running number),
    ``"position"`` and ``"extra"`` (per-sample arrays as lists, batch-level values as given).

    A ``zmq+sub`` source configured with ``sample_shape=[]`` (samples without a dimension) can read it
    back. Nothing blocks: with no subscriber, or a slow one past ``hwm`` messages, messages are dropped
    (counted in ``dropped``), as PUB does.

    Parameters
    ----------
    address : str, default "tcp://127.0.0.1:5556"
        Where to bind or connect (see :func:`connectors.zmq.socket.endpoint`).
    bind : bool, default True
        Bind (the default) or connect.
    topic : str, bytes or None, default None
        A first frame on every message, for topic-filtered subscribers.
    hwm : int, default 1000
        The send queue, in messages.
    curve : CurveOptions or None, default None
        CurveZMQ settings, as :class:`~connectors.zmq.ZmqSource`'s.
    context : zmq.Context or None, default None
        A ZeroMQ context to share (``None``: one of its own).
    **curve_keys
        ``curve_secret_key``, ``curve_server_key``, ``curve_authorized_keys``: the fields of ``curve``
        as URI query strings and the service's options spell them.

    Examples
    --------
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
        curve: CurveOptions | None = None,
        context: zmq.Context | None = None,
        **curve_keys: str | None,
    ) -> None:
        curve = CurveOptions.from_keywords(curve, curve_keys, type(self).__name__)
        self._topic = topic_frame(topic)
        self._sock = ZmqSocket(
            zmq.PUB,
            address,
            bool(bind),
            curve=curve,
            context=context,
            options={zmq.SNDHWM: int(hwm), zmq.LINGER: 0},
        )
        self._seq = 0
        self.sent = 0
        self.dropped = 0

    @property
    def address(self) -> str:
        """The endpoint bound or connected to (the real port when bound to ``*``)."""
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
