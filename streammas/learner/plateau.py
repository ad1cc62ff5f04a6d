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

A loss that cannot halve (a high noise floor, irreducible error) is learned too when its drop is smaller but
beyond what noise explains: at least ``floor_drop`` below the peak *and* ``floor_z`` standard errors of the
window's median (estimated from the window's own spread, in log), with both conditions, and the lack of
progress, lasting ``floor_patience`` steps. The flat loss right after initialisation does not qualify: its
"drop" from its highest median is a few standard errors at most.

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

from streammas.learner.settings import at_least, check_settings, in_unit_interval, non_negative, setting

PLATEAU = "plateau"
PEAK = "peak"
HOLD = "hold"


@dataclass(frozen=True)
class PlateauConfig:
    """Detector settings, each with its default, check and help (``[learner.plateau]`` in a configuration file).

    The defaults are relative (scale-free) and were chosen with ``streammas evaluate`` and the detector's own
    replay of recorded loss curves (see the README's results section).

    Parameters
    ----------
    window : int, default 20
        Losses in the sliding window (its median is the statistic); at least 2.
    min_drop : float, default 0.5
        A plateau's median must be this fraction below the peak, in [0, 1).
    rearm_share : float, default 0.5
        After a peak, recovering this share of its rise (in log) is low enough too.
    patience : int, default 20
        Steps in a row the median must stay that low.
    progress_steps : int, default 50
        Steps over which the remaining progress is measured.
    progress_share : float, default 0.1
        A plateau: the median fell by less than this share of its drop over ``progress_steps``.
    peak_rise : float, default 0.35
        Rise (a fraction) above the plateau's level that is a peak.
    peak_z : float, default 3.5
        A peak also rises this many of the level's standard deviations.
    peak_persist : int, default 3
        Steps in a row a peak's rise must last.
    level_steps : int, default 50
        Time constant (steps) of the plateau level's tracking.
    hold_rise : float, default 0.5
        Rise (a fraction) of the latest losses while a plateau still holds.
    hold_recent : int, default 5
        Latest losses the hold test averages.
    floor_drop : float, default 0.05
        A loss that cannot halve: a smaller drop (this fraction below the peak) counts too, if the noise
        cannot explain it (``floor_z``) and it lasts ``floor_patience`` steps; in [0, 1).
    floor_z : float, default 8.0
        That smaller drop must also be this many standard errors of the window's median.
    floor_patience : int, default 60
        Steps in a row the smaller drop, and the lack of progress, must last.
    rule : {"relative", "absolute"}, default "relative"
        Relative (scale-free) or absolute (thresholds in loss units).
    mean_threshold : float, default 0.1
        Absolute rule: window mean threshold.
    var_threshold : float, default 0.01
        Absolute rule: window variance threshold.

    Examples
    --------
    >>> PlateauConfig(window=10).window
    10
    >>> PlateauConfig(min_drop=1.0)
    Traceback (most recent call last):
    ...
    ValueError: min_drop must be in [0, 1); got 1.0
    """

    window: int = setting(20, help="losses in the sliding window (its median is the statistic)", check=at_least(2))
    min_drop: float = setting(0.5, help="a plateau's median must be this fraction below the peak",
                              check=in_unit_interval(closed_low=True, closed_high=False))
    rearm_share: float = setting(0.5, help="after a peak, recovering this share of its rise (in log) is low enough "
                                 "too", check=non_negative)
    patience: int = setting(20, help="steps in a row the median must stay that low", check=at_least(1))
    progress_steps: int = setting(50, help="steps over which the remaining progress is measured", check=at_least(1))
    progress_share: float = setting(0.1, help="a plateau: the median fell by less than this share of its drop over "
                                    "progress_steps", check=non_negative)
    peak_rise: float = setting(0.35, help="rise (a fraction) above the plateau's level that is a peak",
                               check=non_negative)
    peak_z: float = setting(3.5, help="a peak also rises this many of the level's standard deviations",
                            check=non_negative)
    peak_persist: int = setting(3, help="steps in a row a peak's rise must last", check=at_least(1))
    level_steps: int = setting(50, help="time constant (steps) of the plateau level's tracking", check=at_least(1))
    hold_rise: float = setting(0.5, help="rise (a fraction) of the latest losses while a plateau still holds",
                               check=non_negative)
    hold_recent: int = setting(5, help="latest losses the hold test averages", check=at_least(1))
    floor_drop: float = setting(0.05, help="a loss that cannot halve: a drop this fraction below the peak counts "
                                "too, beyond noise (floor_z) and lasting floor_patience steps",
                                check=in_unit_interval(closed_low=True, closed_high=False))
    floor_z: float = setting(8.0, help="that drop must also be this many standard errors of the window's median",
                             check=non_negative)
    floor_patience: int = setting(60, help="steps in a row that smaller drop, and no progress, must last",
                                  check=at_least(1))
    rule: str = setting("relative", help="relative (scale-free) or absolute (thresholds in loss units)",
                        choices=("relative", "absolute"))
    mean_threshold: float = setting(0.1, help="absolute rule: window mean threshold")
    var_threshold: float = setting(0.01, help="absolute rule: window variance threshold")

    def __post_init__(self) -> None:
        check_settings(self)


class PlateauDetector:
    """Detects plateaus and peaks in a stream of loss values.

    ``update(value)`` returns ``"plateau"`` or ``"peak"`` on the step where one is detected, ``"hold"``
    while a detected plateau still holds, and ``None`` otherwise.

    Parameters
    ----------
    config : PlateauConfig, dict or None, default None
        The settings, as a :class:`PlateauConfig` or a dict of its fields (``None``: the defaults).
    **settings
        Fields of :class:`PlateauConfig` that override those of ``config``.

    Examples
    --------
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
        self.floor_below = 0
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
            self.floor_below = self.floor_below + 1 if self._beyond_noise(median) else 0
            history = self._history
            settled = (len(history) == history.maxlen
                       and history[0] - median <= cfg.progress_share * (self.peak - median))
            self.settled = self.settled + 1 if settled else 0
            if ((self.below >= cfg.patience and self.settled >= cfg.patience)
                    or (self.floor_below >= cfg.floor_patience and self.settled >= cfg.floor_patience)):
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

    def _beyond_noise(self, median: float) -> bool:
        """Whether the median is ``floor_drop`` below the peak and ``floor_z`` standard errors of a window
        median below it (the standard error from the window's median absolute deviation, in log)."""
        cfg = self.config
        drop = math.log(self.peak / median)
        if drop < -math.log1p(-cfg.floor_drop) or drop <= 0:
            return False
        logs = [math.log(v) for v in self._values if v > 0]
        centre = statistics.median(logs)
        mad = statistics.median(abs(v - centre) for v in logs)
        # 1.4826 MAD estimates a normal spread; the median of n values has 1.2533 / sqrt(n) of it as error
        return drop >= cfg.floor_z * 1.4826 * mad * 1.2533 / math.sqrt(len(logs))

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
        var = sum((v - mean) * (v - mean) for v in self._values) / max(n - 1, 1)  # inf, not OverflowError
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
        self.peak, self.below, self.floor_below, self.settled, self.over = statistic, 0, 0, 0, 0
        self._history.clear()

    def state_dict(self) -> dict:
        return {
            "config": asdict(self.config),
            "values": list(self._values),
            "history": list(self._history),
            "armed": self.armed,
            "peak": self.peak,
            "below": self.below,
            "floor_below": self.floor_below,
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
        self.floor_below = int(state.get("floor_below", 0))  # states written before the rule existed

