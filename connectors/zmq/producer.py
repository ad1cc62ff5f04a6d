"""The Python producer: :class:`ZmqProducer` sends samples in wire format v1 over PUSH or PUB."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from connectors.curve import CurveOptions
from connectors.wire import encode, encode_json
from connectors.zmq.socket import ZmqSocket, endpoint, topic_frame

__all__ = ["ZmqProducer"]

#: The monitor events that tell whether a receiver is there: a TCP connection (which can be anything: a peer
#: of the wrong socket type, not ZeroMQ at all), the ZeroMQ handshake that proves it is a receiver, the
#: ways a handshake fails, and the end of a connection.
_PEER_EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED
                | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)

_REFUSALS = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the peer refused this client's CurveZMQ key",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the ZeroMQ handshake failed (a protocol error)",
}
_NO_HANDSHAKE = ("a peer took the connection but did not complete the ZeroMQ handshake (not a PULL or SUB "
                 "socket, not ZeroMQ, or a CurveZMQ setting that does not match)")


class ZmqProducer:
    """Sends samples in wire format v1 from Python, over PUSH or PUB.

    PUSH connects by default, to a PULL source; PUB binds by default, and SUB sources connect to it.
    ``send`` blocks while the receiver's and this socket's queues (``hwm`` messages each) are full,
    which is how a slow consumer slows a producer down. ZeroMQ queues what is sent before a receiver is
    there without a word (and PUB drops it), so :meth:`wait_for_peer` says whether one has connected.

    Several addresses make one socket connected (or bound) to all of them: a PUSH socket then hands its
    messages to their receivers in turn (round-robin; the workers of a data-parallel run, one port each),
    a message queued for one until it connects, and :meth:`wait_for_peers` says which have not connected.

    Parameters
    ----------
    address : str or sequence of str, default "tcp://127.0.0.1:5555"
        Where to connect or bind (see :func:`connectors.zmq.socket.endpoint`); several addresses, one
        socket.
    pattern : {"push", "pub"}, default "push"
        ``"push"`` or ``"pub"``.
    bind : bool or None, default None
        Bind or connect (``None``: PUSH connects, PUB binds).
    topic : str, bytes or None, default None
        (PUB) A first frame on every message, for topic-filtered subscribers.
    hwm : int, default 1000
        The send queue, in messages.
    linger_ms : int, default 30000
        How long ``close`` waits for queued messages to leave (``-1``: as long as it takes).
    send_timeout : float or None, default None
        Seconds a blocked ``send`` waits before raising ``TimeoutError`` (``None``: for ever).
    curve : CurveOptions or None, default None
        CurveZMQ settings, as :class:`~connectors.zmq.ZmqSource`'s.
    context : zmq.Context or None, default None
        A ZeroMQ context to share (``None``: one of its own).
    **curve_keys
        ``curve_secret_key``, ``curve_server_key``, ``curve_authorized_keys``: the fields of ``curve``
        as URI query strings and ``streammas send`` spell them.

    Examples
    --------
    >>> from connectors.zmq import ZmqSource
    >>> with ZmqSource("tcp://127.0.0.1:*", batch_size=8, max_latency_ms=1) as src:
    ...     with ZmqProducer(src.address) as producer:
    ...         producer.send(np.zeros((2, 3), dtype=np.float64))
    ...         producer.send_json([1.0, 2.0, 3.0])
    ...     got = 0
    ...     while got < 3:  # one batch, or two if the latency flush came in between
    ...         got += len(src.read(timeout=10))
    >>> producer.sent, got
    (2, 3)
    >>> with ZmqProducer("tcp://127.0.0.1:1", linger_ms=0) as lonely:  # nobody listens on port 1
    ...     lonely.wait_for_peer(0.2)
    False

    Two receivers take the messages in turn; an address nobody listens on is named:

    >>> pair = [ZmqSource("tcp://127.0.0.1:*", batch_size=2, max_latency_ms=10_000) for _ in range(2)]
    >>> with ZmqProducer([src.address for src in pair]) as producer:
    ...     missing = producer.wait_for_peers(10)
    ...     for k in range(4):
    ...         producer.send(np.full((1, 2), k, dtype=np.float32))
    >>> missing, [src.read(timeout=10).x[:, 0].tolist() for src in pair]
    ([], [[0.0, 2.0], [1.0, 3.0]])
    >>> for src in pair:
    ...     src.close()
    >>> with ZmqProducer(["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"], linger_ms=0) as lonely:
    ...     lonely.wait_for_peers(0.2)
    ['tcp://127.0.0.1:1', 'tcp://127.0.0.1:2']
    """

    def __init__(
        self,
        address: str | Sequence[str] = "tcp://127.0.0.1:5555",
        pattern: str = "push",
        bind: bool | None = None,
        *,
        topic: str | bytes | None = None,
        hwm: int = 1000,
        linger_ms: int = 30_000,
        send_timeout: float | None = None,
        curve: CurveOptions | None = None,
        context: zmq.Context | None = None,
        **curve_keys: str | None,
    ) -> None:
        curve = CurveOptions.from_keywords(curve, curve_keys, type(self).__name__)
        if pattern not in ("push", "pub"):
            raise ValueError(f"pattern must be 'push' or 'pub', got {pattern!r}")
        self._topic = topic_frame(topic)
        if self._topic is not None and pattern != "pub":
            raise ValueError("topic is for pattern='pub'")
        self._linger = int(linger_ms)
        options: dict[int, Any] = {zmq.SNDHWM: int(hwm), zmq.LINGER: self._linger}
        if send_timeout is not None:
            options[zmq.SNDTIMEO] = max(0, int(send_timeout * 1000))
        addresses = [address] if isinstance(address, str) else list(address)
        if not addresses:
            raise ValueError("a producer needs at least one address")
        binds = pattern == "pub" if bind is None else bool(bind)
        self._sock = ZmqSocket(
            zmq.PUSH if pattern == "push" else zmq.PUB,
            addresses[0],
            binds,
            curve=curve,
            context=context,
            options=options,
            monitor=_PEER_EVENTS,
        )
        #: Every endpoint bound or connected to, in the order given (the real ports of ``*`` binds).
        self.addresses = [self._sock.address]
        try:
            for extra in addresses[1:]:
                # The same socket: its options and Curve keys hold for every endpoint.
                socket = self._sock.socket
                if binds:
                    socket.bind(endpoint(extra))
                    self.addresses.append(socket.last_endpoint.decode())
                else:
                    socket.connect(endpoint(extra))
                    self.addresses.append(endpoint(extra))
        except BaseException:
            self._sock.close(0)
            raise
        self.sent = 0
        # Per endpoint: peers with the handshake done, TCP connections whose handshake has not completed
        # yet, and whether it ever had a peer (what was queued for it has been handed over).
        self._peers = dict.fromkeys(self.addresses, 0)
        self._unproven = dict.fromkeys(self.addresses, 0)
        self._seen: set[str] = set()
        self._failed = False
        #: Why the last handshake with a peer failed (``None``: none failed).
        self.refused: str | None = None

    @property
    def address(self) -> str:
        """The endpoint bound or connected to (the real port when bound to ``*``)."""
        return self._sock.address

    @property
    def peers(self) -> int:
        """Peers connected now, with the ZeroMQ handshake completed (a PUSH connects to one receiver per
        address)."""
        self._read_events(0)
        return sum(self._peers.values())

    def without_peer(self) -> list[str]:
        """The addresses that have no peer connected now, in the order given."""
        self._read_events(0)
        return [a for a in self.addresses if not self._peers[a]]

    def never_connected(self) -> list[str]:
        """The addresses that have never had a peer, in the order given: what was queued for them is
        still waiting."""
        self._read_events(0)
        return [a for a in self.addresses if a not in self._seen]

    def wait_for_peers(self, timeout: float) -> list[str]:
        """Wait up to ``timeout`` seconds until every address has had a peer; those that have not.

        A PUSH socket queues every receiver's turn of the messages, a missing one's too, so messages wait
        for an address in this list until a receiver connects there (or the producer closes).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while missing := self.never_connected():
            left = deadline - time.monotonic()
            if left <= 0:
                return missing
            self._read_events(left)
        return []

    def disconnect(self, address: str) -> None:
        """Stop sending to ``address`` (one of :attr:`addresses`), dropping what is queued for it, so that
        closing does not wait for a receiver that never came."""
        if self._sock.socket is not None:
            if self._sock.bind:
                self._sock.socket.unbind(address)
            else:
                self._sock.socket.disconnect(address)

    def wait_for_peer(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until a peer is connected; whether one is.

        Messages sent before then are queued (PUSH) or dropped (PUB); a receiver that never comes means
        nothing is delivered. A failed handshake (a peer of the wrong socket type, a Curve key it refuses)
        is recorded in :attr:`refused`.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        while self.peers == 0:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._read_events(left)
        return True

    def _read_events(self, timeout: float) -> None:
        monitor = self._sock.monitor
        if monitor is None:
            return
        wait_ms = int(timeout * 1000)
        while monitor.poll(wait_ms):
            message = recv_monitor_message(monitor)
            event = message["event"]
            where = self._address_of(message.get("endpoint"))
            if event in (zmq.EVENT_CONNECTED, zmq.EVENT_ACCEPTED):
                self._unproven[where] = self._unproven.get(where, 0) + 1
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._unproven[where] = max(0, self._unproven.get(where, 0) - 1)
                self._peers[where] = self._peers.get(where, 0) + 1
                self._seen.add(where)
            elif event == zmq.EVENT_DISCONNECTED:
                if self._unproven.get(where):  # the connection ended before its handshake completed
                    self._unproven[where] -= 1
                    if not self._failed:  # a failure event named the reason already
                        self.refused = _NO_HANDSHAKE
                    self._failed = False
                else:
                    self._peers[where] = max(0, self._peers.get(where, 0) - 1)
            else:
                self.refused = _REFUSALS.get(event, "the ZeroMQ handshake failed")
                self._failed = True
            wait_ms = 0

    def _address_of(self, raw: bytes | None) -> str:
        """Which of :attr:`addresses` a monitor event is about (libzmq names the endpoint as it was
        connected to, or as bound); an unknown name with a single address is that address."""
        name = raw.decode(errors="replace") if raw else ""
        if name in self._peers or len(self.addresses) > 1:
            return name
        return self.addresses[0]

    def send(self, x: np.ndarray, y: np.ndarray | None = None, **fields: Any) -> None:
        """Send ``x`` (``[B, ...]``) and optional labels ``y`` (``[B]``) as one binary message."""
        self.send_frames(encode(x, y, **fields))

    def send_json(self, x: Any, y: Any = None) -> None:
        """Send the single-frame JSON form (the slow path; for tests and tiny rates)."""
        self.send_frames([encode_json(x, y)])

    def send_frames(self, frames: list) -> None:
        """Send raw frames as one message (the topic frame is added on a topic-filtered PUB)."""
        if self._sock.socket is None:
            raise ValueError("send on a closed producer")
        if self._topic is not None:
            frames = [self._topic, *frames]
        try:
            self._sock.socket.send_multipart(frames)
        except zmq.Again:
            raise TimeoutError(f"{self.address}: the receiver is not taking messages") from None
        self.sent += 1

    def close(self, linger_ms: int | None = None) -> None:
        self._sock.close(self._linger if linger_ms is None else int(linger_ms))

    def __enter__(self) -> ZmqProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
