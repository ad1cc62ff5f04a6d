"""When has the loss settled? Plateau and peak detection on the prequential loss, free of its scale.

The detector sees one value per step (the mean prequential loss of the batch) and keeps a sliding window
of the last ``window`` values. It is *armed* at the start and after every peak. While armed it tracks the
highest window mean (the peak) and the lowest (the best level so far). It declares a **plateau** when

* the window mean has stayed at least ``min_drop`` (a fraction) below the peak for ``patience`` steps in
  a row, so the flat, noisy loss right after initialisation, before anything was learned, never
  qualifies (a single noisy window proves nothing); and
* the best level has not improved by more than ``tolerance`` (a fraction of itself) for ``patience``
  steps: the loss stopped going down.

Then it disarms, follows the plateau's level slowly (time constant: one window), and declares a **peak**
(and re-arms) when the window mean rises more than ``peak_rise`` (a fraction) above that level. Every test
is a ratio of window means, so multiplying the loss by any positive constant changes no decision.

``rule="absolute"`` instead uses the task-free paper's rule with thresholds in loss units: a plateau when
the window's mean is below ``mean_threshold`` and its variance below ``var_threshold``; a peak when the
window mean exceeds the last plateau's mean plus its standard deviation.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

PLATEAU = "plateau"
PEAK = "peak"
HOLD = "hold"


@dataclass
class PlateauConfig:
    """Detector settings. The defaults are relative (scale-free) and were chosen with ``streammas evaluate``."""

    window: int = 20
    min_drop: float = 0.5
    tolerance: float = 0.02
    patience: int = 40
    peak_rise: float = 0.75
    hold_rise: float = 0.1
    rule: str = "relative"
    mean_threshold: float = 0.1
    var_threshold: float = 0.01

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"plateau window must be at least 2, got {self.window}")
        if self.rule not in ("relative", "absolute"):
            raise ValueError(f"plateau rule must be 'relative' or 'absolute', got {self.rule!r}")
        for name in ("min_drop", "tolerance", "peak_rise", "hold_rise"):
            if getattr(self, name) < 0:
                raise ValueError(f"plateau {name} must be >= 0, got {getattr(self, name)}")
        if self.patience < 1:
            raise ValueError(f"plateau patience must be at least 1, got {self.patience}")


class PlateauDetector:
    """Detects plateaus and peaks in a stream of loss values.

    ``update(value)`` returns ``"plateau"`` or ``"peak"`` on the step where one is detected, ``"hold"``
    while a detected plateau still holds (the loss has not risen more than ``hold_rise`` above its level),
    and ``None`` otherwise.

    >>> import random
    >>> rng = random.Random(0)
    >>> detector = PlateauDetector(window=10, patience=20)
    >>> loss = [2.0 * math.exp(-t / 30) + 0.1 for t in range(300)] + [2.0] * 50
    >>> events = [(t, e) for t, v in enumerate(loss) if (e := detector.update(v * rng.uniform(0.8, 1.2)))
    ...           in ("plateau", "peak")]
    >>> [e for _, e in events]
    ['plateau', 'peak']
    >>> events[0][0] > 100, events[1][0] >= 300
    (True, True)
    """

    def __init__(self, config: PlateauConfig | Mapping | None = None, **settings) -> None:
        if isinstance(config, PlateauConfig):
            self.config = config
        else:
            self.config = PlateauConfig(**{**dict(config or {}), **settings})
        self._values: deque[float] = deque(maxlen=self.config.window)
        self.armed = True
        self.peak = -math.inf
        self.best = math.inf
        self.since_best = 0
        self.below = 0
        self.level = math.inf
        self.level_std = 0.0
        self.steps = 0

    def _window_stats(self) -> tuple[float, float]:
        n = len(self._values)
        mean = sum(self._values) / n
        var = sum((v - mean) ** 2 for v in self._values) / max(n - 1, 1)
        return mean, var

    def update(self, value: float) -> str | None:
        """Feed one loss value; non-finite values are ignored."""
        if not math.isfinite(value):
            return None
        self.steps += 1
        self._values.append(float(value))
        if len(self._values) < self.config.window:
            return None
        mean, var = self._window_stats()
        if self.config.rule == "absolute":
            return self._absolute(mean, var)
        return self._relative(mean, var)

    def _relative(self, mean: float, var: float) -> str | None:
        cfg = self.config
        if self.armed:
            if mean >= self.peak:
                # Still rising (the start of a regime): improvement is counted from the top.
                self.peak, self.best, self.since_best = mean, mean, 0
            elif mean < self.best * (1.0 - cfg.tolerance):
                self.best, self.since_best = mean, 0
            else:
                self.since_best += 1
            self.below = self.below + 1 if mean <= (1.0 - cfg.min_drop) * self.peak else 0
            if self.since_best >= cfg.patience and self.below >= cfg.patience:
                self.armed = False
                self.level, self.level_std = mean, math.sqrt(var)
                return PLATEAU
            return None
        if mean > self.level * (1.0 + cfg.peak_rise):
            self._rearm(mean)
            return PEAK
        # The plateau's level follows the window mean slowly (time constant: one window). A running minimum
        # would be biased low by the noise and turn ordinary fluctuations into false peaks.
        self.level += (mean - self.level) / cfg.window
        return HOLD if mean <= self.level * (1.0 + cfg.hold_rise) else None

    def _absolute(self, mean: float, var: float) -> str | None:
        cfg = self.config
        if self.armed:
            if mean < cfg.mean_threshold and var < cfg.var_threshold:
                self.armed = False
                self.level, self.level_std = mean, math.sqrt(var)
                return PLATEAU
            return None
        if mean > self.level + self.level_std:
            self._rearm(mean)
            return PEAK
        return HOLD

    def _rearm(self, mean: float) -> None:
        self.armed = True
        self.peak, self.best, self.since_best, self.below = mean, mean, 0, 0

    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "values": list(self._values),
            "armed": self.armed,
            "peak": self.peak,
            "best": self.best,
            "since_best": self.since_best,
            "below": self.below,
            "level": self.level,
            "level_std": self.level_std,
            "steps": self.steps,
        }

    def load_state_dict(self, state: Mapping) -> None:
        known = {f.name for f in fields(PlateauConfig)}
        self.config = PlateauConfig(**{k: v for k, v in state["config"].items() if k in known})
        self._values = deque((float(v) for v in state["values"]), maxlen=self.config.window)
        self.armed = bool(state["armed"])
        for key in ("peak", "best", "level", "level_std"):
            setattr(self, key, float(state[key]))
        self.since_best = int(state["since_best"])
        self.below = int(state["below"])
        self.steps = int(state["steps"])


class RiverDriftDetector:
    """Adapter that lets a river drift detector (``river.drift.ADWIN``, ``PageHinkley``...) play the
    detector's role: a detected drift is a peak; the plateau is declared ``patience`` steps after it
    (with no further drift), when the new regime has had time to be learned.

    >>> from river import drift
    >>> detector = RiverDriftDetector(drift.PageHinkley(), patience=50)
    >>> events = [detector.update(v) for v in [1.0] * 200 + [5.0] * 200]
    >>> "peak" in events and "plateau" in events
    True
    """

    def __init__(self, drift_detector, patience: int = 100) -> None:
        self.detector = drift_detector
        self.patience = int(patience)
        self.since_drift = 0
        self.armed = True

    def update(self, value: float) -> str | None:
        if not math.isfinite(value):
            return None
        self.detector.update(value)
        if self.detector.drift_detected:
            self.since_drift, self.armed = 0, True
            return PEAK
        self.since_drift += 1
        if self.armed and self.since_drift >= self.patience:
            self.armed = False
            return PLATEAU
        return None if self.armed else HOLD

    def state_dict(self) -> dict:
        return {"since_drift": self.since_drift, "armed": self.armed}

    def load_state_dict(self, state: Mapping) -> None:
        # river detectors carry their own Python state; only the adapter's counters travel in a checkpoint.
        self.since_drift, self.armed = int(state["since_drift"]), bool(state["armed"])
