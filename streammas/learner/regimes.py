"""The regime tracker: what the plateau detector's decisions do to the memory.

Fed the batches' mean prequential losses (read from the device once every ``sync_every`` steps), the tracker
asks the detector about each and acts: with ``consolidate_at="plateau"`` a plateau consolidates at once; with
``"peak"`` (the default) the weights of a plateau that holds are kept (as their difference from theta*, which
stays put meanwhile so that earlier regimes stay protected) and consolidated when the next peak arrives: the end
of a regime, not a half-learned model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from streammas.learner.buffer import HardBuffer
from streammas.learner.events import EventLog
from streammas.learner.meter import ImportanceMeter
from streammas.learner.plateau import HOLD, PEAK, PLATEAU
from streammas.learner.proximal import ProximalSchedule
from streammas.learner.synapses import Synapses


class RegimeTracker:
    """Turns detector decisions into consolidations of ``synapses``.

    With ``consolidate_at="plateau"`` a plateau consolidates at once; with ``"peak"`` the weights of a plateau
    that holds are kept and consolidated when the next peak arrives.

    Parameters
    ----------
    synapses : Synapses
        What is consolidated.
    detector : object
        The plateau detector, ``update(value) -> "plateau" | "peak" | "hold" | None`` (for example a
        :class:`~streammas.learner.plateau.PlateauDetector`).
    proximal : ProximalSchedule
        Settled before each consolidation.
    events : EventLog
        Receives the ``plateau``, ``peak`` and ``consolidation`` events.
    consolidate_at : {"plateau", "peak"}, default "peak"
        When a regime is consolidated.
    importance_source : {"stream", "buffer"}, default "stream"
        ``"buffer"`` measures a regime's importance on the hard ``buffer`` while its plateau holds.
    meter : ImportanceMeter or None, default None
        Measures the importance on the buffer (with ``importance_source="buffer"``).
    buffer : HardBuffer or None, default None
        The hard buffer.
    held_dtype : torch.dtype or None, default None
        The dtype of the kept plateau weights (bfloat16 for a compact state; ``None``: the parameters').

    Attributes
    ----------
    plateaus : int
        Plateaus detected so far.
    peaks : int
        Peaks detected so far.

    Examples
    --------
    >>> from streammas.learner.plateau import PlateauDetector
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> synapses = Synapses([("w", w)])
    >>> optimizer = torch.optim.SGD([w], lr=0.1)
    >>> tracker = RegimeTracker(synapses, PlateauDetector(window=2, patience=1, progress_steps=1),
    ...                         proximal=ProximalSchedule(synapses, optimizer, reg_lambda=1.0, every=1),
    ...                         events=EventLog(10, clock=lambda: (0, 0)), consolidate_at="plateau")
    >>> tracker.observe([1.0, 1.0, 0.3, 0.3, 0.3, 0.3])
    >>> tracker.plateaus, synapses.consolidations
    (1, 1)
    """

    def __init__(self, synapses: Synapses, detector: Any, *, proximal: ProximalSchedule, events: EventLog,
                 consolidate_at: str = "peak", importance_source: str = "stream",
                 meter: ImportanceMeter | None = None, buffer: HardBuffer | None = None,
                 held_dtype: torch.dtype | None = None) -> None:
        self.synapses = synapses
        self.detector = detector
        self.proximal = proximal
        self.events = events
        self.consolidate_at = consolidate_at
        self.importance_source = importance_source
        self.meter = meter
        self.buffer = buffer
        self.held_dtype = held_dtype or synapses.params[0].dtype
        self.held_delta: list[torch.Tensor] | None = None  # the weights of a plateau that holds, minus theta*
        self.plateaus = 0
        self.peaks = 0

    def observe(self, values: list[float]) -> None:
        """Feed a run of loss values to the detector and act on what it says.

        The weights are read once, after the whole run: they stand for the plateau only if the detector said
        "hold" to every value since the plateau (or since the run began), never after a rise. A peak consolidates
        only a plateau whose weights were taken that way: a plateau found so late that the loss rose within the
        same run has none, and anchoring anything else (the weights of the regime that has just begun, or those
        of an earlier time) would freeze weights that are good for no regime."""
        holding = True
        found = False
        for value in values:
            decision = self.detector.update(value)
            if decision == PLATEAU:
                self.plateaus += 1
                self.events.emit("plateau", value)
                if self.consolidate_at == "plateau":
                    self.consolidate()
                else:
                    found = True
                holding = True
            elif decision == PEAK:
                self.peaks += 1
                self.events.emit("peak", value)
                if self.held_delta is not None:
                    held, self.held_delta = self.held_delta, None
                    self._consolidate(None, shift=held)
                found = holding = False
            elif decision != HOLD:
                holding = False
        if holding and (found or self.held_delta is not None):
            self._follow_plateau()

    def _follow_plateau(self) -> None:
        """Keep the weights of a plateau that holds (refreshed while it holds), to be anchored at the next peak.
        The regime's importance keeps accumulating; with ``importance_source="buffer"`` it is measured on the
        buffer now, while the buffer still holds this regime's samples."""
        params, anchor = self.synapses.params, self.synapses.anchor
        if self.held_delta is None:
            self.held_delta = [torch.empty_like(p, dtype=self.held_dtype, memory_format=torch.contiguous_format)
                               for p in params]
        for held, p, a in zip(self.held_delta, params, anchor):
            torch.sub(p.detach(), a, out=held)  # no full-size temporary: the difference is rounded as it is written
        if self.importance_source == "buffer":
            torch._foreach_copy_(self.synapses.running, self._buffer_importance())

    def _buffer_importance(self) -> list[torch.Tensor]:
        if self.buffer is None or not len(self.buffer):
            return [torch.zeros_like(t) for t in self.synapses.running]
        return self.meter.measure(self.buffer.x)

    def consolidate(self) -> None:
        """Consolidate now: Omega absorbs the current regime's importance, theta* anchors the weights."""
        self.held_delta = None
        importance = self._buffer_importance() if self.importance_source == "buffer" else None
        self._consolidate(importance)

    def _consolidate(self, importance: list[torch.Tensor] | None, *, shift: list[torch.Tensor] | None = None) -> None:
        self.proximal.settle()
        self.synapses.consolidate(importance, shift=shift)
        self.events.emit("consolidation", None)

    def held_nbytes(self) -> tuple[int, int]:
        """Bytes of the kept plateau weights now, and while a plateau holds (``consolidate_at="peak"``)."""
        held = 0 if self.held_delta is None else sum(t.numel() * t.element_size() for t in self.held_delta)
        held_max = 0
        if self.consolidate_at == "peak":
            held_max = sum(p.numel() for p in self.synapses.params) * self.held_dtype.itemsize
        return held, held_max

    def state_dict(self, names: list[str]) -> dict[str, Any]:
        return {"detector": self.detector.state_dict(), "plateaus": self.plateaus, "peaks": self.peaks,
                "held_delta": None if self.held_delta is None else {
                    n: d.clone() for n, d in zip(names, self.held_delta)}}

    def load_state_dict(self, state: Mapping[str, Any], names: list[str], device: torch.device | None = None) -> None:
        self.detector.load_state_dict(state["detector"])
        self.plateaus, self.peaks = int(state["plateaus"]), int(state["peaks"])
        held = state.get("held_delta")
        self.held_delta = None if held is None else [held[n].to(device, self.held_dtype) for n in names]
