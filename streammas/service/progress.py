"""Progress for long work: a tqdm bar on a terminal, otherwise a periodic status log line.

:class:`Progress` is told after each batch how many samples went by (cheap: a counter and a clock read)
and, every so often, the latest status values; it redraws the bar or, when no bar is shown, logs a
``status`` line every ``status_every`` seconds. While the bar is on screen, log lines are written above it
(:data:`streammas.service.logs.line_writer`).

>>> import logging
>>> p = Progress(bar=False, status_every=0.0, logger=logging.getLogger("doctest"))
>>> p.update(32, {"loss": 0.5})
>>> p.samples
32
>>> p.close()
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from streammas.service import logs


def want_bar(setting: str, finite: bool, stream: IO[str] | None = None) -> bool:
    """Whether to draw a bar: ``"always"``, ``"never"``, or ``"auto"`` (a terminal and a finite source)."""
    if setting == "always":
        return True
    if setting == "never":
        return False
    stream = stream if stream is not None else sys.stderr
    return finite and bool(getattr(stream, "isatty", lambda: False)())


def make_bar(*, total: int | None, description: str, unit: str = "sample", initial: int = 0,
             stream: IO[str] | None = None) -> Any:
    """A tqdm bar on ``stream`` (standard error) that writes log lines above itself while it is shown."""
    from tqdm import tqdm

    stream = stream if stream is not None else sys.stderr
    try:
        width, height = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):
        width = height = 0
    # A terminal that reports no size (a pty with none set) would get an empty or hidden bar.
    size = {"dynamic_ncols": True} if width > 0 and height > 0 else {"ncols": 100, "nrows": 24}
    bar = tqdm(total=total, initial=initial, desc=description, unit=unit, unit_scale=True, file=stream,
               mininterval=0.25, smoothing=0.1, **size)
    logs.line_writer = lambda line, out: tqdm.write(line, file=out)
    return bar


def close_bar(bar: Any) -> None:
    bar.close()
    logs.line_writer = None


class Progress:
    """A progress bar or periodic status lines over a stream of batches.

    With ``bar`` (and tqdm installed) a bar shows the samples, the rate and the latest ``loss``,
    ``plateaus`` and ``consolidations``; without, a ``status`` event is logged at most every
    ``status_every`` seconds with the rate and the latest status values. Call :meth:`close` at the end.

    Parameters
    ----------
    bar : bool
        Draw a tqdm bar (see :func:`want_bar`); status lines when false or when tqdm is missing.
    status_every : float
        Seconds between two status lines (0: none); unused while a bar is shown.
    logger : logging.Logger
        Where status lines are logged.
    total : int or None, default None
        The samples expected, for the bar's percentage (``None``: unknown, an endless stream).
    initial : int, default 0
        The bar's starting count (samples already learned before a restart).
    description : str, default "learning"
        The bar's label.
    unit : str, default "sample"
        The bar's unit.
    stream : IO[str] or None, default None
        Where the bar is drawn (``None``: standard error).

    Examples
    --------
    Status lines, through a structured log handler:

    >>> import io, time
    >>> out = io.StringIO()
    >>> logger = logging.getLogger("streammas.doctest.progress")
    >>> handler = logs.make_handler("text", out)
    >>> logger.addHandler(handler); logger.setLevel(logging.INFO); logger.propagate = False
    >>> progress = Progress(bar=False, status_every=0.01, logger=logger)
    >>> time.sleep(0.02)
    >>> progress.update(32, {"loss": 0.5, "plateaus": 1})
    >>> progress.close()
    >>> out.getvalue().split(" ", 1)[1]
    'info  streammas.doctest.progress status samples_per_s=... loss=0.5 plateaus=1\\n'
    >>> logger.removeHandler(handler)

    A bar, drawn here into a string:

    >>> screen = io.StringIO()
    >>> progress = Progress(bar=True, status_every=30.0, logger=logger, total=64, stream=screen)
    >>> progress.update(32, {"loss": 0.25})
    >>> progress.update(32)
    >>> progress.close()
    >>> progress.samples, "64.0/64.0" in screen.getvalue(), "loss=0.25" in screen.getvalue()
    (64, True, True)
    """

    def __init__(
        self,
        *,
        bar: bool,
        status_every: float,
        logger: logging.Logger,
        total: int | None = None,
        initial: int = 0,
        description: str = "learning",
        unit: str = "sample",
        stream: IO[str] | None = None,
    ) -> None:
        self.samples = 0
        self._logger = logger
        self._status_every = float(status_every)
        self._started = time.monotonic()
        self._last_status = self._started
        self._last_samples = 0
        self._status: dict[str, Any] = {}
        self._bar = None
        if bar:
            try:
                self._bar = make_bar(total=total, description=description, unit=unit, initial=initial,
                                     stream=stream)
            except ImportError:  # no tqdm: status lines instead
                self._bar = None

    def update(self, samples: int, status: Mapping[str, Any] | None = None) -> None:
        """``samples`` more went by; ``status``: fresh values to show (``None``: keep the last ones)."""
        self.samples += samples
        if status is not None:
            self._status = dict(status)
            if self._bar is not None:
                self._bar.set_postfix(self._postfix(), refresh=False)
        if self._bar is not None:
            self._bar.update(samples)
        else:
            self.tick()

    def status_due(self) -> bool:
        """Whether the next :meth:`update` or :meth:`tick` logs a status line (so fresh values can be given)."""
        return (self._bar is None and self._status_every > 0
                and time.monotonic() - self._last_status >= self._status_every)

    def tick(self) -> None:
        """Log a status line if one is due (also call it while idle)."""
        if not self.status_due():
            return
        now = time.monotonic()
        rate = (self.samples - self._last_samples) / max(now - self._last_status, 1e-9)
        self._last_status, self._last_samples = now, self.samples
        logs.log_event(self._logger, "status", samples_per_s=round(rate, 1), **self._status)

    def _postfix(self) -> dict[str, str]:
        out = {}
        for key in ("loss", "plateaus", "consolidations"):
            value = self._status.get(key)
            if value is not None:
                out[key] = f"{value:.4g}" if isinstance(value, float) else str(value)
        return out

    def close(self) -> None:
        if self._bar is not None:
            close_bar(self._bar)
            self._bar = None
