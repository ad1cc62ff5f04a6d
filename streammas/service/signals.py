"""Signal handling: SIGTERM and SIGINT ask the service to stop (after the current batch, with a checkpoint);
SIGHUP asks for a checkpoint now.

A handler runs between two bytecodes of the main thread, possibly inside another handler or inside a lock
that the main thread holds, so it must do nothing that can block: no logging, no ``threading.Event.set``
(whose lock is not re-entrant; a storm of SIGHUPs once deadlocked the daemon that way). The handlers here
only write plain attributes of one :class:`SignalFlags`; the loop reads them between batches
(:meth:`SignalHandlers.poll`) and acts there, where blocking is allowed.

The command line installs the handlers before it imports torch (:func:`install_early`), so a signal that
arrives during start-up is kept until the loop can act on it instead of killing the process by default.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any


class SignalFlags:
    """What the handlers recorded: the first stop signal's name and how many signals of each kind arrived.

    Written only by plain attribute assignments, so a handler that interrupts another one cannot block.

    Examples
    --------
    >>> flags = SignalFlags()
    >>> flags.stop, flags.stops, flags.checkpoints
    (None, 0, 0)
    """

    def __init__(self) -> None:
        self.stop: str | None = None
        self.stops = 0
        self.checkpoints = 0


#: The one record of signals in this process (signals are per process, so are their handlers).
FLAGS = SignalFlags()
_originals: dict[int, Any] = {}


def _on_stop(signum: int, frame: Any) -> None:
    FLAGS.stops += 1
    if FLAGS.stop is None:
        FLAGS.stop = signal.Signals(signum).name


def _on_checkpoint(signum: int, frame: Any) -> None:
    FLAGS.checkpoints += 1


def _wanted() -> dict[int, Callable[[int, Any], None]]:
    wanted: dict[int, Callable[[int, Any], None]] = {signal.SIGTERM: _on_stop, signal.SIGINT: _on_stop}
    if hasattr(signal, "SIGHUP"):
        wanted[signal.SIGHUP] = _on_checkpoint
    return wanted


def install_early() -> bool:
    """Install the handlers now (main thread only; ``False`` elsewhere); what they record waits for the loop.

    Idempotent. The handlers they replaced are put back by :meth:`SignalHandlers.restore`.
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    for signum, handler in _wanted().items():
        previous = signal.signal(signum, handler)
        if signum not in _originals:
            _originals[signum] = previous
    return True


class SignalHandlers:
    """The service's signal handlers: install them, read what arrived between batches, put the old ones back.

    Handlers can only be installed from the main thread; elsewhere :meth:`install` does nothing (a service
    run in another thread is stopped with :meth:`Service.request_stop <streammas.service.Service.request_stop>`).
    Signals that arrived before :meth:`install` (after :func:`install_early`) are acted on at the first
    :meth:`poll`.

    Parameters
    ----------
    stop : callable
        Called by :meth:`poll` with the first stop signal's name (``"SIGTERM"``, ``"SIGINT"``) as the reason.
    checkpoint : callable
        Called by :meth:`poll`, without arguments, once for any number of SIGHUPs since the last poll.
    repeated : callable, optional
        Called by :meth:`poll` with the number of stop signals beyond the first that arrived since the last
        poll (to say that the service is already stopping).

    Examples
    --------
    A storm of SIGHUPs is one checkpoint; the stop signal's name is the reason to stop:

    >>> asked = []
    >>> handlers = SignalHandlers(stop=asked.append, checkpoint=lambda: asked.append("checkpoint"))
    >>> handlers.install()
    True
    >>> for _ in range(1000):
    ...     signal.raise_signal(signal.SIGHUP)
    >>> signal.raise_signal(signal.SIGTERM)
    >>> handlers.poll()
    >>> handlers.poll()  # nothing new
    >>> handlers.restore()
    >>> asked
    ['checkpoint', 'SIGTERM']
    """

    def __init__(self, stop: Callable[[str], None], checkpoint: Callable[[], None],
                 repeated: Callable[[int], None] | None = None) -> None:
        self.stop = stop
        self.checkpoint = checkpoint
        self.repeated = repeated
        self.installed = False
        self._checkpoints_seen = 0
        self._stops_seen = 0
        self._stop_told = False

    def install(self) -> bool:
        """Install the handlers; ``False`` when not in the main thread (nothing installed)."""
        self.installed = install_early()
        return self.installed

    def poll(self) -> None:
        """Act on what arrived since the last call (between batches, where blocking is allowed)."""
        if not self.installed:
            return
        checkpoints, stops, name = FLAGS.checkpoints, FLAGS.stops, FLAGS.stop
        if checkpoints != self._checkpoints_seen:
            self._checkpoints_seen = checkpoints
            self.checkpoint()
        if name is not None and not self._stop_told:
            self._stop_told = True
            self._stops_seen = 1
            self.stop(name)
        if stops > self._stops_seen:
            more, self._stops_seen = stops - self._stops_seen, stops
            if self.repeated is not None:
                self.repeated(more)

    def restore(self) -> None:
        """Put back the handlers that were there before the first install, and forget what arrived
        (idempotent; a later service in the same process starts from a clean record)."""
        if not self.installed:
            return
        for signum, handler in _originals.items():
            with contextlib.suppress(Exception):
                signal.signal(signum, handler)
        _originals.clear()
        FLAGS.__init__()
        self.installed = False
