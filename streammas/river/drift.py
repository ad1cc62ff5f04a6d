"""river drift detectors as plateau detectors: a detected drift is a peak, ``patience`` quiet steps a plateau.

:class:`~streammas.learner.OnlineMAS` takes any object with ``update(value) -> "plateau" | "peak" | "hold" |
None`` in place of its :class:`~streammas.learner.plateau.PlateauDetector`; :class:`RiverDriftDetector` wraps one of
river's drift detectors (``river.drift.ADWIN``, ``PageHinkley``...) into that shape.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from streammas.learner.plateau import HOLD, PEAK, PLATEAU

__all__ = ["RiverDriftDetector"]


class RiverDriftDetector:
    """Adapter that lets a river drift detector (``river.drift.ADWIN``, ``PageHinkley``...) play the detector's role.

    A detected drift is a peak; the plateau is declared ``patience`` steps after it (with no further drift),
    when the new regime has had time to be learned.

    Parameters
    ----------
    drift_detector : object
        A river drift detector: ``update(value)`` and a ``drift_detected`` flag.
    patience : int, default 100
        Steps with no drift after a peak (or after the start) before the plateau is declared.

    Examples
    --------
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
