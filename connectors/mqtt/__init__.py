"""MQTT connectors: :class:`MqttSource` (a subscriber with a persistent session, at least once), :class:`MqttSink`
(scores published) and :class:`MqttProducer` (samples published, for ``streammas send``), speaking wire format v1
(:mod:`connectors.wire`): the JSON form, or the packed binary form in one payload.

Modules, one concept each:

- :mod:`connectors.mqtt.uri`: ``mqtt://HOST:PORT/TOPIC`` URIs and the client
- :mod:`connectors.mqtt.source`: :class:`MqttSource`, and what at least once means here
- :mod:`connectors.mqtt.sink`: :class:`MqttProducer` and :class:`MqttSink`
- :mod:`connectors.mqtt.connector`: the registry's connector

The client library is an extra: ``pip install 'streammas[mqtt]'``.

>>> parse_uri("mqtt://127.0.0.1/sensors/#")[1:3]
(1883, 'sensors/#')
"""

from __future__ import annotations

from connectors.mqtt.connector import MQTT, MqttConnector
from connectors.mqtt.sink import MqttProducer, MqttSink
from connectors.mqtt.source import MqttSource
from connectors.mqtt.uri import connect, parse_uri

__all__ = ["MQTT", "MqttConnector", "MqttProducer", "MqttSink", "MqttSource", "connect", "parse_uri"]
