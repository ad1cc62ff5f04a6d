"""``streammas send --to redis+stream://...`` and ``--to mqtt://...``: the producers that append to a Redis stream
or publish to an MQTT topic, and the loop that sends a source's batches through them (one entry or message per
batch, wire format v1). ``streammas send`` (:mod:`connectors.send`) reads the file, shows the progress and the
summary; this module only knows the brokers.

>>> is_broker("redis+stream://127.0.0.1:6379/rows"), is_broker("mqtt://broker/plant/line-1"), is_broker(":5555")
(True, True, False)
"""

from __future__ import annotations

from typing import Any

from connectors.registry import split_uri

__all__ = ["deliver", "is_broker", "open_producer", "send_batches"]

BROKER_SCHEMES = ("redis+stream", "mqtt")


def is_broker(address: str) -> bool:
    """Whether ``--to`` names a broker (``redis+stream://`` or ``mqtt://``) rather than a ZeroMQ address."""
    try:
        return split_uri(address)[0] in BROKER_SCHEMES
    except ValueError:
        return False


def open_producer(uri: str) -> Any:
    """The producer for a broker URI, its query options applied (``?maxlen=100000``, ``?qos=1``, credentials)."""
    scheme = split_uri(uri)[0]
    if scheme == "redis+stream":
        from connectors.redis import RedisStreamProducer, parse_uri

        host, port, stream, options = parse_uri(uri)
        return RedisStreamProducer(stream, host=host, port=port, **options)
    from connectors.mqtt import MqttProducer
    from connectors.mqtt import parse_uri as parse_mqtt

    host, port, topic, options = parse_mqtt(uri)
    return MqttProducer(topic, host=host, port=port, **options)


def send_batches(source: Any, producer: Any, *, pacer: Any, bar: Any, labels: bool) -> int:
    """Send every batch of ``source`` (paced, counted on the bar); returns the samples sent. A broker that cannot be
    reached raises its client's error (a Redis stream); an MQTT client holds the messages until :func:`deliver`."""
    sent = 0
    for batch in source:
        pacer.wait(len(batch))
        producer.send(batch.x, batch.y if labels else None)
        sent += len(batch)
        bar.update(len(batch))
    return sent


def deliver(producer: Any, linger: float) -> str | None:
    """Wait up to ``linger`` seconds for the broker to take what is still held; ``None``, or what went wrong."""
    flush = getattr(producer, "flush", None)  # a Redis entry is on the broker once XADD returned
    if flush is not None and not flush(timeout=linger):
        return f"the broker did not take every message within --linger ({linger:g} s): not all were delivered"
    if getattr(producer, "dropped", 0):
        return f"{producer.dropped:,} messages were refused (the client's queue was full)"
    return None
