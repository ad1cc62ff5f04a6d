"""Writing to a Redis stream: :class:`RedisStreamProducer` (samples, for ``streammas send``) and
:class:`RedisStreamSink` (each batch's scores, for dashboards and alerting rules), both in wire format v1."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from connectors.base import Batch, Sink
from connectors.counters import RateLimitedLog
from connectors.records import check_scores, split_extra
from connectors.redis.source import FIRST_BACKOFF_S, MAX_BACKOFF_S
from connectors.redis.uri import connect
from connectors.wire import encode, short_repr

__all__ = ["RedisStreamProducer", "RedisStreamSink"]

_log = logging.getLogger(__name__)


class RedisStreamProducer:
    """Appends samples to a Redis stream, one entry per call (``XADD``): the fields ``header``, ``payload`` and,
    with labels, ``labels`` (wire format v1, binary), which :class:`~connectors.redis.RedisStreamSource` reads.

    Parameters
    ----------
    stream : str
        The stream's key (made by the first entry).
    host, port : str, int
        The broker.
    maxlen : int or None, default None
        Trim the stream to about this many entries as entries are added (``None``: no trimming). Trimming
        drops the oldest entries whether or not a consumer group has read them.
    approximate : bool, default True
        Trim with ``~`` (whole nodes at a time: cheaper, and the stream keeps at least ``maxlen`` entries).
    **client
        ``username``, ``password``, ``tls``, ``tls_ca``, ``db`` (see :func:`connectors.redis.uri.connect`).

    Examples
    --------
    tests/test_connectors_redis.py runs it against a real broker; without one, a send says so:

    >>> with RedisStreamProducer("sensors", port=1) as producer:
    ...     producer.send(np.zeros((64, 8), np.float32))
    Traceback (most recent call last):
        ...
    redis.exceptions.ConnectionError: Error 111 connecting to 127.0.0.1:1. Connection refused.
    """

    def __init__(self, stream: str, *, host: str = "127.0.0.1", port: int = 6379, maxlen: int | None = None,
                 approximate: bool = True, **client: Any) -> None:
        if maxlen is not None and maxlen < 1:
            raise ValueError("maxlen must be >= 1")
        self.stream, self.maxlen, self.approximate = stream, maxlen, bool(approximate)
        self.address = f"redis+stream://{host}:{port}/{stream}"
        self._client = connect(host, port, **client)
        #: Entries added.
        self.sent = 0

    def send(self, x: np.ndarray, y: np.ndarray | None = None, **fields: object) -> bytes:
        """Add one entry holding ``x`` (``[B, ...]``) and the optional labels ``y``; returns its id. Raises the
        client's ``ConnectionError`` when the broker cannot be reached."""
        frames = encode(x, y, **fields)
        entry = {"header": frames[0], "payload": bytes(frames[1])}
        if y is not None:
            entry["labels"] = bytes(frames[2])
        ident = self._client.xadd(self.stream, entry, maxlen=self.maxlen, approximate=self.approximate)
        self.sent += 1
        return ident

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RedisStreamProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedisStreamSink(Sink):
    """Appends each batch's scores to a Redis stream, as one entry in wire format v1, trimmed to ``maxlen``.

    The scores are the payload (float32, ``[B]``), the labels ride along when the batch has them, and the
    header adds ``"kind": "scores"``, ``"seq"`` (the first sample's running number), ``"position"`` and
    ``"extra"`` (per-sample arrays as lists, batch-level values as given), as the ZeroMQ sink's do. A
    ``redis+stream`` source with ``sample_shape=[]`` reads them back; so does any client (``XRANGE``).

    Nothing blocks the learning on a broker that is away: the records of a batch that cannot be written are
    counted in ``dropped`` (the service counts them as lost) and the next tries wait a pause that doubles up
    to :data:`~connectors.redis.source.MAX_BACKOFF_S` (batches in that pause are dropped too).

    Parameters
    ----------
    stream : str
        The stream's key.
    host, port : str, int
        The broker.
    maxlen : int, default 100_000
        Keep about this many entries (approximate trimming); 0 keeps everything.
    **client
        ``username``, ``password``, ``tls``, ``tls_ca``, ``db``.

    Examples
    --------
    Without a broker, writes are counted as dropped, never raised:

    >>> sink = RedisStreamSink("scores", port=1)
    >>> sink.write(Batch(np.zeros((2, 3), dtype=np.float32)), np.array([0.1, 0.2]))
    >>> sink.sent, sink.dropped
    (0, 2)
    >>> sink.close()
    """

    def __init__(self, stream: str, *, host: str = "127.0.0.1", port: int = 6379, maxlen: int = 100_000,
                 approximate: bool = True, **client: Any) -> None:
        self._producer = RedisStreamProducer(stream, host=host, port=port, maxlen=maxlen or None,
                                             approximate=approximate, **client)
        self.address = self._producer.address
        self._seq = 0
        self._failures = 0
        self._retry_at = 0.0
        self._warn = RateLimitedLog(lambda m: _log.warning("%s", m), burst=3, interval=30.0, noun="failures")
        #: Entries (batches) written, and records (samples) given up.
        self.sent = 0
        self.dropped = 0

    def write(self, batch: Batch, scores: np.ndarray, extra: dict | None = None) -> None:
        values = check_scores(batch, scores).astype(np.float32)
        first, self._seq = self._seq, self._seq + len(values)
        if time.monotonic() < self._retry_at:
            self.dropped += len(values)
            return
        per_sample, per_batch = split_extra(extra, len(values))
        fields: dict[str, Any] = {"kind": "scores", "seq": first}
        if batch.position is not None:
            fields["position"] = batch.position
        if per_sample or per_batch:
            fields["extra"] = {**per_sample, **per_batch}
        try:
            self._producer.send(values, batch.y, **fields)
        except Exception as e:  # the broker is away: counted, retried after a pause
            self.dropped += len(values)
            self._failures += 1
            pause = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + pause
            self._warn.emit(f"{self._producer.address}: scores not written ({type(e).__name__}: "
                            f"{short_repr(str(e))}); {self.dropped} records dropped so far")
            return
        self._failures = 0
        self.sent += 1

    def close(self) -> None:
        self._producer.close()
