"""The registry's connector for ``mqtt://`` URIs (see :mod:`connectors.mqtt.uri` for their form)."""

from __future__ import annotations

from typing import Any

from connectors.mqtt.sink import MqttSink
from connectors.mqtt.source import MqttSource
from connectors.mqtt.uri import parse_uri
from connectors.options import keyword_defaults

__all__ = ["MQTT", "MqttConnector"]


class MqttConnector:
    """The registry's connector for ``mqtt://``: a subscriber (at least once) and a publishing sink.

    A data-parallel run cannot share one subscriber's session: ``open_source`` refuses more than one worker.

    Examples
    --------
    >>> MQTT.open_source("mqtt://127.0.0.1:1883/sensors/#", batch_size=8, max_latency_ms=5, position=None,
    ...                  rank=1, world_size=2)
    Traceback (most recent call last):
        ...
    ValueError: an mqtt source cannot be shared by 2 workers: ...
    """

    def open_source(self, uri: str, *, batch_size: int, max_latency_ms: float, position: dict | None,
                    rank: int = 0, world_size: int = 1, **options: Any) -> MqttSource:
        if world_size > 1:
            raise ValueError(f"an mqtt source cannot be shared by {world_size} workers: a session belongs to one "
                             "subscriber (use redis+stream:// for a consumer group, or one worker)")
        host, port, topic, query = parse_uri(uri)
        return MqttSource(topic, host=host, port=port, batch_size=batch_size, max_latency_ms=max_latency_ms,
                          **{**query, **options})

    def source_options(self) -> dict[str, Any]:
        """The options ``open_source`` accepts (the URI gives the host, the port and the topic)."""
        return keyword_defaults(MqttSource, skip=("host", "port", "batch_size", "max_latency_ms", "name"))

    def open_sink(self, uri: str, **options: Any) -> MqttSink:
        host, port, topic, query = parse_uri(uri)
        return MqttSink(topic, host=host, port=port, **{**query, **options})


MQTT = MqttConnector()
