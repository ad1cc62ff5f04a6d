"""When has the loss settled? Plateau and peak detection on the prequential loss, free of its scale.

The detector sees one value per step (the mean prequential loss of a batch) and keeps a sliding window of the
last ``window`` values. Its statistic is the window's **median**: batch losses are heavy-tailed (one batch of
outliers moves a window's mean by half, not its median), and a regime change moves the median within half a
window. The detector is *armed* at the start and after every peak; while armed it tracks the highest median
(the peak) and declares a **plateau** when

* the median has stayed at least ``min_drop`` (a fraction) below the peak for ``patience`` steps in a row, so
  the flat, noisy loss right after initialisation, before anything was learned, never qualifies (after a peak,
  coming back down by ``rearm_share`` of the peak's rise, in log, also counts: a regime that raised the loss
  2.4x and is learned back to 1.5x its old level has been learned, though it never fell by half); and
* over the last ``progress_steps`` steps the median fell by less than ``progress_share`` of its whole drop
  from the peak, and that for ``patience`` steps in a row: most of what this regime teaches has been learned.
  (A test of the form "the loss stopped improving by x%" never fires on a loss that keeps creeping down, as an
  autoencoder's does for thousands of steps; asking the plateau to last keeps a one-pass regime, cut off as
  soon as it is learned, from being consolidated half-learned.)

Then it disarms and follows the plateau's level: the mean and the spread of log(median), with a time
constant of ``level_steps``. A **peak** (which re-arms it) is a median above that level by more than
``peak_rise`` (a fraction) *and* by more than ``peak_z`` of the level's own standard deviations, for
``peak_persist`` steps in a row: the threshold adapts to how noisy the stream is, so a noisy stream does not
raise false alarms and a quiet one is not deaf to a modest change. While the last ``hold_recent`` values stay
within ``hold_rise`` above the level, the detector says **hold**: the plateau still holds (the learner then
refreshes what it will consolidate at the next peak).

Every test compares ratios, or differences of logarithms, so multiplying the loss by any positive constant
changes no decision. The relative rule expects a positive loss (steps whose median is not positive are
ignored); for a loss that can be negative use ``rule="absolute"`` or a detector of your own.

``rule="absolute"`` instead uses the task-free paper's rule with thresholds in loss units: a plateau when
the window's mean is below ``mean_threshold`` and its variance below ``var_threshold``; a peak when the
window mean exceeds the last plateau's mean plus its standard deviation.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

PLATEAU = "plateau"
PEAK = "peak"
HOLD = "hold"


@dataclass
class PlateauConfig:
    """Detector settings. The defaults are relative (scale-free) and were chosen with ``streammas evaluate``
    and the detector's own replay of recorded loss curves (see the README's results section)."""

    window: int = 20
    min_drop: float = 0.5
    rearm_share: float = 0.5
    patience: int = 20
    progress_steps: int = 50
    progress_share: float = 0.1
    peak_rise: float = 0.35
    peak_z: float = 3.5
    peak_persist: int = 3
    level_steps: int = 50
    hold_rise: float = 0.5
    hold_recent: int = 5
    rule: str = "relative"
    mean_threshold: float = 0.1
    var_threshold: float = 0.01

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ValueError(f"plateau window must be at least 2, got {self.window}")
        if self.rule not in ("relative", "absolute"):
            raise ValueError(f"plateau rule must be 'relative' or 'absolute', got {self.rule!r}")
        for name in ("min_drop", "rearm_share", "progress_share", "peak_rise", "peak_z", "hold_rise"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"plateau {name} must be >= 0, got {getattr(self, name)}")
        if not self.min_drop < 1:
            raise ValueError(f"plateau min_drop must be below 1, got {self.min_drop}")
        for name in ("patience", "progress_steps", "peak_persist", "level_steps", "hold_recent"):
            if getattr(self, name) < 1:
                raise ValueError(f"plateau {name} must be at least 1, got {getattr(self, name)}")


class PlateauDetector:
    """Detects plateaus and peaks in a stream of loss values.

    ``update(value)`` returns ``"plateau"`` or ``"peak"`` on the step where one is detected, ``"hold"``
    while a detected plateau still holds, and ``None`` otherwise.

    >>> import random
    >>> rng = random.Random(0)
    >>> detector = PlateauDetector()
    >>> loss = [2.0 * math.exp(-t / 30) + 0.1 for t in range(300)] + [2.0] * 50
    >>> events = [(t, e) for t, v in enumerate(loss) if (e := detector.update(v * rng.uniform(0.8, 1.2)))
    ...           in ("plateau", "peak")]
    >>> [e for _, e in events]
    ['plateau', 'peak']
    >>> events[0][0] > 60, 300 <= events[1][0] < 320
    (True, True)
    """

    def __init__(self, config: PlateauConfig | Mapping | None = None, **settings) -> None:
        if isinstance(config, PlateauConfig) and not settings:
            self.config = config
        else:
            base = asdict(config) if isinstance(config, PlateauConfig) else dict(config or {})
            self.config = PlateauConfig(**{**base, **settings})
        self._values: deque[float] = deque(maxlen=self.config.window)
        self._history: deque[float] = deque(maxlen=self.config.progress_steps + 1)
        self.armed = True
        self.peak = -math.inf
        self.below = 0
        self.settled = 0
        self.over = 0
        self.level = math.nan  # relative rule: mean of log(median) while the plateau holds; absolute: its mean
        self.level_var = 0.0
        self.previous_level = math.nan  # log level of the plateau before the last peak
        self.steps = 0

    def update(self, value: float) -> str | None:
        """Feed one loss value; non-finite values are ignored."""
        if not math.isfinite(value):
            return None
        self.steps += 1
        self._values.append(float(value))
        if len(self._values) < self.config.window:
            return None
        if self.config.rule == "absolute":
            return self._absolute()
        return self._relative()

    def _relative(self) -> str | None:
        cfg = self.config
        median = statistics.median(self._values)
        if not median > 0:
            return None
        if self.armed:
            self._history.append(median)
            self.peak = max(self.peak, median)
            self.below = self.below + 1 if median <= self._low_enough() else 0
            history = self._history
            settled = (len(history) == history.maxlen
                       and history[0] - median <= cfg.progress_share * (self.peak - median))
            self.settled = self.settled + 1 if settled else 0
            if self.below >= cfg.patience and self.settled >= cfg.patience:
                logs = [math.log(v) for v in history]
                self.level = sum(logs) / len(logs)
                self.level_var = sum((v - self.level) ** 2 for v in logs) / len(logs)
                self.armed, self.over = False, 0
                return PLATEAU
            return None
        rise = math.log(median) - self.level
        if rise > max(math.log1p(cfg.peak_rise), cfg.peak_z * math.sqrt(self.level_var)):
            self.over += 1
            if self.over >= cfg.peak_persist:
                self.previous_level = self.level
                self._rearm(median)
                return PEAK
            return None
        self.over = 0
        # The level and its spread follow the plateau slowly (an exponentially weighted mean and variance of
        # log(median)), so that a loss still creeping down, or a noisier stretch, moves the threshold with it.
        weight = 1.0 / cfg.level_steps
        self.level += weight * rise
        self.level_var = (1.0 - weight) * (self.level_var + weight * rise * rise)
        recent = list(self._values)[-cfg.hold_recent:]
        recent_mean = sum(recent) / len(recent)
        return HOLD if recent_mean > 0 and math.log(recent_mean) - self.level <= math.log1p(cfg.hold_rise) else None

    def _low_enough(self) -> float:
        """How low the median must be to count as learned: ``min_drop`` below the peak; after a peak, recovering
        ``rearm_share`` of the rise (in log) suffices too, since that rise was itself certified as a change."""
        low = (1.0 - self.config.min_drop) * self.peak
        if math.isfinite(self.previous_level):
            share = self.config.rearm_share
            low = max(low, math.exp((1.0 - share) * math.log(self.peak) + share * self.previous_level))
        return low

    def _absolute(self) -> str | None:
        cfg = self.config
        n = len(self._values)
        mean = sum(self._values) / n
        var = sum((v - mean) ** 2 for v in self._values) / max(n - 1, 1)
        if self.armed:
            if mean < cfg.mean_threshold and var < cfg.var_threshold:
                self.armed = False
                self.level, self.level_var = mean, var
                return PLATEAU
            return None
        if mean > self.level + math.sqrt(self.level_var):
            self._rearm(mean)
            return PEAK
        return HOLD

    def _rearm(self, statistic: float) -> None:
        self.armed = True
        self.peak, self.below, self.settled, self.over = statistic, 0, 0, 0
        self._history.clear()

    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "values": list(self._values),
            "history": list(self._history),
            "armed": self.armed,
            "peak": self.peak,
            "below": self.below,
            "settled": self.settled,
            "over": self.over,
            "level": self.level,
            "level_var": self.level_var,
            "previous_level": self.previous_level,
            "steps": self.steps,
        }

    def load_state_dict(self, state: Mapping) -> None:
        known = {f.name for f in fields(PlateauConfig)}
        self.config = PlateauConfig(**{k: v for k, v in state["config"].items() if k in known})
        self._values = deque((float(v) for v in state["values"]), maxlen=self.config.window)
        self._history = deque((float(v) for v in state["history"]), maxlen=self.config.progress_steps + 1)
        self.armed = bool(state["armed"])
        for key in ("peak", "level", "level_var", "previous_level"):
            setattr(self, key, float(state[key]))
        for key in ("below", "settled", "over", "steps"):
            setattr(self, key, int(state[key]))


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
