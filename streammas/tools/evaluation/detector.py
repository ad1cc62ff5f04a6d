"""The plateau detector replayed on recorded loss curves: ``streammas evaluate --detector``.

The learner with its defaults learns each benchmark stream once per seed while a :class:`RecordingDetector`
keeps every loss value it feeds its detector. With the regulariser off by default, the detector's decisions do
not change what is learned, so one recording serves any number of detector settings, replayed offline in
seconds (:func:`replay`). Each replay is scored against the streams' true regimes:

- ``long_learned``: regimes of at least 300 batches in which a plateau was declared (it should be all);
- ``premature``: plateaus declared before the regime's loss had come down half of the way from its first to its
  last level (a half-learned model; it should be none);
- ``peaks_at_change``: regime changes followed by a peak within a fifth of the new regime (or 60 batches);
- ``false_peaks``: peaks anywhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from streammas.learner.plateau import PEAK, PLATEAU, PlateauDetector

#: A regime this long (in batches) should be learned to a plateau.
LONG_REGIME = 300


class RecordingDetector:
    """A detector that keeps every value it is fed, and decides as the detector it wraps.

    Parameters
    ----------
    detector : object, optional
        The detector whose decisions are returned (default: a :class:`PlateauDetector` with its defaults).

    Examples
    --------
    >>> recorder = RecordingDetector()
    >>> [recorder.update(v) for v in (1.0, 0.5)], recorder.values
    ([None, None], [1.0, 0.5])
    """

    def __init__(self, detector: Any = None) -> None:
        self.detector = detector if detector is not None else PlateauDetector()
        self.values: list[float] = []

    def update(self, value: float) -> str | None:
        self.values.append(float(value))
        return self.detector.update(value)

    def state_dict(self) -> dict:
        return self.detector.state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        self.detector.load_state_dict(state)


@dataclass
class Curve:
    """The loss values one stream fed the detector, and where its regimes begin and end (in batches).

    Examples
    --------
    >>> Curve("two", "short", 0, np.ones(30), [(0, 10), (10, 30)]).regimes
    2
    """

    benchmark: str
    length: str
    seed: int
    values: np.ndarray
    regime_batches: list[tuple[int, int]]

    @property
    def regimes(self) -> int:
        return len(self.regime_batches)


def record_curves(benchmarks: Iterable[str], lengths: Iterable[str], seeds: Iterable[int],
                  batch_size: int = 10, progress: Callable[[str], None] | None = None) -> list[Curve]:
    """Learn each stream with the learner's defaults and record the values its detector is fed."""
    from streammas.tools.evaluation.harness import run_method
    from streammas.tools.evaluation.methods import Method
    from streammas.tools.evaluation.streams import make_stream

    curves = []
    for length in lengths:
        for benchmark in benchmarks:
            for seed in seeds:
                stream = make_stream(benchmark, length, seed)
                recorder = RecordingDetector()
                run_method(stream, Method("defaults", {"plateau": recorder}), seed, batch_size=batch_size)
                bounds, start = [], 0
                for s, e, _ in stream.segments:
                    n = math.ceil((e - s) / batch_size)
                    bounds.append((start, start + n))
                    start += n
                if start != len(recorder.values):
                    raise RuntimeError(f"{benchmark}: {len(recorder.values)} values for {start} batches")
                curves.append(Curve(benchmark, length, seed, np.array(recorder.values), bounds))
                if progress is not None:
                    progress(f"recorded {benchmark} {length} seed {seed}: {start} batches")
    return curves


def replay(curves: Iterable[Curve], make_detector: Callable[[], Any]) -> dict[str, int]:
    """Replay a fresh detector from ``make_detector()`` on each curve; the counts described in the module."""
    out = dict(long_regimes=0, long_learned=0, plateaus=0, premature=0, changes=0, peaks_at_change=0, false_peaks=0)
    for curve in curves:
        detector = make_detector()
        values = curve.values
        events = [(t, d) for t, v in enumerate(values) if (d := detector.update(float(v))) in (PLATEAU, PEAK)]
        for i, (b0, b1) in enumerate(curve.regime_batches):
            n = b1 - b0
            plateaus = [t for t, d in events if d == PLATEAU and b0 <= t < b1]
            peaks = [t for t, d in events if d == PEAK and b0 <= t < b1]
            if n >= LONG_REGIME:
                out["long_regimes"] += 1
                out["long_learned"] += bool(plateaus)
            first = float(np.median(values[b0:b0 + max(20, n // 20)]))
            last = float(np.median(values[b1 - max(20, n // 10):b1]))
            for t in plateaus:
                out["plateaus"] += 1
                level = float(np.median(values[max(0, t - 20):t + 1]))
                if first > 1.05 * last and (first - level) / (first - last) < 0.5:
                    out["premature"] += 1
            at_change = [t for t in peaks if i > 0 and t - b0 < max(60, n // 5)]
            if i > 0:
                out["changes"] += 1
                out["peaks_at_change"] += bool(at_change)
            out["false_peaks"] += len(peaks) - bool(at_change)
    return out


#: What ``streammas evaluate --detector`` compares: the defaults, and the detector before the noise-floor rule.
VARIANTS: dict[str, Callable[[], Any]] = {
    "defaults": PlateauDetector,
    "without the noise-floor rule (floor_drop=0.99)": lambda: PlateauDetector(floor_drop=0.99),
}


def report(curves: list[Curve], variants: Mapping[str, Callable[[], Any]] = VARIANTS) -> str:
    """A Markdown table of :func:`replay`'s counts for each variant, and the same per benchmark and length.

    >>> flat = Curve("flat", "long", 0, np.ones(400), [(0, 400)])
    >>> print(report([flat], {"defaults": PlateauDetector}).splitlines()[2])
    | defaults | 0 / 1 | 0 | 0 / 0 | 0 |
    """
    lines = ["| detector | long regimes learned | premature plateaus | peaks at a change | false peaks |",
             "|---|---|---|---|---|"]
    for name, make in variants.items():
        r = replay(curves, make)
        lines.append(f"| {name} | {r['long_learned']} / {r['long_regimes']} | {r['premature']} | "
                     f"{r['peaks_at_change']} / {r['changes']} | {r['false_peaks']} |")
    return "\n".join(lines)
