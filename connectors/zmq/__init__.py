"""ZeroMQ connectors: :class:`ZmqSource` (PULL or SUB), :class:`ZmqSink` (PUB) and
:class:`ZmqProducer` (PUSH or PUB, for Python producers), all speaking wire format v1
(:mod:`connectors.wire`).

Modules, one concept each:

- :mod:`connectors.zmq.socket`: addresses, binding, socket options and CurveZMQ set-up
- :mod:`connectors.zmq.source`: :class:`ZmqSource`, zero-copy decoding into micro-batches
- :mod:`connectors.zmq.sink`: :class:`ZmqSink`, scores published on PUB
- :mod:`connectors.zmq.producer`: :class:`ZmqProducer`, samples sent from Python
- :mod:`connectors.zmq.uri`: ``zmq+pull://...`` URIs and the registry's connectors (``PULL``, ``SUB``, ``PUB``)

Curve settings travel as one :class:`~connectors.curve.CurveOptions` (``curve=``); the keywords
``curve_secret_key``, ``curve_server_key`` and ``curve_authorized_keys`` fill one in.

(This package is ``connectors.zmq``; ``import zmq`` in it is pyzmq, as long as ``connectors/`` itself is
never put on ``sys.path``.)

>>> from connectors.registry import open_sink
>>> with open_sink("zmq+pub://127.0.0.1:*") as sink:
...     isinstance(sink, ZmqSink)
True
"""

from __future__ import annotations

from connectors.curve import CurveOptions
from connectors.zmq.producer import ZmqProducer
from connectors.zmq.sink import ZmqSink
from connectors.zmq.socket import ZmqSocket, endpoint, is_loopback
from connectors.zmq.source import DEFAULT_MAX_MESSAGE_BYTES, ZmqSource
from connectors.zmq.uri import PUB, PULL, SUB, ZmqConnector, parse_uri

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "PUB",
    "PULL",
    "SUB",
    "CurveOptions",
    "ZmqConnector",
    "ZmqProducer",
    "ZmqSink",
    "ZmqSocket",
    "ZmqSource",
    "endpoint",
    "is_loopback",
    "parse_uri",
]
