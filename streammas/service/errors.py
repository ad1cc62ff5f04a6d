"""How the service talks about failures: :class:`ServiceError` for the ones that stop it, :func:`why` for a
one-line reason in a log line, and :class:`EveryFew` so that a failure repeated every batch logs a line now
and then instead of flooding the log.
"""

from __future__ import annotations

import math
import time


class ServiceError(Exception):
    """The service cannot start (or go on); the message says why. Exit status 2.

    The message starts with the configuration section at fault, where there is one.

    Examples
    --------
    >>> try:
    ...     raise ServiceError("[state] another process holds the state directory")
    ... except ServiceError as e:
    ...     print(f"streammas run: error: {e}")
    streammas run: error: [state] another process holds the state directory
    """


class ModelRefused(ServiceError):
    """No model can be made for the samples the stream sent first (too large for ``[model] max_parameters``, or
    its factory failed for their shape): their batch is turned away and counted (reason ``model``), and the next
    samples may decide another shape. Raised only where the stream decides the shape; a configured shape that
    cannot be built is a :class:`ServiceError`.

    >>> isinstance(ModelRefused("[model] too large"), ServiceError)
    True
    """


def why(error: BaseException) -> str:
    """A one-line reason for an exception (an OSError's message with its file name).

    >>> why(FileNotFoundError(2, "No such file or directory", "data.csv"))
    'No such file or directory: data.csv'
    >>> why(ValueError("bad row\\nand more detail")), why(KeyError())
    ('bad row', 'KeyError')
    """
    if isinstance(error, OSError) and error.strerror:
        name = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{name}"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


class EveryFew:
    """Lets one log line through per ``interval`` seconds and per key; counts the rest.

    Calling it with a key returns ``None`` to stay quiet, else how many lines of that key were suppressed since
    the last one, so that a failure repeated every batch logs a line now and then instead of flooding the log.

    Parameters
    ----------
    interval : float, default 5.0
        Seconds between two lines of the same key.

    Examples
    --------
    >>> quiet = EveryFew(interval=60.0)
    >>> quiet("sink_error"), quiet("sink_error"), quiet("sink_error"), quiet("nan_loss")
    (0, None, None, 0)
    >>> quiet.suppressed
    {'sink_error': 2}
    """

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def __call__(self, key: str) -> int | None:
        """``None`` to stay quiet, else how many were suppressed since the last line."""
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.interval:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self.suppressed.pop(key, 0)
