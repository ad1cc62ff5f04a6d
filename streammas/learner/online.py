"""OnlineMAS: one online step on a micro-batch of an unlabeled stream, remembering what mattered.

The learner composes its parts and holds little of its own. A batch flows one way through them:

    input guard -> update engine (score, optimizer step, proximal step, importance fold, hard buffer)
                -> every ``sync_every`` steps: one host read -> recovery -> regime tracker (plateau, peak,
                   consolidation)

Each part owns its state and its ``state_dict``: :class:`~streammas.learner.inputs.InputGuard`,
:mod:`~streammas.learner.update` (:class:`~streammas.learner.update.AutogradUpdate` or the hand-derived
:class:`~streammas.learner.update.FusedUpdate`), :class:`~streammas.learner.meter.ImportanceMeter`,
:class:`~streammas.learner.proximal.ProximalSchedule`, :class:`~streammas.learner.synapses.Synapses`,
:class:`~streammas.learner.buffer.HardBuffer`, :class:`~streammas.learner.recovery.Recovery` and
:class:`~streammas.learner.regimes.RegimeTracker`. The settings and their defaults live in
:class:`~streammas.learner.settings.LearnerSettings`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from streammas.backend.compat import skips_on_device
from streammas.backend.hostsync import host_read
from streammas.collective import DistributedContext, collective_for
from streammas.collective.alone import Period
from streammas.learner.buffer import HardBuffer
from streammas.learner.events import Event, EventLog
from streammas.learner.inputs import InputGuard, model_classes
from streammas.learner.meter import ImportanceMeter
from streammas.learner.objectives import reconstruction, resolve_objective
from streammas.learner.optimizers import make_optimizer
from streammas.learner.plateau import PlateauConfig, PlateauDetector
from streammas.learner.proximal import ProximalSchedule
from streammas.learner.recovery import Recovery
from streammas.learner.regimes import RegimeTracker
from streammas.learner.replay import ReplayMemory
from streammas.learner.retrieval import make_retrieval
from streammas.learner.scaling import InputScaler
from streammas.learner.settings import LearnerSettings, learner_signature
from streammas.learner.synapses import Synapses
from streammas.learner.update import make_update

__all__ = ["Event", "OnlineMAS", "learner_defaults", "make_optimizer"]

STATE_FORMAT = 1


def learner_defaults() -> dict[str, Any]:
    """The default settings of :class:`OnlineMAS`, by keyword.

    >>> learner_defaults()["optimizer"], learner_defaults()["replay_max_bytes"], learner_defaults()["replay_ratio"]
    ('adam', 4194304, 2)
    """
    signature = inspect.signature(OnlineMAS)
    return {name: p.default for name, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}


class OnlineMAS:
    """An online learner for unlabeled streams with Memory Aware Synapses.

    Each :meth:`learn_many` call scores the batch (the prequential per-sample loss, computed before the
    update and returned to the caller), updates the model on the batch plus the hard buffer, applies the
    regulariser as a stable proximal step, and folds the batch's output sensitivity into a running
    importance. When the loss settles on a plateau, the important weights are consolidated: Omega absorbs
    the regime's importance and theta* anchors the current weights (the README's "How it works").

    Parameters
    ----------
    model : torch.nn.Module
        The module to train; the learner's state lives on its device.
    callback : callable or None, default None
        Called with each :class:`~streammas.learner.events.Event`.
    device : str, torch.device or None, default None
        Where the model and all learner state live (``None``: the model's device).
    distributed : DistributedContext or None, default None
        A group of workers that learn together; the learner takes the matching collective
        (:func:`streammas.collective.collective_for`) and calls it at the same points of every step, so that alone
        and in a group it runs the same code. Each worker calls :meth:`learn_many` once per step with its own rows
        (a batch of ``[0, *sample_shape]`` when it has none; it still takes part). With the context's
        ``mode="exact"`` (:mod:`streammas.collective.reduce`), every worker ends each step with the state of one
        learner fed the union of the rows, worker r's j-th row at slot ``j * N + r``, to float rounding (not with
        ``hard_buffer > 0``: a ``ValueError``; models whose output for a row depends on the other rows, batch norm
        in training mode, are not exact). With ``mode="average"`` (:mod:`streammas.collective.average`) each worker
        steps alone and every ``average_every`` steps the workers average their state; the detector acts at those
        steps. The workers start from rank 0's weights. An exception inside :meth:`learn_many` is fatal for the
        group (the others wait inside a collective), and :meth:`flush` (which :meth:`state_dict` calls) may take
        part in one: every worker calls it at once. ``None``, or a group of one: alone.
    **settings
        The keywords of :class:`~streammas.learner.settings.LearnerSettings` (``lr``, ``reg_lambda``, ...), each with
        its default there.

    Examples
    --------
    >>> from streammas.models import MLPAutoencoder
    >>> torch.manual_seed(0) and None
    >>> learner = OnlineMAS(MLPAutoencoder(in_features=8, hidden=(16,), latent=4), lr=0.05)
    >>> x = torch.rand(32, 8)
    >>> first = learner.learn_many(x).mean().item()
    >>> for _ in range(200):
    ...     losses = learner.learn_many(x)
    >>> losses.shape, losses.mean().item() < first
    (torch.Size([32]), True)
    >>> learner.learn_one({"a": 1.0, "b": 0.0, "c": 0.5, "d": 0.2, "e": 0.1, "f": 0.0, "g": 0.3, "h": 0.9}) >= 0
    True
    """

    def __init__(self, model: nn.Module, *, callback: Callable[[Event], None] | None = None,
                 device: str | torch.device | None = None, distributed: DistributedContext | None = None,
                 **settings: Any) -> None:
        self.settings = s = LearnerSettings(**settings)
        if device is not None:
            model = model.to(device)
        first = next(model.parameters(), None)
        if first is None:
            raise ValueError("the model has no parameters to learn")
        # How this learner takes part in a group: alone, every step exact, or averaging now and then.
        self.collective = collective_for(distributed)
        self.collective.check_settings(hard_buffer=s.hard_buffer, importance_source=s.importance_source,
                                       replay_retrieval=s.replay_retrieval)
        self.collective.start(model)
        self.model = model
        self.device, self.dtype = first.device, first.dtype
        self.objective, needs_labels = resolve_objective(s.objective)
        self.samples_seen = 0
        self.steps = 0
        self.events = EventLog(s.max_events, clock=lambda: (self.steps, self.samples_seen), callback=callback)
        self.guard = InputGuard(self.device, self.dtype, on_bad_input=s.on_bad_input, needs_labels=needs_labels,
                                on_reject=lambda n: self.events.emit("rejected", float(n)),
                                count_classes=lambda shape: model_classes(self.model, shape))

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.optimizer = make_optimizer(s.optimizer, [p for _, p in named], s.lr)
        wide = self.dtype in (torch.float32, torch.float64)
        held_dtype = torch.bfloat16 if s.compact_state and wide else self.dtype
        self.synapses = Synapses(named, consolidation=s.consolidation, ema_alpha=s.ema_alpha,
                                 normalization=s.omega_normalization, omega_dtype=held_dtype)
        self.buffer = HardBuffer(s.hard_buffer, s.hard_buffer_decay)
        self.scaler = InputScaler(s.scale_inputs, clip=s.input_clip, floor=s.scale_floor, device=self.device)
        self.replay = ReplayMemory(s.replay, max_bytes=s.replay_max_bytes,
                                   seed=self.collective.replay_seed(torch.initial_seed() % (1 << 63)),
                                   retention=s.replay_retention, ratio=s.replay_ratio,
                                   retrieval=make_retrieval(s.replay_retrieval, model, self.objective,
                                                            self.optimizer, s.replay_candidates))
        self.meter = ImportanceMeter(model, self.synapses, every=s.importance_every, method=s.importance_method,
                                     output=s.importance_output, enabled=s.importance_source == "stream")
        self.proximal = ProximalSchedule(self.synapses, self.optimizer, reg_lambda=s.reg_lambda, every=s.prox_every,
                                         device_gated=skips_on_device(self.optimizer),
                                         metric_floor=s.prox_metric_floor)
        self.update = make_update(model, self.objective, self.optimizer, self.buffer, self.meter, self.proximal,
                                  steps_per_batch=s.steps_per_batch, fused=s.fused_step, scale=self.scaler.transform,
                                  replay=self.replay if s.replay else None, collective=self.collective)
        detector = (PlateauDetector(s.plateau) if s.plateau is None or isinstance(s.plateau, (PlateauConfig, Mapping))
                    else s.plateau)
        self.regimes = RegimeTracker(self.synapses, detector, proximal=self.proximal, events=self.events,
                                     consolidate_at=s.consolidate_at, importance_source=s.importance_source,
                                     meter=self.meter, buffer=self.buffer, held_dtype=held_dtype)
        self.recovery = Recovery(model, self.objective, self.optimizer, self.synapses, self.proximal, self.events,
                                 recover_after=s.recover_after, reduce=self.collective.all_reduce)
        self._clipped = 0  # the scaler's count of clipped samples, as of the last host read
        self.collective.agreed(self)

    def __getattr__(self, name: str) -> Any:
        # The settings read as the learner's own attributes (learner.lr, learner.sync_every, ...).
        settings = self.__dict__.get("settings")
        if settings is not None and name in LearnerSettings.__dataclass_fields__:
            return getattr(settings, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- public views -----------------------------------------------------------------------------------------
    @property
    def detector(self) -> Any:
        return self.regimes.detector

    @property
    def consolidations(self) -> int:
        return self.synapses.consolidations

    @property
    def counters(self) -> dict[str, int]:
        """What happened so far, each count owned by the part that counts it."""
        return {"plateaus": self.regimes.plateaus, "peaks": self.regimes.peaks,
                "consolidations": self.synapses.consolidations, "skipped_updates": self.recovery.skipped,
                "rejected_samples": self.guard.rejected, "recoveries": self.recovery.recoveries,
                "clipped_samples": self._clipped}

    @property
    def sample_shape(self) -> tuple[int, ...] | None:
        return self.guard.sample_shape

    def adopt_sample_shape(self, shape: tuple[int, ...]) -> None:
        """Take ``shape`` as the sample shape when none is known yet (a group's worker with no row of its own)."""
        self.guard.adopt_shape(shape)

    @property
    def feature_names(self) -> list[str] | None:
        return self.guard.feature_names

    @property
    def importance(self) -> dict[str, torch.Tensor]:
        """The consolidated Omega, by parameter name."""
        return dict(zip(self.synapses.names, self.synapses.omega))

    @property
    def anchor(self) -> dict[str, torch.Tensor]:
        """theta*, the weights consolidated last, by parameter name."""
        return dict(zip(self.synapses.names, self.synapses.anchor))

    @property
    def running_importance(self) -> dict[str, torch.Tensor]:
        """The importance measured since the last consolidation (not yet part of Omega)."""
        return dict(zip(self.synapses.names, self.synapses.running))

    # -- learning ---------------------------------------------------------------------------------------------
    def learn_many(self, x: Any, y: Any = None) -> torch.Tensor:
        """Score a batch (prequential per-sample loss, returned on the learner's device), then learn from it.

        Rejected samples (``on_bad_input="skip"``) score NaN and are not learned. In a group of workers the
        scores are those of this worker's rows, and the counts grow by the whole group's.
        """
        batch = len(x)
        xb, yb, keep = self.guard.prepare(x, y) if batch else self._no_rows(x, y)
        rows = self.collective.begin(xb, yb, self.guard.sample_shape, self.dtype, self.guard.input_dtype)
        if rows is None:  # nothing to learn here; in a group that averages, still a step of the group
            if self.collective.idle():
                self._sync()
            return torch.full((batch,), math.nan, device=self.device)
        self.guard.adopt_shape(tuple(rows.seen_x.shape[1:]))  # a worker with no row yet learns the group's
        self.scaler.fit(rows.seen_x)  # in the exact mode the union's statistics, alike everywhere
        scores, score_mean = self.update(rows, rows.x, self.meter.due(self.steps))  # scaled there, with the replayed
        self.replay.add(rows.seen_x, rows.seen_y, regime=self.regimes.peaks, dtype=rows.source_dtype)
        self.steps += 1
        self.samples_seen += rows.seen_x.shape[0]
        if self.collective.record(rows.x.shape[0], score_mean, steps=self.steps, sync_every=self.settings.sync_every):
            self._sync()
        return self.guard.spread(scores, keep, batch)

    def _no_rows(self, x: Any, y: Any) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        """A worker's batch of no rows, ``[0, *sample_shape]``, on the device as it is: nothing to check."""
        xt = self.guard.to_tensor(x)
        if xt.dim() < 2:
            return self.guard.prepare(x, y)  # which says what is wrong with it
        yt = None if y is None else self.guard.to_tensor(y).reshape(-1)
        return self.guard.to_device(xt), None if yt is None else self.guard.to_device(yt, yt.dtype), None

    def learn_one(self, x: Any, y: Any = None) -> float:
        """Learn one sample (array, tensor or dict of features); returns its prequential loss."""
        return float(host_read(self.learn_many(self.guard.one(x), None if y is None else [y]))[0])

    def score_many(self, x: Any, y: Any = None) -> torch.Tensor:
        """Per-sample loss of a batch, with no update."""
        batch = len(x)
        xb, yb, keep = self.guard.prepare(x, y)
        if xb.shape[0] == 0:
            return torch.full((batch,), math.nan, device=self.device)
        with torch.no_grad():
            zb = self.scaler.transform(xb)
            return self.guard.spread(self.objective(self.update.output(zb), zb, yb), keep, batch)

    def score_one(self, x: Any, y: Any = None) -> float:
        """The loss of one sample, with no update (a chain's in CPU memory: on the host, without torch's dispatch)."""
        row = self.guard.host_row(x) if y is None else None  # a float32 sample in host memory: NumPy throughout
        score = None if row is None else self.update.score_host_row(row, self.scaler.transform_row)
        if score is not None:
            return score
        xb, yb, _ = self.guard.prepare(self.guard.one(x), None if y is None else [y])
        z = self.scaler.transform(xb)  # no rows: a row the guard skips, which scores NaN as in a batch
        score = self.update.score_row(z) if yb is None and len(xb) else None
        if score is None and len(xb):
            with torch.no_grad():
                score = float(host_read(self.objective(self.update.output(z), z, yb))[0])
        return math.nan if score is None else score

    def predict_many(self, x: Any) -> torch.Tensor:
        """The model's output on a batch, with no update: for the reconstruction objective, the reconstruction
        in the input's own units (the scaling undone)."""
        xb, _, _ = self.guard.prepare(x, None, labels_required=False)
        with torch.no_grad():
            out = self.model(self.scaler.transform(xb))
            return self.scaler.inverse(out) if self.objective is reconstruction else out

    def _sync(self) -> None:
        """End the period: read the pending device values once (in a group that averages, average first); count
        skipped updates, recover if needed, feed the detector."""
        self._act(self.collective.settle(self))

    def _act(self, period: Period | None) -> None:
        """Act on what a period learned, alike on every worker of a group."""
        if period is None:
            return
        if period.skipped:
            self.update.skipped.zero_()
        self._clipped = period.clipped
        if period.counts is not None:  # the group's counts, which this worker's own (its rows only) differ from
            self.steps, self.samples_seen = period.counts
        self.recovery.observe(period.skipped, period.updates * self.settings.steps_per_batch, self.update.last_rows)
        self.regimes.observe(period.losses)
        self.collective.agreed(self)

    def flush(self) -> None:
        """Process the device values not read yet (the detector sees every step's loss)."""
        self._sync()

    def consolidate(self) -> None:
        """Consolidate now: Omega absorbs the current regime's importance, theta* anchors the weights (in a group
        that averages, every worker calls it at once: the group averages first)."""
        before = self.synapses.consolidations
        self._act(self.collective.agree(self))
        if self.synapses.consolidations == before:  # else the detector just did, at this very step
            self.regimes.consolidate()
            self.collective.agreed(self)

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole state: model, optimizer, Omega, theta*, running importance, detector, buffer, counters.

        Made of tensors, numbers, strings, lists and dicts only, so ``torch.load(..., weights_only=True)``
        reads it back.
        """
        self._sync()
        regimes = self.regimes.state_dict(self.synapses.names)
        proximal = self.proximal.state_dict()
        guard = self.guard.state_dict()
        return {
            "format": STATE_FORMAT,
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "synapses": self.synapses.state_dict(),
            "detector": regimes["detector"],
            "buffer": self.buffer.state_dict(),
            "held_delta": regimes["held_delta"],
            "prox_owed": proximal["owed"],
            "prox_due": proximal["due"],
            "counters": self.counters,
            "samples_seen": self.samples_seen,
            "steps": self.steps,
            "sample_shape": guard["sample_shape"],
            "feature_names": guard["feature_names"],
            "events": list(self.events),
            "scaler": self.scaler.state_dict(),
            "replay": self.replay.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state made by :meth:`state_dict`; tensors move to this learner's device."""
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported learner state format {state.get('format')!r}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.synapses.load_state_dict(state["synapses"])
        buffer = dict(state["buffer"])
        for key in ("x", "y", "loss"):
            if buffer[key] is not None:
                buffer[key] = buffer[key].to(self.device)
        self.buffer.load_state_dict(buffer)
        counters = state["counters"]
        self.regimes.load_state_dict({"detector": state["detector"], "held_delta": state.get("held_delta"),
                                      "plateaus": counters.get("plateaus", 0), "peaks": counters.get("peaks", 0)},
                                     self.synapses.names, self.device)
        self.proximal.load_state_dict({"owed": state["prox_owed"], "due": state["prox_due"]})
        self.recovery.load_state_dict(counters)
        self.guard.load_state_dict({"sample_shape": state["sample_shape"], "feature_names": state["feature_names"],
                                    "rejected": counters.get("rejected_samples", 0)})
        if state.get("scaler") is not None:  # states written before input scaling have none
            self.scaler.load_state_dict(state["scaler"])
            self._clipped = int(host_read(self.scaler.clipped))
        if state.get("replay") is not None:
            self.replay.load_state_dict(state["replay"], self.device)
        self.samples_seen = int(state["samples_seen"])
        self.steps = int(state["steps"])
        self.events.replace(state["events"])
        self.update.skipped.zero_()
        self.collective.restart(self)

    def state_nbytes(self) -> dict[str, int]:
        """Bytes held by the learner beyond the model: the synapses (Omega, theta*, running importance), the
        weights of a plateau that holds (``consolidate_at="peak"``: ``held`` now, ``held_max`` while one holds) and
        the hard buffer."""
        params = sum(p.numel() * p.element_size() for p in self.synapses.params)
        held, held_max = self.regimes.held_nbytes()
        return {"parameters": params, "synapses": self.synapses.nbytes(), "held": held, "held_max": held_max,
                "buffer": self.buffer.nbytes(), "replay": self.replay.nbytes()}


OnlineMAS.__init__.__signature__ = learner_signature()
