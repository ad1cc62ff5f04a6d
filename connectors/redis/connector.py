"""The registry's connector for ``redis+stream://`` URIs (see :mod:`connectors.redis.uri` for their form)."""

from __future__ import annotations

from typing import Any

from connectors.options import keyword_defaults
from connectors.redis.sink import RedisStreamSink
from connectors.redis.source import RedisStreamSource
from connectors.redis.uri import parse_uri

__all__ = ["REDIS_STREAM", "RedisStreamConnector"]


class RedisStreamConnector:
    """The registry's connector for ``redis+stream://``: a source (a consumer group's member) and a sink.

    ``open_source`` takes ``rank`` and ``world_size``: worker ``rank`` of a data-parallel run joins the
    consumer group as consumer ``<consumer>-<rank>``, and the broker shares the stream's entries among the
    workers (see :class:`~connectors.redis.RedisStreamSource`).

    Examples
    --------
    >>> REDIS_STREAM.open_source("redis+stream://127.0.0.1:6379/s", batch_size=8, max_latency_ms=5, position=None,
    ...                          rank=1, world_size=2, group="g").consumer
    'streammas-1'
    """

    def open_source(self, uri: str, *, batch_size: int, max_latency_ms: float, position: dict | None,
                    rank: int = 0, world_size: int = 1, **options: Any) -> RedisStreamSource:
        host, port, stream, query = parse_uri(uri)
        options = {**query, **options}
        consumer = f"{options.pop('consumer', 'streammas')}-{rank}"
        return RedisStreamSource(stream, host=host, port=port, consumer=consumer, batch_size=batch_size,
                                 max_latency_ms=max_latency_ms, position=position, **options)

    def source_options(self) -> dict[str, Any]:
        """The options ``open_source`` accepts (the URI gives the host, the port and the stream)."""
        return keyword_defaults(RedisStreamSource, skip=("host", "port", "batch_size", "max_latency_ms", "position",
                                                         "name"))

    def open_sink(self, uri: str, **options: Any) -> RedisStreamSink:
        host, port, stream, query = parse_uri(uri)
        return RedisStreamSink(stream, host=host, port=port, **{**query, **options})


REDIS_STREAM = RedisStreamConnector()
