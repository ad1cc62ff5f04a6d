"""Signal handling: SIGTERM and SIGINT ask the service to stop (after the current batch, with a checkpoint);
SIGHUP asks for a checkpoint now. The handlers only set flags; the loop acts on them between batches.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable
from typing import Any


class SignalHandlers:
    """Installs the service's signal handlers and puts the previous ones back.

    Handlers can only be installed from the main thread; elsewhere :meth:`install` does nothing (a service
    run in another thread is stopped with :meth:`Service.request_stop <streammas.service.Service.request_stop>`).

    Parameters
    ----------
    stop : callable
        Called with the signal's name (``"SIGTERM"``, ``"SIGINT"``) as the reason to stop.
    checkpoint : callable
        Called without arguments on SIGHUP (where the platform has it).

    Examples
    --------
    >>> asked = []
    >>> handlers = SignalHandlers(stop=asked.append, checkpoint=lambda: asked.append("checkpoint"))
    >>> handlers.install()
    True
    >>> signal.raise_signal(signal.SIGHUP); signal.raise_signal(signal.SIGTERM)
    >>> handlers.restore()
    >>> asked
    ['checkpoint', 'SIGTERM']
    """

    def __init__(self, stop: Callable[[str], None], checkpoint: Callable[[], None]) -> None:
        self.stop = stop
        self.checkpoint = checkpoint
        self._old: dict[int, Any] = {}

    def install(self) -> bool:
        """Install the handlers; ``False`` when not in the main thread (nothing installed)."""
        if threading.current_thread() is not threading.main_thread():
            return False

        def stop(signum: int, frame: Any) -> None:
            self.stop(signal.Signals(signum).name)

        def hup(signum: int, frame: Any) -> None:
            self.checkpoint()

        wanted = {signal.SIGTERM: stop, signal.SIGINT: stop}
        if hasattr(signal, "SIGHUP"):
            wanted[signal.SIGHUP] = hup
        for signum, handler in wanted.items():
            self._old[signum] = signal.signal(signum, handler)
        return True

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced (idempotent)."""
        for signum, handler in self._old.items():
            with contextlib.suppress(Exception):
                signal.signal(signum, handler)
        self._old.clear()
