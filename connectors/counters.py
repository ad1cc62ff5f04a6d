"""Counting what a source took in and what it turned away, and logging rejects at a bounded rate.

Bad input never stops a source: the piece at fault (a message, a line, a row, or for non-finite values
a sample) is skipped, its samples are counted under ``"rejected:<reason>"`` (one when a piece's samples
cannot be known) and it is reported through :mod:`logging`, at most ``burst`` log records at once and then
one every ``interval`` seconds, with a count of what was not logged in between, so that a producer sending
garbage at full speed cannot flood the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

#: The reason names used by the built-in connectors (third-party connectors may add their own).
REASONS: Mapping[str, str] = {
    "frames": "wrong number of frames in a ZeroMQ message",
    "json": "not valid UTF-8 JSON (a header, a JSON message or a JSON Lines line)",
    "header": "a wire header that is not an object with the fields the format requires",
    "version": "unknown wire format version",
    "dtype": "unknown or unsupported dtype",
    "size": "byte count not matching the declared shape",
    "shape": "sample shape different from the stream's, or an invalid shape",
    "too_large": "a message over max_message_bytes, or a header declaring more",
    "nonfinite": "NaN or infinity in a sample or label",
    "schema": "JSON without a numeric 'x', or with 'y' not matching it",
    "label": "a label that is missing or not of the label dtype",
    "columns": "a CSV row with the wrong number of fields",
    "parse": "a CSV field that is not a number",
    "encoding": "a line that is not valid UTF-8",
    "trimmed": "a stream entry deleted or trimmed (MAXLEN) after it was delivered, before it was learned",
    "fields": "a stream entry without the fields of the wire format (header and payload, or json)",
    "decode": "input the decoder failed on in a way it does not foresee (worth reporting as a bug)",
}


class Reject(Exception):
    """Raised by decoding code for input that must be skipped; the source counts it under ``reason``.

    The source counts ``count`` samples under ``rejected:<reason>`` and logs ``detail`` at a bounded rate.

    Parameters
    ----------
    reason : str
        Why the input is skipped, one of :data:`REASONS` for the built-in connectors.
    detail : str, default ""
        What was wrong, for the log (``""``: the reason); it is also the exception's message.
    count : int, default 1
        How many samples it stands for (1 when the piece's samples cannot be known); decoding code that
        learns the count after raising sets the attribute before passing the reject on.

    Examples
    --------
    >>> err = Reject("dtype", "unknown dtype 'complex64'")
    >>> err.reason, str(err)
    ('dtype', "unknown dtype 'complex64'")
    """

    def __init__(self, reason: str, detail: str = "", count: int = 1) -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail or reason
        self.count = count


class RateLimitedLog:
    """A token bucket in front of a logger: ``burst`` records at once, then one per ``interval`` seconds.

    The first record written after some were suppressed says how many were not logged before it.

    Parameters
    ----------
    write : callable
        Writes one record, a string.
    burst : int, default 10
        Records that may be written at once (at least 1).
    interval : float, default 10.0
        Seconds per record once the burst is spent.
    clock : callable, default time.monotonic
        The clock the bucket refills by.
    noun : str, default "rejects"
        What the records are, in the note on those not logged.

    Attributes
    ----------
    suppressed : int
        Records not written since the last one that was.

    Examples
    --------
    >>> lines = []
    >>> log = RateLimitedLog(lines.append, burst=2, interval=60.0, clock=lambda: 0.0)
    >>> for i in range(5):
    ...     _ = log.emit(f"bad {i}")
    >>> lines
    ['bad 0', 'bad 1']
    >>> log.suppressed
    3
    """

    def __init__(
        self,
        write: Callable[[str], None],
        *,
        burst: int = 10,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        noun: str = "rejects",
    ) -> None:
        if burst < 1 or interval <= 0:
            raise ValueError("burst must be >= 1 and interval > 0")
        self._write = write
        self._burst = burst
        self._interval = interval
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.suppressed = 0
        self._noun = noun

    def emit(self, message: str) -> bool:
        """Write ``message`` if the bucket allows it; returns whether it was written."""
        now = self._clock()
        self._tokens = min(float(self._burst), self._tokens + (now - self._last) / self._interval)
        self._last = now
        if self._tokens < 1.0:
            self.suppressed += 1
            return False
        self._tokens -= 1.0
        if self.suppressed:
            message = f"{message} ({self.suppressed} more {self._noun} not logged before this one)"
            self.suppressed = 0
        self._write(message)
        return True


class Counters:
    """Integer counters of a source: ``samples``, ``batches``, and ``rejected:<reason>`` per reason.

    Rejects count samples; a source whose input comes in larger pieces may count those as well, under
    ``rejected_<piece>:<reason>`` (the ZeroMQ source: ``rejected_messages:<reason>``).

    ``reject`` counts and logs (rate-limited) in one call. :meth:`snapshot` is a plain ``dict`` copy,
    safe to hand to another thread (a metrics exporter) while the source keeps counting.

    Parameters
    ----------
    logger : logging.Logger
        Where rejects are logged.
    name : str
        The source's name, at the start of each log line.
    keys : tuple of str, default ("samples", "batches")
        Counters that start at 0.
    burst : int, default 10
        Log records at once, then one every ``interval`` seconds (see :class:`RateLimitedLog`).
    interval : float, default 10.0
        Seconds per log record once the burst is spent.

    Attributes
    ----------
    counts : dict
        The counts themselves; hot paths may increment ``counts[key]`` of a preset key directly.
    examples : dict
        The first reject's detail for each reason, to say at the end why input was turned away (one per reason,
        so it stays small whatever a producer sends).

    Examples
    --------
    >>> c = Counters(logging.getLogger("doctest"), "csv:data.csv")
    >>> c.add("samples", 32)
    >>> c.reject(Reject("parse", "line 7: 'abc' is not a number"))
    >>> c.snapshot(), c.examples
    ({'samples': 32, 'batches': 0, 'rejected:parse': 1}, {'parse': "line 7: 'abc' is not a number"})
    >>> c.reject(Reject("shape", "a message of 100 samples of shape (5,)", count=100), piece="messages")
    >>> c.rejected, c["rejected:shape"], c["rejected_messages:shape"]
    (101, 100, 1)
    """

    def __init__(
        self,
        logger: logging.Logger,
        name: str,
        *,
        keys: tuple[str, ...] = ("samples", "batches"),
        burst: int = 10,
        interval: float = 10.0,
    ) -> None:
        #: The counts themselves; hot paths may increment ``counts[key]`` of a preset key directly.
        self.counts: dict[str, int] = dict.fromkeys(keys, 0)
        self._counts = self.counts
        self.name = name
        self.examples: dict[str, str] = {}
        self._log = RateLimitedLog(lambda m: logger.warning("%s", m), burst=burst, interval=interval)

    def add(self, key: str, n: int = 1) -> None:
        self._counts[key] = self._counts.get(key, 0) + n

    def reject(self, error: Reject, piece: str | None = None) -> None:
        """Count ``error.count`` samples under ``rejected:<reason>`` and log it at a bounded rate; with
        ``piece`` (``"messages"``, say) count one more under ``rejected_<piece>:<reason>`` too."""
        counts = self._counts
        key = "rejected:" + error.reason
        counts[key] = counts.get(key, 0) + error.count
        self.examples.setdefault(error.reason, error.detail)
        if piece is not None:
            key = f"rejected_{piece}:{error.reason}"
            counts[key] = counts.get(key, 0) + 1
        self._log.emit(f"{self.name}: skipped input ({error.reason}): {error.detail}")

    @property
    def rejected(self) -> int:
        """Samples rejected, over all reasons."""
        return sum(v for k, v in self._counts.items() if k.startswith("rejected:"))

    def snapshot(self) -> dict[str, int]:
        return dict(self._counts)

    def __getitem__(self, key: str) -> int:
        return self._counts.get(key, 0)
