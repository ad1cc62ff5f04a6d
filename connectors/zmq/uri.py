"""``zmq+pull://``, ``zmq+sub://`` and ``zmq+pub://`` URIs: parsing them and the registry's connectors.

``zmq+pull://127.0.0.1:5555``, ``zmq+sub://host:port``, ``zmq+pub://127.0.0.1:5556`` (sink), or with
another transport ``zmq+pull:ipc:///tmp/streammas.sock``; options may also be given as a query string
(``zmq+sub://10.0.0.5:5556?topic=sensors&hwm=50``), Curve key files too
(``?curve_secret_key=keys/server.key_secret``).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qsl

from connectors.zmq.sink import ZmqSink
from connectors.zmq.socket import endpoint
from connectors.zmq.source import ZmqSource

__all__ = ["PUB", "PULL", "SUB", "ZmqConnector", "parse_uri"]

_log = logging.getLogger(__name__)

_INT_OPTIONS = {"hwm", "max_message_bytes", "linger_ms"}
_BOOL_OPTIONS = {"bind", "check_finite"}


def parse_uri(uri: str) -> tuple[str, dict[str, Any]]:
    """``(address, options)`` of a ``zmq+...`` URI (query-string options converted to their types).

    >>> parse_uri("zmq+sub://10.0.0.5:5556?topic=sensors&bind=0")
    ('tcp://10.0.0.5:5556', {'topic': 'sensors', 'bind': False})
    >>> parse_uri("zmq+pull:ipc:///tmp/s.sock")[0]
    'ipc:///tmp/s.sock'
    """
    rest = uri.split(":", 1)[1]
    rest, _, query = rest.partition("?")
    address = rest[2:] if rest.startswith("//") else rest
    if not address:
        raise ValueError(f"{uri!r} has no address; e.g. zmq+pull://127.0.0.1:5555")
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in _INT_OPTIONS:
            options[key] = int(value)
        elif key in _BOOL_OPTIONS:
            options[key] = value.lower() in ("1", "true", "yes", "on")
        elif key == "sample_shape":
            options[key] = [int(d) for d in value.split(",") if d]
        else:
            options[key] = value
    return endpoint(address), options


class ZmqConnector:
    """The registry's connector for one ZeroMQ scheme (``zmq+pull``, ``zmq+sub``, ``zmq+pub``).

    :meth:`open_source` opens a :class:`~connectors.zmq.ZmqSource`, :meth:`open_sink` a
    :class:`~connectors.zmq.ZmqSink`, with the URI's query-string options (see :func:`parse_uri`).

    Parameters
    ----------
    pattern : {"pull", "sub", "pub"}
        ``"pull"``, ``"sub"`` (sources) or ``"pub"`` (a sink).

    Examples
    --------
    >>> with PUB.open_sink("zmq+pub://127.0.0.1:*?hwm=10") as sink:
    ...     sink.address.startswith("tcp://127.0.0.1:")
    True
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def open_source(
        self, uri: str, *, batch_size: int, max_latency_ms: float, position: dict | None, **options: Any
    ) -> ZmqSource:
        if self.pattern == "pub":
            raise ValueError("zmq+pub is a sink; read a publisher with zmq+sub://host:port")
        address, query = parse_uri(uri)
        if position is not None:
            _log.debug("%s: a ZeroMQ source cannot resume; ignoring the saved position", uri)
        return ZmqSource(
            address, self.pattern, batch_size=batch_size, max_latency_ms=max_latency_ms, **{**query, **options}
        )

    def open_sink(self, uri: str, **options: Any) -> ZmqSink:
        if self.pattern != "pub":
            raise ValueError(f"zmq+{self.pattern} is a source; publish results with zmq+pub://host:port")
        address, query = parse_uri(uri)
        return ZmqSink(address, **{**query, **options})


PULL = ZmqConnector("pull")
SUB = ZmqConnector("sub")
PUB = ZmqConnector("pub")
