"""Publishing to MQTT: :class:`MqttProducer` (samples, for ``streammas send``) and :class:`MqttSink` (each batch's
scores, for dashboards and alerting rules), both in the packed binary form of wire format v1."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from connectors.base import Batch, Sink
from connectors.mqtt.uri import connect
from connectors.records import check_scores, split_extra
from connectors.wire import encode_packed

__all__ = ["MqttProducer", "MqttSink"]

#: Messages the client holds while the broker is away (or slow); beyond it a publish fails and is counted.
DEFAULT_MAX_QUEUED = 10_000


class MqttProducer:
    """Publishes samples to an MQTT topic, one message per call, in the packed binary form of wire format v1
    (the header, a newline, the payload and the labels), which :class:`~connectors.mqtt.MqttSource` reads.

    The client connects in the background and holds up to ``max_queued`` messages while the broker is away;
    :meth:`flush` waits until the broker has taken (QoS 1: acknowledged) every message published.

    Parameters
    ----------
    topic : str
        The topic published to (no wildcards).
    host, port : str, int
        The broker.
    qos : {0, 1}, default 1
        The messages' QoS.
    retain : bool, default False
        Ask the broker to keep the last message for new subscribers.
    client_id : str, default ""
        The client's name (``""``: one the broker makes up; the producer's session is clean).
    max_queued : int, default DEFAULT_MAX_QUEUED
        Messages held for the broker at most; a publish beyond it is counted in ``dropped``.
    **client
        ``username``, ``password``, ``tls``, ``tls_ca``, ``keepalive`` (see :func:`connectors.mqtt.uri.connect`).

    Examples
    --------
    tests/test_connectors_mqtt.py runs it against a real broker; without one, the client holds the message:

    >>> with MqttProducer("sensors/line-1", port=1) as producer:
    ...     producer.send(np.zeros((64, 8), np.float32)), producer.flush(timeout=0.05), producer.sent
    (True, False, 1)
    """

    def __init__(self, topic: str, *, host: str = "127.0.0.1", port: int = 1883, qos: int = 1, retain: bool = False,
                 client_id: str = "", max_queued: int = DEFAULT_MAX_QUEUED, **client: Any) -> None:
        if qos not in (0, 1, 2) or any(c in topic for c in "+#"):
            raise ValueError(f"publish to a topic without wildcards with qos 0, 1 or 2 (got {topic!r}, qos {qos!r})")
        self.topic, self.qos, self.retain = topic, qos, bool(retain)
        self.address = f"mqtt://{host}:{port}/{topic}"
        self._client = connect(host, port, client_id, clean_session=True, max_queued=max_queued, **client)
        self._published = 0  # messages the broker took (QoS 1: acknowledged), counted by the network thread
        self._lock = threading.Lock()
        self._client.on_publish = self._on_publish
        #: Messages handed to the client, and messages it refused (its queue was full).
        self.sent = 0
        self.dropped = 0

    def send(self, x: np.ndarray, y: np.ndarray | None = None, **fields: object) -> bool:
        """Publish one message holding ``x`` (``[B, ...]``) and the optional labels ``y``; returns whether the client
        took it (``False``, counted in ``dropped``, when its queue is full)."""
        return self.publish(encode_packed(x, y, **fields))

    def publish(self, payload: bytes) -> bool:
        info = self._client.publish(self.topic, payload, qos=self.qos, retain=self.retain)
        if info.rc not in (0, 4):  # 4: not connected yet, queued for when it is
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._lock:
            self._published += 1

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every message published was taken by the broker; returns whether all were in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._published < self.sent:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> MqttProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class MqttSink(Sink):
    """Publishes each batch's scores to an MQTT topic, one message per batch, in the packed binary form.

    The scores are the payload (float32, ``[B]``), the labels ride along when the batch has them, and the header
    adds ``"kind": "scores"``, ``"seq"``, ``"position"`` and ``"extra"``, as the other sinks' do. An ``mqtt://``
    source with ``sample_shape=[]`` reads them back. Nothing blocks the learning: while the broker is away the
    client holds up to ``max_queued`` messages, and the records of a batch it cannot hold are counted in
    ``dropped`` (the service counts them as lost).

    Parameters
    ----------
    topic : str
        The topic published to.
    host, port : str, int
        The broker.
    qos : {0, 1}, default 1
        The messages' QoS.
    linger : float, default 5.0
        Seconds :meth:`close` waits for the broker to take what is still queued.
    **options
        ``retain``, ``client_id``, ``max_queued`` and the connection's (see :class:`MqttProducer`).

    Examples
    --------
    Without a broker, the client holds the messages for when one comes:

    >>> with MqttSink("scores", port=1, linger=0) as sink:
    ...     sink.write(Batch(np.zeros((2, 3), dtype=np.float32)), np.array([0.1, 0.2]))
    ...     sink.sent, sink.dropped
    (1, 0)
    """

    def __init__(self, topic: str, *, host: str = "127.0.0.1", port: int = 1883, qos: int = 1, linger: float = 5.0,
                 **options: Any) -> None:
        self.linger = float(linger)
        self._producer = MqttProducer(topic, host=host, port=port, qos=qos, **options)
        self.address = self._producer.address
        self._seq = 0
        self.dropped = 0

    @property
    def sent(self) -> int:
        return self._producer.sent

    def write(self, batch: Batch, scores: np.ndarray, extra: dict | None = None) -> None:
        values = check_scores(batch, scores).astype(np.float32)
        per_sample, per_batch = split_extra(extra, len(values))
        fields: dict[str, Any] = {"kind": "scores", "seq": self._seq}
        self._seq += len(values)
        if batch.position is not None:
            fields["position"] = batch.position
        if per_sample or per_batch:
            fields["extra"] = {**per_sample, **per_batch}
        if not self._producer.send(values, batch.y, **fields):
            self.dropped += len(values)

    def close(self) -> None:
        self._producer.flush(timeout=self.linger)  # what the broker can still take now
        self._producer.close()
