"""The MQTT source: :class:`MqttSource`, a subscriber with a persistent session, at least once.

MQTT has no offsets to resume from: what the broker keeps for a subscriber is its *session* (its subscriptions, and
the QoS 1 messages not acknowledged yet, including those published while it was away). The source keeps its session
(``clean_session=False``, a fixed ``client_id``) and acknowledges a QoS 1 message only once its samples were learned:
when the loop asks for the next batch, or at the checkpoint after a stop's drain. A message the source received but
did not hand on (a stop, a crash, a lost connection) is therefore sent again by the broker, with the duplicate flag,
when the session resumes. That is *at least once*: a message learned before a ``kill -9`` but after the last
checkpoint is learned by the restored model again only if it was not acknowledged yet, and one acknowledged and
learned after the last checkpoint is in no checkpoint. A SIGTERM loses nothing.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from typing import Any

from connectors.base import Batch
from connectors.batching import BatchingSource
from connectors.counters import RateLimitedLog, Reject
from connectors.decode import DEFAULT_MAX_MESSAGE_BYTES, Decoder
from connectors.mqtt.uri import connect
from connectors.wire import short_repr

__all__ = ["MqttSource"]

_log = logging.getLogger(__name__)

#: Messages received and not yet taken into batches; beyond it the client's network thread waits (and the
#: broker's in-flight window fills), so that a fast publisher cannot grow the source's memory.
QUEUE_MESSAGES = 10_000


class MqttSource(BatchingSource):
    """Samples from MQTT topics (wildcards allowed), in the JSON form or the packed binary form of wire format v1
    (one sample or a batch per message; see :mod:`connectors.wire`), at least once (see the module docstring).

    Endless, not resumable (``position`` is ``None``). Nothing a publisher sends can stop the source: bad messages
    are counted by reason (``rejected:<reason>`` and ``rejected_messages:<reason>``) and acknowledged. A broker
    that goes away is reconnected to by the client, with a pause up to 5 s, counted, never fatal. Counters add
    ``messages``, ``duplicates`` (messages the broker sent again: counted, and learned again), ``acked``,
    ``connects`` and ``disconnects``.

    Parameters
    ----------
    topic : str
        The topic filter subscribed to (``+`` and ``#`` wildcards allowed).
    host, port : str, int
        The broker.
    qos : {0, 1}, default 1
        The subscription's QoS; 1 for at least once (0: at most once, nothing acknowledged).
    client_id : str, default "streammas"
        The session's name: keep it across restarts (the broker keeps the session by it), and give every
        subscriber its own.
    clean_session : bool, default False
        Start a new session at each connect (what was queued while away is then dropped by the broker).
    batch_size, max_latency_ms : int, float
        Micro-batching, as :class:`~connectors.batching.BatchingSource`'s.
    sample_shape : list of int or None, default None
        The samples' shape (``None``: the first samples taken fix it).
    max_message_bytes : int, default 64 MiB
        The largest message taken (a JSON one: an eighth of it).
    check_finite : bool, default True
        Drop (and count) samples holding a NaN or an infinity.
    username, password, tls, tls_ca, keepalive
        The connection (see :func:`connectors.mqtt.uri.connect`).

    Examples
    --------
    tests/test_connectors_mqtt.py runs it against a real broker; without one, nothing fails, the client keeps
    trying to connect in the background:

    >>> with MqttSource("sensors/#", port=1, client_id="doc") as src:
    ...     src.read(timeout=0.05) is None, src.counters["connects"]
    (True, 0)
    """

    @property
    def redelivers(self) -> bool:  # type: ignore[override]
        """At QoS 1, what was not acknowledged comes again with the session; at QoS 0 it is gone."""
        return self.qos > 0

    def __init__(self, topic: str, *, host: str = "127.0.0.1", port: int = 1883, qos: int = 1,
                 client_id: str = "streammas", clean_session: bool = False, batch_size: int = 32,
                 max_latency_ms: float = 50.0, sample_shape: list[int] | tuple[int, ...] | None = None,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, check_finite: bool = True,
                 username: str | None = None, password: str | None = None, tls: bool = False,
                 tls_ca: str | None = None, keepalive: int = 30, name: str | None = None) -> None:
        if qos not in (0, 1):
            raise ValueError(f"qos must be 0 or 1, got {qos!r}")
        super().__init__(name or f"mqtt {host}:{port}/{topic}", batch_size=batch_size, max_latency_ms=max_latency_ms,
                         logger=_log, counter_keys=("messages", "duplicates", "acked", "connects", "disconnects"))
        self.topic, self.qos, self.client_id = topic, qos, client_id
        self._decoder = Decoder(sample_shape, max_message_bytes=max_message_bytes, check_finite=check_finite)
        self._inbox: queue.Queue = queue.Queue(QUEUE_MESSAGES)
        self._pushed = 0  # samples pushed into the batcher so far
        self._unacked: deque[tuple[int, int]] = deque()  # (samples pushed once the message was, its mid), in order
        self._warn = RateLimitedLog(lambda m: _log.warning("%s", m), burst=3, interval=30.0, noun="disconnects")
        self._client = connect(host, port, client_id, clean_session=clean_session, manual_ack=True,
                               username=username, password=password, tls=tls, tls_ca=tls_ca, keepalive=keepalive,
                               on_connect=self._on_connect, on_disconnect=self._on_disconnect,
                               on_message=self._on_message)

    # -- the client's network thread ----------------------------------------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._warn.emit(f"{self.name}: the broker refused the connection ({reason})")
            return
        self._counters.counts["connects"] += 1
        _log.info("%s: connected as %r (session present: %s)", self.name, self.client_id,
                  bool(getattr(flags, "session_present", False)))
        client.subscribe(self.topic, qos=self.qos)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if self._closed:
            return
        self._counters.counts["disconnects"] += 1
        self._warn.emit(f"{self.name}: disconnected ({reason}); reconnecting "
                        f"({self._counters['disconnects']} disconnects so far)")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._inbox.put((message.payload, message.mid, message.qos, message.dup))

    # -- BatchingSource ------------------------------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> Batch | None:
        self._ack_handed()  # the loop asks for more: what it was handed before is learned
        return super().read(timeout)

    def _fill(self, until: float | None) -> None:
        wait = None if until is None else max(0.0, until - time.monotonic())
        try:
            self._take(*self._inbox.get(timeout=wait))
        except queue.Empty:
            return
        while not self._batcher.ready:
            try:
                self._take(*self._inbox.get_nowait())
            except queue.Empty:
                return

    def _drain_input(self, until: float) -> bool:
        # What is still in the inbox is not acknowledged: the broker sends it again to the next session.
        while time.monotonic() < until:
            try:
                self._take(*self._inbox.get_nowait())
            except queue.Empty:
                return True
            if self._batcher.ready:
                return False
        return False

    def forget_sample_shape(self) -> None:
        self._decoder.shape.forget()

    def _take(self, payload: bytes, mid: int, qos: int, dup: bool) -> None:
        counts = self._counters.counts
        counts["messages"] += 1
        if dup:
            counts["duplicates"] += 1
        try:
            decoded = self._decoder.packed(payload)
        except Reject as e:
            self._counters.reject(Reject(e.reason, f"message on {self.topic}: {e.detail}", e.count), piece="messages")
            decoded = None
        except Exception as e:  # what the checks did not foresee must still not stop the source
            self._counters.reject(Reject("decode", f"{type(e).__name__}: {short_repr(str(e))}"), piece="messages")
            decoded = None
        if decoded is not None:
            if decoded.dropped:
                self._counters.reject(Reject("nonfinite", f"{decoded.dropped} samples with NaN or infinity",
                                             decoded.dropped), piece="messages")
            if decoded.x.shape[0]:
                self._push(decoded.x, decoded.y)
                self._pushed += decoded.x.shape[0]
        if qos:
            self._unacked.append((self._pushed, mid))

    # -- acknowledging -------------------------------------------------------------------------------------------
    def _ack_handed(self) -> None:
        handed = self._pushed - self._batcher.pending  # samples handed on in batches
        unacked = self._unacked
        while unacked and unacked[0][0] <= handed:
            self._client.ack(unacked.popleft()[1], 1)
            self._counters.counts["acked"] += 1

    def commit(self, position: dict | None) -> None:
        """Acknowledge every message whose samples were handed on (a checkpoint is written, after them)."""
        if not self._closed:
            self._ack_handed()

    def _release(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
