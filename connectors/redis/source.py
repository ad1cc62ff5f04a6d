"""The Redis Streams source: :class:`RedisStreamSource`, one consumer of a consumer group, exactly once.

How exactly once works. The source reads with ``XREADGROUP``: the broker hands each entry to one consumer
of the group and keeps it in that consumer's pending list until it is acknowledged (``XACK``). A batch's
position is the id of the last entry it holds (with ``skip``, the samples already taken from an entry a
batch ended inside). The source acknowledges an entry only when :meth:`commit` says that a checkpoint
covering it is on disk. After a crash the consumer's pending list therefore holds everything not yet covered:
at start-up the entries up to the checkpoint's id are acknowledged and skipped, the others read again from the
pending list (in id order) and learned, then new entries.

After the connection to the broker was lost, the source reads its own pending list again from its last entry,
so that entries the broker delivered in a reply that never arrived are not stranded there.
"""

from __future__ import annotations

import logging
import time
from collections import deque

from connectors.batching import BatchingSource
from connectors.counters import RateLimitedLog, Reject
from connectors.decode import DEFAULT_MAX_MESSAGE_BYTES, Decoded, Decoder
from connectors.redis.uri import connect
from connectors.wire import short_repr

__all__ = ["RedisStreamSource", "entry_id"]

_log = logging.getLogger(__name__)

#: The first pause after a failed call to the broker, doubled at each failure in a row up to :data:`MAX_BACKOFF_S`.
FIRST_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
#: Entries acknowledged per ``XACK``.
ACK_CHUNK = 1000


def entry_id(value: str | bytes) -> tuple[int, int]:
    """An entry id as a comparable pair ``(milliseconds, sequence)``.

    >>> entry_id(b"1700000000000-3") < entry_id("1700000000000-12")
    True
    """
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class RedisStreamSource(BatchingSource):
    """Samples from a Redis stream, read as one consumer of a consumer group, learned exactly once.

    An entry holds wire format v1 (:mod:`connectors.wire`): the fields ``header`` (the UTF-8 JSON header)
    and ``payload`` (the raw bytes), with an optional ``labels``; or one field ``json`` with the JSON form.
    Endless (never ``finished``); resumable: hand a batch's ``position`` back to resume right after it, and
    call :meth:`commit` with a position once a checkpoint recording it is durable (see the module docstring).

    Nothing an entry holds can stop the source: bad entries are counted by reason (``rejected:<reason>``, as
    every source counts them) and acknowledged with the others. A broker that goes away is retried with a
    pause that doubles up to :data:`MAX_BACKOFF_S`, counted in ``broker_errors``, never fatal. Counters add
    ``entries`` (taken), ``acked``, ``redelivered`` (read again from the pending list) and ``broker_errors``.

    Parameters
    ----------
    stream : str
        The stream's key.
    host : str, default "127.0.0.1"
        The broker.
    port : int, default 6379
        The broker's port.
    group : str, default "streammas"
        The consumer group, created (with the stream, if need be) when missing.
    consumer : str, default "streammas-0"
        This consumer's name in the group: keep it across restarts, since its pending list is what a restart
        resumes from (the connector names worker ``rank`` ``<consumer>-<rank>``).
    start : str, default "0"
        Where a group created here starts: ``"0"``, every entry the stream holds; ``"$"``, new entries only.
    block_ms : int, default 100
        The longest a read waits for new entries (the source's own ``read(timeout)`` may cut it shorter).
    batch : int, default 256
        Entries asked for per read.
    batch_size, max_latency_ms : int, float
        Micro-batching, as :class:`~connectors.batching.BatchingSource`'s.
    position : dict or None, default None
        Where to resume (a batch's ``position``); ``None``: this consumer's pending entries, then new ones.
    sample_shape : list of int or None, default None
        The samples' shape (``None``: the first samples taken fix it).
    max_message_bytes : int, default 64 MiB
        The largest entry taken (a JSON one: an eighth of it).
    check_finite : bool, default True
        Drop (and count) samples holding a NaN or an infinity.
    username, password : str or None
        Credentials (Redis ACL users, or ``requirepass`` with the password alone).
    tls : bool, default False
        Connect with TLS; ``tls_ca``: the CA file to verify the broker with.
    db : int, default 0
        The database number.
    name : str or None, default None
        The name in logs and counters.

    Examples
    --------
    With a broker (tests/test_connectors_redis.py runs it against a real one)::

        with RedisStreamSource("sensors", port=6379, batch_size=64) as src:
            batch = src.read(timeout=1.0)      # learn it, checkpoint the position, then:
            src.commit(batch.position)         # the entries up to it are acknowledged

    Without one nothing fails: the read is counted and retried later.

    >>> src = RedisStreamSource("s", port=1, block_ms=10)
    >>> src.read(timeout=0.05) is None, src.counters["broker_errors"] >= 1
    (True, True)
    >>> src.close()
    """

    def __init__(self, stream: str, *, host: str = "127.0.0.1", port: int = 6379, group: str = "streammas",
                 consumer: str = "streammas-0", start: str = "0", block_ms: int = 100, batch: int = 256,
                 batch_size: int = 32, max_latency_ms: float = 50.0, position: dict | None = None,
                 sample_shape: list[int] | tuple[int, ...] | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, check_finite: bool = True,
                 username: str | None = None, password: str | None = None, tls: bool = False,
                 tls_ca: str | None = None, db: int = 0, name: str | None = None) -> None:
        if block_ms < 0 or batch < 1:
            raise ValueError("block_ms must be >= 0 and batch >= 1")
        super().__init__(name or f"redis+stream {host}:{port}/{stream}", batch_size=batch_size,
                         max_latency_ms=max_latency_ms, logger=_log,
                         counter_keys=("entries", "acked", "redelivered", "broker_errors"))
        self.stream, self.group, self.consumer, self.start = stream, group, consumer, start
        self._key = stream.encode()
        self._block_ms, self._batch = int(block_ms), int(batch)
        self._decoder = Decoder(sample_shape, max_message_bytes=max_message_bytes, check_finite=check_finite)
        self._client = connect(host, port, username=username, password=password, db=db, tls=tls, tls_ca=tls_ca,
                               block_ms=self._block_ms)
        self._base = {"stream": stream, "group": group, "consumer": consumer}
        self._last, self._skip, self._covered = self._resume_from(position)
        self._cursor = self._last or "0"  # the pending list from there first, then new entries (">")
        self._unacked: deque[bytes] = deque()  # taken, in id order, waiting for a commit that covers them
        self._to_ack: list[bytes] = []  # covered, not acknowledged yet (the broker was away)
        self._ready = False  # the group exists and what the checkpoint covers is acknowledged
        self._failures = 0
        self._retry_at = 0.0
        self._warn = RateLimitedLog(lambda m: _log.warning("%s", m), burst=3, interval=30.0, noun="failures")

    def _resume_from(self, position: dict | None) -> tuple[str | None, int, str | None]:
        """``(last id, samples to skip of the next entry, id the checkpoint covers)`` from a saved position."""
        if not position:
            return None, 0, None
        mine = {k: position.get(k) for k in self._base}
        if mine != self._base:
            _log.warning("%s: the saved position belongs to %s, not to %s; reading this consumer's pending "
                         "entries from the start", self.name, mine, self._base)
            return None, 0, None
        last = position.get("id")
        return last, int(position.get("skip", 0)), last

    # -- BatchingSource ------------------------------------------------------------------------------------------
    def forget_sample_shape(self) -> None:
        self._decoder.shape.forget()

    def _reader_position(self) -> dict | None:
        return {**self._base, "id": self._last}

    def _fill(self, until: float | None) -> None:
        now = time.monotonic()
        if now < self._retry_at:  # backing off: wait out the pause, within the caller's time
            time.sleep(max(0.0, min(self._retry_at, until if until is not None else self._retry_at) - now))
            return
        try:
            if not self._ready:
                self._prepare()
            self._read(until)
        except Exception as e:  # a broker away, restarting, or a group deleted under us: counted, retried
            self._broker_error(e)
            return
        self._failures = 0

    def _read(self, until: float | None) -> None:
        client, batcher = self._client, self._batcher
        first = True
        while first or not batcher.ready:
            block = None
            if self._cursor == ">" and first:
                left = self._block_ms if until is None else int((until - time.monotonic()) * 1000)
                block = min(self._block_ms, left) if left > 0 else None
            reply = client.xreadgroup(self.group, self.consumer, {self._key: self._cursor}, count=self._batch,
                                      block=block)
            entries = reply[0][1] if reply else []
            if not entries:
                if self._cursor == ">":
                    return
                self._cursor = ">"  # the pending list is read: new entries from now on
                continue
            history = self._cursor != ">"
            for ident, fields in entries:
                self._take(ident, fields, history)
            if history:
                self._cursor = self._last
            first = False
            if until is not None and time.monotonic() >= until:  # a flood of bad entries: the caller's time is up
                return

    def _take(self, ident: bytes, fields: dict | None, history: bool) -> None:
        counts = self._counters.counts
        counts["entries"] += 1
        if history:
            counts["redelivered"] += 1
        self._unacked.append(ident)
        before, self._last = self._last, ident.decode()
        skip, self._skip = self._skip, 0
        try:
            decoded = self._decode(fields)
        except Reject as e:
            self._counters.reject(Reject(e.reason, f"entry {self._last}: {e.detail}", e.count), piece="entries")
            return
        except Exception as e:  # what the checks did not foresee must still not stop the source
            self._counters.reject(Reject("decode", f"entry {self._last}: {type(e).__name__}: {short_repr(str(e))}"),
                                  piece="entries")
            return
        if decoded.dropped:
            self._counters.reject(Reject("nonfinite", f"entry {self._last}: {decoded.dropped} samples with NaN or "
                                                      "infinity", decoded.dropped), piece="entries")
        x, y = decoded.x, decoded.y
        if skip:  # learned before the checkpoint this source resumed from
            x, y = x[skip:], None if y is None else y[skip:]
        if x.shape[0]:
            self._push(x, y, start={**self._base, "id": before}, end={**self._base, "id": self._last})

    def _decode(self, fields: dict | None) -> Decoded:
        if not fields:
            raise Reject("trimmed", "deleted or trimmed from the stream before it was learned")
        if b"json" in fields:
            return self._decoder.json(fields[b"json"])
        if b"header" in fields and b"payload" in fields:
            return self._decoder.binary(fields[b"header"], fields[b"payload"], fields.get(b"labels"))
        names = sorted(k.decode(errors="replace") for k in fields)
        raise Reject("fields", f"fields {short_repr(names)}; wire format v1 has header and payload (and labels), "
                               "or json")

    def _prepare(self) -> None:
        """Make the group if it is missing, and acknowledge the pending entries the checkpoint covers."""
        import redis

        try:
            self._client.xgroup_create(self._key, self.group, id=self.start, mkstream=True)
            _log.info("%s: created the consumer group %r at %s", self.name, self.group, self.start)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise
        if self._covered is not None:
            while True:
                pending = self._client.xpending_range(self._key, self.group, "-", self._covered, ACK_CHUNK,
                                                      consumername=self.consumer)
                if not pending:
                    break
                self._ack([p["message_id"] for p in pending])
            self._covered = None
        self._ready = True

    def _broker_error(self, error: Exception) -> None:
        import redis

        self._counters.counts["broker_errors"] += 1
        self._failures += 1
        pause = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + pause
        if isinstance(error, redis.ResponseError) and "NOGROUP" in str(error):
            self._ready = False  # the stream or its group was deleted: made again at the next try
        # Entries delivered in a reply that was lost are in the pending list: read it again from the last one.
        self._cursor = self._last or "0"
        self._warn.emit(f"{self.name}: the broker failed ({type(error).__name__}: {short_repr(str(error))}); "
                        f"retrying in {pause:g} s ({self._counters['broker_errors']} failures so far)")

    # -- acknowledging -------------------------------------------------------------------------------------------
    def commit(self, position: dict | None) -> None:
        """Acknowledge the entries up to ``position`` (a checkpoint recording it is on disk); what the broker
        does not take now is tried again at the next commit."""
        if not position or position.get("id") is None or any(position.get(k) != v for k, v in self._base.items()):
            return
        upto = entry_id(position["id"])
        unacked = self._unacked
        while unacked and entry_id(unacked[0]) <= upto:
            self._to_ack.append(unacked.popleft())
        if not self._to_ack or self._closed:
            return
        try:
            self._ack(self._to_ack)
        except Exception as e:
            self._counters.counts["broker_errors"] += 1
            self._warn.emit(f"{self.name}: could not acknowledge {len(self._to_ack)} entries ({type(e).__name__}: "
                            f"{short_repr(str(e))}); trying again at the next checkpoint")
        else:
            self._to_ack = []

    def _ack(self, ids: list[bytes]) -> None:
        for i in range(0, len(ids), ACK_CHUNK):
            self._client.xack(self._key, self.group, *ids[i:i + ACK_CHUNK])
        self._counters.counts["acked"] += len(ids)

    def _release(self) -> None:
        self._client.close()
