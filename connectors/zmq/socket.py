"""One ZeroMQ socket set up for a connector: the address, binding or connecting, options and CurveZMQ.

Addresses: ``tcp://host:port`` (``host:port`` and ``:port`` work; the host defaults to 127.0.0.1, and
binding anywhere but the loopback interface without CurveZMQ logs a warning), ``ipc://path``,
``inproc://name``; ``tcp://127.0.0.1:*`` binds a free port (see :attr:`ZmqSocket.address`).
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import zmq

from connectors.curve import CurveOptions, configure

__all__ = ["ZmqSocket", "endpoint", "is_loopback", "topic_frame"]

_log = logging.getLogger(__name__)

def endpoint(address: str) -> str:
    """A ZeroMQ endpoint from an address; bare ``host:port`` means TCP, a missing host 127.0.0.1.

    >>> endpoint("5555"), endpoint(":5555"), endpoint("10.0.0.2:5555"), endpoint("ipc:///tmp/s")
    ('tcp://127.0.0.1:5555', 'tcp://127.0.0.1:5555', 'tcp://10.0.0.2:5555', 'ipc:///tmp/s')
    >>> endpoint("127.0.0.1:55555555")
    Traceback (most recent call last):
        ...
    ValueError: tcp://127.0.0.1:55555555: '55555555' is not a TCP port (0 to 65535, or * for any free one)
    """
    if "://" not in address:
        host, _, port = address.rpartition(":")
        address = f"tcp://{host or '127.0.0.1'}:{port}"
    if address.startswith("tcp://"):
        port = address.rpartition(":")[2]
        if port != "*" and not (port.isdigit() and int(port) <= 65535):
            raise ValueError(f"{address}: {port!r} is not a TCP port (0 to 65535, or * for any free one)")
    return address


def is_loopback(address: str) -> bool:
    """Whether an endpoint stays on this machine (the loopback interface, ``ipc://``, ``inproc://``): the host
    is a loopback IP address or exactly ``localhost``, never a name that merely starts like one.

    >>> is_loopback("tcp://127.0.0.1:5555"), is_loopback("ipc:///tmp/s"), is_loopback("tcp://0.0.0.0:5555")
    (True, True, False)
    >>> is_loopback("tcp://[::1]:5555"), is_loopback("tcp://localhost:1"), is_loopback("tcp://localhost.example.com:1")
    (True, True, False)
    """
    if not address.startswith("tcp://"):
        return True  # ipc and inproc never leave the machine
    host = address[len("tcp://") :].rpartition(":")[0]
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name, or an interface: it may reach beyond this machine
        return False


def topic_frame(topic: str | bytes | None) -> bytes | None:
    """The topic frame of a PUB/SUB stream (``None``: no topic, every message).

    >>> topic_frame("sensors"), topic_frame(""), topic_frame(None)
    (b'sensors', None, None)
    """
    if topic is None or topic in ("", b""):
        return None
    return topic.encode() if isinstance(topic, str) else bytes(topic)


class ZmqSocket:
    """One socket with its context and optional Curve authenticator; owns what it created.

    Parameters
    ----------
    kind : int
        The socket type (``zmq.PULL``, ``zmq.SUB``, ``zmq.PUB``, ``zmq.PUSH``).
    address : str
        Where to bind or connect (see :func:`endpoint`).
    bind : bool
        Bind (``True``) or connect.
    curve : CurveOptions
        CurveZMQ settings (``CurveOptions()``: none).
    context : zmq.Context or None
        A context to share (``None``: the socket makes and terminates its own).
    options : dict
        Socket options set before binding or connecting (``{zmq.LINGER: 0, ...}``).
    monitor : int, default 0
        ``zmq.EVENT_*`` flags to report on :attr:`monitor`, a PAIR socket that receives them (0: no monitor).
        It is attached before binding or connecting, so that the first connection's events are not missed.

    Examples
    --------
    >>> sock = ZmqSocket(zmq.PULL, "tcp://127.0.0.1:*", True, curve=CurveOptions(), context=None,
    ...                  options={zmq.LINGER: 0})
    >>> sock.address.startswith("tcp://127.0.0.1:")
    True
    >>> sock.close(0)
    >>> sock.socket is None
    True
    """

    def __init__(
        self,
        kind: int,
        address: str,
        bind: bool,
        *,
        curve: CurveOptions,
        context: zmq.Context | None,
        options: dict[int, Any],
        monitor: int = 0,
    ) -> None:
        self.address = endpoint(address)
        self.bind = bind
        self._owns_context = context is None
        self.context = zmq.Context() if context is None else context
        self.socket = self.context.socket(kind)
        self.auth = None
        self.monitor = None
        try:
            if monitor:
                self.monitor = self.socket.get_monitor_socket(monitor)
            for opt, value in options.items():
                self.socket.setsockopt(opt, value)
            if "[" in self.address:
                self.socket.ipv6 = True
            self.auth = configure(self.socket, self.context, curve)
            if bind:
                if not curve.enabled and not is_loopback(self.address):
                    _log.warning(
                        "%s: unauthenticated ZeroMQ socket bound beyond the loopback interface; anyone who "
                        "can reach it can send to it (set curve_secret_key to require keys)",
                        self.address,
                    )
                self.socket.bind(self.address)
                self.address = self.socket.last_endpoint.decode()
            else:
                self.socket.connect(self.address)
        except BaseException:
            self.close(0)
            raise

    def close(self, linger_ms: int) -> None:
        """Close the socket (waiting up to ``linger_ms`` for queued messages), the authenticator, and the
        context if this object made it. Idempotent."""
        if self.monitor is not None:
            self.socket.disable_monitor()
            self.monitor.close(linger=0)
            self.monitor = None
        if self.socket is not None:
            self.socket.close(linger=linger_ms)
            self.socket = None
        if self.auth is not None:
            self.auth.stop()
            self.auth = None
        if self._owns_context and self.context is not None:
            self.context.term()
            self.context = None
