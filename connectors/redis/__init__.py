"""Redis Streams connectors: :class:`RedisStreamSource` (a consumer group's member, exactly once),
:class:`RedisStreamSink` (scores appended, trimmed to a length) and :class:`RedisStreamProducer` (samples
appended, for ``streammas send``), all speaking wire format v1 (:mod:`connectors.wire`) in an entry's fields.

Modules, one concept each:

- :mod:`connectors.redis.uri`: ``redis+stream://HOST:PORT/STREAM`` URIs and the client
- :mod:`connectors.redis.connector`: the registry's connector
- :mod:`connectors.redis.source`: :class:`RedisStreamSource`, and how exactly once works
- :mod:`connectors.redis.sink`: :class:`RedisStreamProducer` and :class:`RedisStreamSink`

The client library is an extra: ``pip install 'streammas[redis]'``.

>>> parse_uri("redis+stream://127.0.0.1/sensors")[:3]
('127.0.0.1', 6379, 'sensors')
"""

from __future__ import annotations

from connectors.redis.connector import REDIS_STREAM, RedisStreamConnector
from connectors.redis.sink import RedisStreamProducer, RedisStreamSink
from connectors.redis.source import RedisStreamSource, entry_id
from connectors.redis.uri import connect, parse_uri

__all__ = [
    "REDIS_STREAM",
    "RedisStreamConnector",
    "RedisStreamProducer",
    "RedisStreamSink",
    "RedisStreamSource",
    "connect",
    "entry_id",
    "parse_uri",
]
