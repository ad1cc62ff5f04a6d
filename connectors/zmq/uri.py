"""``zmq+pull://``, ``zmq+sub://`` and ``zmq+pub://`` URIs: parsing them and the registry's connectors.

``zmq+pull://127.0.0.1:5555``, ``zmq+sub://host:port``, ``zmq+pub://127.0.0.1:5556`` (sink), or with
another transport ``zmq+pull:ipc:///tmp/streammas.sock``; options may also be given as a query string
(``zmq+sub://10.0.0.5:5556?topic=sensors&hwm=50``), Curve key files too
(``?curve_secret_key=keys/server.key_secret``).

In a data-parallel run of ``world_size`` workers (``open_source(uri, shard=(rank, world_size))``), worker
``rank`` of a binding ``zmq+pull`` source binds the configured port plus ``rank`` (``ipc://`` and
``inproc://`` names get the suffix ``.rank``; a port ``*`` or ``0`` stays a free one), so that producers
connect to every worker's port and ZeroMQ spreads their messages round-robin (``streammas send --to``
takes several addresses). A ``zmq+pull`` source that connects (``bind=0``) keeps its address: a binding
PUSH producer spreads its messages among the workers connected to it. A ``zmq+sub`` source cannot be
split, since every subscriber receives every message: it is refused for more than one worker.
"""

from __future__ import annotations

import logging
from typing import Any

from connectors.curve import KEYWORDS as CURVE_KEYWORDS
from connectors.options import keyword_defaults, query_options
from connectors.zmq.sink import ZmqSink
from connectors.zmq.socket import endpoint
from connectors.zmq.source import ZmqSource

__all__ = ["PUB", "PULL", "SUB", "ZmqConnector", "parse_uri", "worker_address"]

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
    options.update(query_options(query, _INT_OPTIONS, _BOOL_OPTIONS))
    return endpoint(address), options


def worker_address(address: str, rank: int) -> str:
    """The address worker ``rank`` binds in place of ``address``: the port plus ``rank``, or a ``.rank``
    suffix on an ``ipc://`` or ``inproc://`` name; a free port (``*`` or ``0``) is left to the system.

    >>> worker_address("tcp://127.0.0.1:5555", 2), worker_address("tcp://127.0.0.1:*", 2)
    ('tcp://127.0.0.1:5557', 'tcp://127.0.0.1:*')
    >>> worker_address("ipc:///tmp/s.sock", 1), worker_address("tcp://[::1]:5555", 0)
    ('ipc:///tmp/s.sock.1', 'tcp://[::1]:5555')
    """
    if rank == 0:
        return address
    transport, sep, rest = address.partition("://")
    if transport in ("ipc", "inproc"):
        return f"{address}.{rank}"
    host, colon, port = rest.rpartition(":")
    if not colon or port in ("*", "0"):
        return address
    if not port.isdigit():
        raise ValueError(f"cannot give worker {rank} a port of its own: {address!r} has no numeric port")
    if int(port) + rank > 65535:
        raise ValueError(f"worker {rank} would bind port {int(port) + rank} of {address!r}, beyond 65535")
    return f"{transport}{sep}{host}:{int(port) + rank}"


class ZmqConnector:
    """The registry's connector for one ZeroMQ scheme (``zmq+pull``, ``zmq+sub``, ``zmq+pub``).

    :meth:`open_source` opens a :class:`~connectors.zmq.ZmqSource`, :meth:`open_sink` a
    :class:`~connectors.zmq.ZmqSink`, with the URI's query-string options (see :func:`parse_uri`).
    ``open_source`` takes ``rank`` and ``world_size`` (see the module docstring): worker ``rank`` of a
    binding PULL source binds the configured port plus ``rank``; a SUB source is refused for more than
    one worker.

    Parameters
    ----------
    pattern : {"pull", "sub", "pub"}
        ``"pull"``, ``"sub"`` (sources) or ``"pub"`` (a sink).

    Examples
    --------
    >>> with PUB.open_sink("zmq+pub://127.0.0.1:*?hwm=10") as sink:
    ...     sink.address.startswith("tcp://127.0.0.1:")
    True
    >>> PUB.sink_options()
    {'bind': True, 'topic': None, 'hwm': 1000, 'curve_secret_key': None, 'curve_server_key': None, \
'curve_authorized_keys': None}
    >>> SUB.open_source("zmq+sub://127.0.0.1:5556", batch_size=8, max_latency_ms=5, position=None,
    ...                 rank=1, world_size=2)
    Traceback (most recent call last):
        ...
    ValueError: a zmq+sub source cannot be shared by 2 workers: every subscriber receives every message ...
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern

    def open_source(
        self,
        uri: str,
        *,
        batch_size: int,
        max_latency_ms: float,
        position: dict | None,
        rank: int = 0,
        world_size: int = 1,
        **options: Any,
    ) -> ZmqSource:
        if self.pattern == "pub":
            raise ValueError("zmq+pub is a sink; read a publisher with zmq+sub://host:port")
        address, query = parse_uri(uri)
        options = {**query, **options}
        if world_size > 1:
            if self.pattern == "sub":
                raise ValueError(
                    f"a zmq+sub source cannot be shared by {world_size} workers: every subscriber receives every "
                    "message (use zmq+pull, one port per worker)"
                )
            if options.get("bind") in (None, True):  # a PULL source binds unless told not to
                address = worker_address(address, rank)
        if position is not None:
            _log.debug("%s: a ZeroMQ source cannot resume; ignoring the saved position", uri)
        return ZmqSource(address, self.pattern, batch_size=batch_size, max_latency_ms=max_latency_ms, **options)

    def source_options(self) -> dict[str, Any] | None:
        """The options ``open_source`` accepts, with their defaults (``None`` for ``zmq+pub``, a sink)."""
        if self.pattern == "pub":
            return None
        skip = ("address", "pattern", "batch_size", "max_latency_ms", "curve", "context", "name")
        # its **curve_keys are the Curve keywords, not its base class's arguments
        return {**keyword_defaults(ZmqSource, skip=skip, inherited=False), **dict.fromkeys(CURVE_KEYWORDS)}

    def sink_options(self) -> dict[str, Any] | None:
        """The options ``open_sink`` accepts, with their defaults (``None`` for the sources)."""
        if self.pattern != "pub":
            return None
        skip = ("address", "curve", "context")
        return {**keyword_defaults(ZmqSink, skip=skip, inherited=False), **dict.fromkeys(CURVE_KEYWORDS)}

    def open_sink(self, uri: str, **options: Any) -> ZmqSink:
        if self.pattern != "pub":
            raise ValueError(f"zmq+{self.pattern} is a source; publish results with zmq+pub://host:port")
        address, query = parse_uri(uri)
        return ZmqSink(address, **{**query, **options})


PULL = ZmqConnector("pull")
SUB = ZmqConnector("sub")
PUB = ZmqConnector("pub")
