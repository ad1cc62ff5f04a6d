"""``redis+stream://`` URIs: parsing them, and the client they name.

``redis+stream://HOST:PORT/STREAM`` (the port defaults to 6379), with credentials in the URI
(``redis+stream://user:secret@host:6379/sensors``) or as options, and options as a query string
(``?group=learners&consumer=edge&block_ms=200&batch=256&tls=1&tls_ca=ca.pem``). The stream's name is the
rest of the path, percent-decoded.

(This package is ``connectors.redis``; ``import redis`` in it is the client library, as long as
``connectors/`` itself is never put on ``sys.path``.)
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

from connectors.options import query_options

__all__ = ["connect", "parse_uri"]

DEFAULT_PORT = 6379
_INT_OPTIONS = {"block_ms", "batch", "maxlen", "max_message_bytes", "db"}
_BOOL_OPTIONS = {"tls", "check_finite", "approximate"}
#: Seconds a connection attempt may take: a broker that is away must not hold the loop for long.
CONNECT_TIMEOUT_S = 2.0
#: Seconds a reply may take beyond a blocking read's own wait, before the connection counts as lost.
REPLY_SLACK_S = 10.0


def parse_uri(uri: str) -> tuple[str, int, str, dict[str, Any]]:
    """``(host, port, stream, options)`` of a ``redis+stream://`` URI, query options converted to their types.

    >>> parse_uri("redis+stream://127.0.0.1:6380/sensors?group=g&batch=64&tls=1")
    ('127.0.0.1', 6380, 'sensors', {'group': 'g', 'batch': 64, 'tls': True})
    >>> parse_uri("redis+stream://bob:s3cret@cache/a%2Fb")[2:]
    ('a/b', {'username': 'bob', 'password': 's3cret'})
    """
    parts = urlsplit(uri)
    if not parts.hostname:
        raise ValueError(f"{uri!r} has no host; e.g. redis+stream://127.0.0.1:6379/STREAM")
    stream = unquote(parts.path[1:]) if parts.path.startswith("/") else ""
    if not stream:
        raise ValueError(f"{uri!r} names no stream; e.g. redis+stream://127.0.0.1:6379/STREAM")
    options: dict[str, Any] = {}
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    options.update(query_options(parts.query, _INT_OPTIONS, _BOOL_OPTIONS))
    return parts.hostname, parts.port or DEFAULT_PORT, stream, options


def connect(host: str, port: int, *, username: str | None = None, password: str | None = None, db: int = 0,
            tls: bool = False, tls_ca: str | None = None, block_ms: int = 0) -> Any:
    """A client of the broker (no connection is made until the first command).

    The client's own retries are off: the connectors retry with their own backoff, counted, between batches,
    so that no call holds the loop for longer than :data:`CONNECT_TIMEOUT_S` or a blocking read's wait.
    """
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        raise ImportError("redis+stream:// needs the redis client: pip install 'streammas[redis]'") from None
    extra: dict[str, Any] = {"ssl": True, "ssl_ca_certs": tls_ca} if tls else {}
    return redis.Redis(host=host, port=port, db=db, username=username, password=password,
                       socket_connect_timeout=CONNECT_TIMEOUT_S, socket_timeout=block_ms / 1000.0 + REPLY_SLACK_S,
                       retry=Retry(NoBackoff(), 0), **extra)
