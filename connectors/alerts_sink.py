"""The alerts sink: only the samples whose score is unusually high, ``alerts:alerts.jsonl?q=0.99``.

A sample is an alert when its score exceeds the ``q``-quantile of the last ``window`` scores before its
batch. The quantile is exact over a ring buffer of recent scores (numpy, no extra dependency), so it follows
a stream whose scores drift; no sample alerts during the first ``warmup`` samples, while the buffer fills.
The alerts go to a JSON Lines file through :class:`~connectors.jsonl_sink.JsonlSink` (rotation and the rest
included), each with the ``threshold`` it exceeded; any :class:`~connectors.base.Sink` can take them instead.

Only the per-sample part of ``extra`` (such as the service's ``sample`` number) goes with an alert; the
learner's events belong to the batch, not to an alert, and are left to the logs. A NaN score never alerts
and, like infinities, stays out of the quantile; ``+inf`` alerts. The buffer is not checkpointed: after a
restart the warm-up begins again.

URI options (``alerts:PATH?q=0.99&warmup=1000&window=10000``, or the service's ``[sink] options``): ``q``,
``warmup``, ``window`` and the :class:`~connectors.jsonl_sink.JsonlSink` options ``fsync``, ``append``,
``max_bytes``, ``rotate_seconds``, ``keep``, ``max_pending``. ``PATH`` may not contain ``?``.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from connectors.base import Batch, Sink
from connectors.jsonl_sink import JsonlSink
from connectors.options import keyword_defaults
from connectors.paths import file_path
from connectors.records import check_scores

#: How each query-string option is read.
_TYPES = {"q": float, "warmup": int, "window": int, "max_bytes": int, "rotate_seconds": float, "keep": int,
          "max_pending": int, "fsync": "bool", "append": "bool"}


class RecentQuantile:
    """The ``q``-quantile of the last ``window`` finite values, exact, over a ring buffer.

    Parameters
    ----------
    q : float
        The quantile, in (0, 1).
    window : int
        How many of the latest values it is taken over.

    Examples
    --------
    >>> rq = RecentQuantile(0.5, window=3)
    >>> rq.value is None
    True
    >>> rq.update(np.array([1.0, 2.0, float("nan"), 9.0]))
    >>> rq.value
    2.0
    >>> rq.update(np.array([10.0, 11.0]))  # 1.0 and 2.0 have left the window
    >>> rq.value
    10.0
    """

    def __init__(self, q: float, window: int) -> None:
        if not 0 < q < 1:
            raise ValueError(f"q must be in (0, 1), got {q}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self.q = float(q)
        self._ring = np.empty(int(window), dtype=np.float64)
        self._next = 0
        self._count = 0
        self._value: float | None = None
        self._stale = False

    def update(self, values: np.ndarray) -> None:
        """Add ``values`` (non-finite ones are left out)."""
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        values = values[np.isfinite(values)][-len(self._ring):]
        n = len(values)
        if not n:
            return
        end = self._next + n
        size = len(self._ring)
        if end <= size:
            self._ring[self._next:end] = values
        else:
            split = size - self._next
            self._ring[self._next:] = values[:split]
            self._ring[:n - split] = values[split:]
        self._next = end % size
        self._count = min(self._count + n, size)
        self._stale = True

    @property
    def value(self) -> float | None:
        """The quantile now (``None`` before any value); computed once per :meth:`update`."""
        if self._stale:
            self._value = float(np.quantile(self._ring[:self._count], self.q))
            self._stale = False
        return self._value


class AlertsSink(Sink):
    """Passes on only the samples whose score exceeds a quantile of the recent scores (see the module doc).

    Parameters
    ----------
    downstream : str or Sink
        Where alerts go: a JSON Lines file (``"-"``: standard output), or any sink.
    q : float, default 0.99
        The quantile of the recent scores that an alert exceeds.
    warmup : int, default 1000
        Samples seen before the first alert.
    window : int, default 10000
        How many of the latest scores the quantile is taken over.
    **options
        :class:`~connectors.jsonl_sink.JsonlSink` options when ``downstream`` is a path.

    Attributes
    ----------
    threshold : float or None
        The score an alert must exceed now (``None`` before any score).
    alerts : int
        Alerts passed on by this sink (since it was opened).
    seen : int
        Samples scored by this sink.

    Examples
    --------
    >>> import json, tempfile, pathlib
    >>> scores = np.tile([0.1, 0.2, 0.3, 0.4], 75)
    >>> scores[250] = 5.0
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with AlertsSink(f"{d}/alerts.jsonl", q=0.99, warmup=100, window=200) as sink:
    ...         for start in range(0, 300, 50):
    ...             batch = Batch(np.zeros((50, 1), dtype=np.float32))
    ...             sink.write(batch, scores[start:start + 50], {"sample": np.arange(start, start + 50)})
    ...     alerts = [json.loads(line) for line in pathlib.Path(d, "alerts.jsonl").read_text().splitlines()]
    >>> [(a["sample"], a["score"]) for a in alerts], sink.alerts, round(sink.threshold, 2)
    ([(250, 5.0)], 1, 0.4)
    """

    def __init__(self, downstream: str | Sink, *, q: float = 0.99, warmup: int = 1000, window: int = 10_000,
                 **options: Any) -> None:
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self._recent = RecentQuantile(q, window)
        self.warmup = int(warmup)
        self.alerts = 0
        self.seen = 0
        if isinstance(downstream, Sink):
            if options:
                raise TypeError(f"options {sorted(options)} are for a JSON Lines file, not for {downstream!r}")
            self.downstream = downstream
        else:
            self.downstream = JsonlSink(downstream, **options)

    @property
    def threshold(self) -> float | None:
        return self._recent.value

    @property
    def q(self) -> float:
        return self._recent.q

    def write(self, batch: Batch, scores: np.ndarray, extra: dict | None = None) -> None:
        values = check_scores(batch, scores)
        n = len(values)
        threshold = self.threshold
        picked = np.empty(0, dtype=np.int64)
        if threshold is not None and self.seen + n > self.warmup:
            after_warmup = self.seen + np.arange(n) >= self.warmup
            picked = np.flatnonzero((values > threshold) & after_warmup)
        # the window moves on even when the downstream write fails: the threshold must not stall
        self._recent.update(values)
        self.seen += n
        if not len(picked):
            return
        per_sample = {k: v[picked] for k, v in (extra or {}).items()
                      if isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n}
        per_sample["threshold"] = np.full(len(picked), threshold)
        alerts = Batch(batch.x[picked], None if batch.y is None else batch.y[picked], batch.position)
        self.alerts += len(picked)
        self.downstream.write(alerts, values[picked], per_sample)

    def close(self) -> None:
        self.downstream.close()


def parse_uri(uri: str) -> tuple[str, dict[str, Any]]:
    """``(path, options)`` of an ``alerts:`` URI, the options converted to their types.

    >>> parse_uri("alerts:out/alerts.jsonl?q=0.999&warmup=500&fsync=1")
    ('out/alerts.jsonl', {'q': 0.999, 'warmup': 500, 'fsync': True})
    """
    rest, _, query = uri.split(":", 1)[1].partition("?")
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        kind = _TYPES.get(key)
        if kind is None:
            raise ValueError(f"unknown option {key!r} in {uri!r}; known: {', '.join(_TYPES)}")
        options[key] = value.lower() in ("1", "true", "yes", "on") if kind == "bool" else kind(value)
    return (rest if rest == "-" else file_path(rest)), options


class AlertsConnector:
    """The registry's connector for ``alerts:``: a sink only (see :func:`parse_uri` for the URI).

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with ALERTS.open_sink(f"alerts:{d}/a.jsonl?q=0.9", warmup=0) as sink:
    ...         print(sink.q, sink.warmup, sink.threshold)
    0.9 0 None
    """

    def sink_options(self) -> dict[str, Any]:
        """The options ``open_sink`` accepts: the quantile's, then the JSON Lines file's, with their defaults."""
        return {**keyword_defaults(AlertsSink, skip=("downstream",)), **keyword_defaults(JsonlSink)}

    def open_sink(self, uri: str, **options: Any) -> AlertsSink:
        path, query = parse_uri(uri)
        return AlertsSink(path, **{**query, **options})


ALERTS = AlertsConnector()
