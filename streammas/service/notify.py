"""Telling systemd how the service is doing: the ``sd_notify`` protocol, spoken directly.

Under a unit with ``Type=notify`` systemd hands the service a unix datagram socket in ``$NOTIFY_SOCKET``
(``@name`` is a socket in the abstract namespace) and waits for ``READY=1`` before it counts the service as
started; with ``WatchdogSec=`` it also sets ``$WATCHDOG_USEC`` and restarts the service when no
``WATCHDOG=1`` arrives within that time. Each message is one datagram of ``KEY=value`` lines. Outside
systemd (no ``$NOTIFY_SOCKET``) every call does nothing, so the service needs no switch for it.

The protocol is a handful of lines, so it is written here rather than taken from ``libsystemd`` or a
Python binding: nothing to install, and it works the same in a container without systemd's libraries.
See ``examples/systemd/`` for a unit file.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping

#: The longest a notification may block the loop when systemd is slow to read (seconds).
SEND_TIMEOUT = 0.5


def socket_address(value: str) -> str | bytes:
    """The address ``$NOTIFY_SOCKET`` names: a path, or (``@name``) a name in the abstract namespace.

    >>> socket_address("/run/systemd/notify"), socket_address("@streammas-test")
    ('/run/systemd/notify', b'\\x00streammas-test')
    """
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between two ``WATCHDOG=1`` pings: half the watchdog time that systemd gave
    (``$WATCHDOG_USEC``), as ``sd_watchdog_enabled`` advises; ``None`` when there is no watchdog, or when
    ``$WATCHDOG_PID`` names another process (the watchdog is that one's).

    >>> watchdog_interval({"WATCHDOG_USEC": "30000000"})
    15.0
    >>> watchdog_interval({}) is None, watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, 2)
    (True, None)
    """
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner and owner.isdigit() and int(owner) != (os.getpid() if pid is None else pid):
        return None
    return usec / 2e6


def status_line(status: Mapping[str, object]) -> str:
    """The ``STATUS=`` text for the service's status values (:attr:`Telemetry.status
    <streammas.service.telemetry.Telemetry.status>`).

    >>> status_line({"samples_seen": 12800, "loss": 0.0123, "consolidations": 2, "rejected": 0})
    'learned 12,800 samples, loss 0.0123, 2 consolidations'
    >>> status_line({})
    'learning'
    """
    parts = []
    if isinstance(status.get("samples_seen"), int):
        parts.append(f"learned {status['samples_seen']:,} samples")
    if isinstance(status.get("loss"), float):
        parts.append(f"loss {status['loss']:.4g}")
    if isinstance(status.get("consolidations"), int):
        parts.append(f"{status['consolidations']} consolidations")
    return ", ".join(parts) or "learning"


class SystemdNotifier:
    """Sends ``READY=1``, ``WATCHDOG=1``, ``STOPPING=1`` and ``STATUS=...`` to systemd (when it listens).

    Every method is cheap to call often: without ``$NOTIFY_SOCKET`` it returns at once, :meth:`watchdog`
    sends at most once per :attr:`interval` and :meth:`status` at most once per ``status_every`` seconds. A
    failed send is not an error for the service (systemd restarts a service whose watchdog pings stop, which
    is the right outcome if the socket is really gone); the methods return whether the message went out.

    Parameters
    ----------
    env : Mapping[str, str] or None, default None
        Where ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` are read (``None``: ``os.environ``).
    status_every : float, default 1.0
        The least time between two ``STATUS=`` messages (seconds).
    clock : callable, default time.monotonic
        The clock of the rate limits.

    Attributes
    ----------
    address : str or bytes or None
        The socket address (``None``: not run by systemd with ``Type=notify``; every call does nothing).
    interval : float or None
        Seconds between watchdog pings, half of ``$WATCHDOG_USEC`` (``None``: no watchdog).
    sent : int
        Messages sent so far.

    Examples
    --------
    A socket standing in for systemd's:

    >>> import os, socket, tempfile
    >>> with tempfile.TemporaryDirectory() as d, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
    ...     manager.bind(os.path.join(d, "notify"))
    ...     notifier = SystemdNotifier({"NOTIFY_SOCKET": os.path.join(d, "notify"), "WATCHDOG_USEC": "60000000"})
    ...     notifier.ready(), notifier.watchdog(), notifier.watchdog()  # the second ping is not due yet
    ...     [manager.recv(256).decode() for _ in range(2)]
    (True, True, False)
    ['READY=1', 'WATCHDOG=1']
    >>> notifier.interval
    30.0
    >>> SystemdNotifier({}).ready()  # not under systemd: nothing to do
    False
    """

    def __init__(self, env: Mapping[str, str] | None = None, *, status_every: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        env = os.environ if env is None else env
        raw = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = socket_address(raw) if raw else None
        self.interval = watchdog_interval(env) if self.address is not None else None
        self.status_every = float(status_every)
        self.sent = 0
        self._clock = clock
        self._last_ping: float | None = None
        self._last_status: float | None = None

    @property
    def enabled(self) -> bool:
        """Whether systemd listens (``$NOTIFY_SOCKET`` was set)."""
        return self.address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` (``"KEY=value"`` strings) as one message; whether it went out."""
        if self.address is None or not fields:
            return False
        # One socket per message, as sd_notify does: nothing to close or to keep alive across a fork.
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.settimeout(SEND_TIMEOUT)
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            return False
        self.sent += 1
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1``: start-up is over (and, optionally, a status line)."""
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> bool:
        """``WATCHDOG=1`` if a ping is due (at most once per :attr:`interval`); whether one was sent."""
        if self.interval is None:
            return False
        now = self._clock()
        if self._last_ping is not None and now - self._last_ping < self.interval:
            return False
        sent = self.notify("WATCHDOG=1")
        if sent:  # a failed ping is tried again on the next call, not an interval later
            self._last_ping = now
        return sent

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: the service is shutting down (the checkpoint is being written)."""
        return self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """``STATUS=text`` (what ``systemctl status`` shows), at most once per ``status_every`` seconds."""
        if self.address is None:
            return False
        now = self._clock()
        if self._last_status is not None and now - self._last_status < self.status_every:
            return False
        sent = self.notify(f"STATUS={text.splitlines()[0] if text else ''}")
        if sent:
            self._last_status = now
        return sent
