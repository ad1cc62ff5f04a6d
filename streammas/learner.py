"""OnlineMAS: one online step on a micro-batch of an unlabeled stream, remembering what mattered."""

from __future__ import annotations

import functools
import inspect
import math
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from streammas.buffer import HardBuffer
from streammas.fused import FusedChain
from streammas.hostsync import host_read
from streammas.importance import METHODS, SensitivityProbe, hebbian_importance, output_sensitivity
from streammas.objectives import Objective, resolve_objective
from streammas.plateau import HOLD, PEAK, PLATEAU, PlateauConfig, PlateauDetector
from streammas.synapses import Synapses

EVENT_KINDS = ("plateau", "peak", "consolidation", "skipped_update", "rejected")
IMPORTANCE_SOURCES = ("stream", "buffer")
CONSOLIDATE_AT = ("plateau", "peak")
BAD_INPUT_POLICIES = ("raise", "skip")


@dataclass(frozen=True)
class Event:
    """Something the learner noticed: a plateau, a peak, a consolidation, a skipped update, rejected input."""

    kind: str
    step: int
    samples_seen: int
    value: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def learner_defaults() -> dict[str, Any]:
    """The default settings of :class:`OnlineMAS`, by keyword.

    >>> learner_defaults()["reg_lambda"]
    0.15
    """
    signature = inspect.signature(OnlineMAS.__init__)
    return {name: p.default for name, p in signature.parameters.items() if p.default is not inspect.Parameter.empty}


def _make_optimizer(optimizer: str | Callable, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if callable(optimizer):
        return optimizer(params)
    kinds = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}
    if optimizer not in kinds:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose 'sgd', 'adam' or pass a callable")
    try:
        # The fused kernels can skip a step on a device-side flag (found_inf), so a non-finite loss is
        # handled without a device-to-host synchronisation.
        return kinds[optimizer](params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return kinds[optimizer](params, lr=lr)


class OnlineMAS:
    """An online learner for unlabeled streams with Memory Aware Synapses.

    Each :meth:`learn_many` call scores the batch (the prequential per-sample loss, computed before the
    update and returned to the caller), updates the model on the batch plus the hard buffer, applies the
    regulariser as a stable proximal step, and folds the batch's output sensitivity into a running
    importance. When the loss settles on a plateau, the important weights are consolidated: Omega absorbs
    the regime's importance and theta* anchors the current weights. See ``DESIGN.md`` for the definitions.

    Parameters
    ----------
    model: the module to train; the learner's state lives on its device.
    objective: ``"reconstruction"``, ``"classification"`` (labels required) or ``(output, x, y) -> losses``.
    optimizer: ``"sgd"``, ``"adam"`` or a callable ``params -> torch.optim.Optimizer``.
    reg_lambda: strength of the regulariser ``lambda * sum Omega (theta - theta*)^2``; 0 disables it.
    hard_buffer: how many high-loss samples are kept and mixed into each update; 0 disables the buffer.
    hard_buffer_decay: a held sample competes for its place with its current loss, but at most with its last
        key times this, so that an outlier the model cannot fit gives way after a while instead of being
        replayed at every step (1: the plain highest-loss buffer, which diverges on heavy-tailed streams).
    importance_every: measure the online importance on every k-th batch. The running importance is a mean
        over a whole regime, so a sample of its batches estimates it well: with 16 the evaluation's results are
        those of measuring every batch (README, results), for a sixteenth of the cost (``streammas bench step``).
    importance_source: ``"stream"`` (online running average) or ``"buffer"`` (measured on the hard buffer
        at consolidation time, the task-free paper's choice).
    importance_method: see :func:`streammas.importance.output_sensitivity`, or ``"hebbian"`` for the local
        rule that needs no backward pass.
    importance_output: name of the submodule whose output sensitivity is measured (``None``: the model's).
    consolidation: ``"mean"``, ``"sum"`` or ``"ema"``: how each regime's importance enters Omega.
    omega_normalization: ``"mean"``, ``"max"``, ``"tensor"`` or ``"none"``: rescaling of a regime's importance
        (see :class:`~streammas.synapses.Synapses`).
    consolidate_at: ``"plateau"`` consolidates when a plateau is detected; ``"peak"`` (the default) keeps a copy
        of the weights, refreshed while the plateau holds, and when the next peak arrives merges the regime's
        importance into Omega and anchors theta* at that copy: the end of the regime, not a half-learned model.
    plateau: a :class:`~streammas.plateau.PlateauConfig`, a dict of its fields, or a detector object with
        ``update(value) -> "plateau" | "peak" | "hold" | None`` (for example ``RiverDriftDetector``).
    steps_per_batch: optimisation steps on each batch.
    sync_every: the host reads device values (loss window, counters) once every this many steps.
    prox_every: apply the regulariser's proximal step once every this many steps, for all of them: as stable,
        that many times cheaper, and with 16 the evaluation's results are those of one step per update.
    compact_state: keep Omega, and the weights of a plateau that holds (as their difference from theta*), in
        bfloat16: the state is 2.5x the parameters' bytes, 3x while a plateau holds, instead of 3x and 4x;
        the running importance and theta* stay in the parameters' dtype. Applies to float32 and float64 models.
    fused_step: where the model is a chain of linear layers and activations trained by plain SGD on the
        reconstruction error, take the hand-derived step of :class:`~streammas.fused.FusedChain` (autograd's
        numbers up to rounding, with the importance in the same backward pass); ``False``: always autograd.
    recover_after: after this many updates in a row skipped for a non-finite loss, the learner checks whether
        its weights have diverged, and if theta* (the initial weights before the first consolidation) scores the
        same batch finitely, restores theta* (event ``recovered``); ``0`` never does. Otherwise a learner whose
        weights ran away would skip every update from then on; bad input alone (theta* fails on it too) leaves
        the weights untouched.
    on_bad_input: ``"raise"`` a ValueError naming the bad samples, or ``"skip"`` them (counted).
    callback: called with each :class:`Event`.
    device: where the model and all learner state live (``None``: the model's device).

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

    def __init__(
        self,
        model: nn.Module,
        *,
        objective: str | Objective = "reconstruction",
        optimizer: str | Callable[[list[nn.Parameter]], torch.optim.Optimizer] = "sgd",
        lr: float = 0.05,
        reg_lambda: float = 0.15,
        hard_buffer: int = 0,
        hard_buffer_decay: float = 0.8,
        importance_every: int = 16,
        importance_source: str = "stream",
        importance_method: str = "auto",
        importance_output: str | None = None,
        consolidation: str = "mean",
        ema_alpha: float = 0.5,
        omega_normalization: str = "mean",
        consolidate_at: str = "peak",
        plateau: PlateauConfig | Mapping | Any | None = None,
        steps_per_batch: int = 1,
        sync_every: int = 16,
        prox_every: int = 16,
        fused_step: bool = True,
        compact_state: bool = True,
        recover_after: int = 64,
        on_bad_input: str = "raise",
        callback: Callable[[Event], None] | None = None,
        device: str | torch.device | None = None,
        max_events: int = 1000,
    ) -> None:
        if reg_lambda < 0 or not math.isfinite(reg_lambda):
            raise ValueError(f"reg_lambda must be a finite number >= 0, got {reg_lambda}")
        if importance_source not in IMPORTANCE_SOURCES:
            raise ValueError(f"importance_source must be one of {IMPORTANCE_SOURCES}, got {importance_source!r}")
        if importance_source == "buffer" and hard_buffer == 0:
            raise ValueError("importance_source='buffer' needs a hard buffer: set hard_buffer > 0")
        if importance_method not in (*METHODS, "hebbian"):
            raise ValueError(f"unknown importance_method {importance_method!r}")
        if consolidate_at not in CONSOLIDATE_AT:
            raise ValueError(f"consolidate_at must be one of {CONSOLIDATE_AT}, got {consolidate_at!r}")
        if on_bad_input not in BAD_INPUT_POLICIES:
            raise ValueError(f"on_bad_input must be one of {BAD_INPUT_POLICIES}, got {on_bad_input!r}")
        for name, value in (("importance_every", importance_every), ("steps_per_batch", steps_per_batch),
                            ("sync_every", sync_every), ("prox_every", prox_every)):
            if int(value) < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if int(recover_after) < 0:
            raise ValueError(f"recover_after must be >= 0 (0: never), got {recover_after}")
        if device is not None:
            model = model.to(device)
        first = next(model.parameters(), None)
        if first is None:
            raise ValueError("the model has no parameters to learn")
        self.model = model
        self.device = first.device
        self.dtype = first.dtype
        self.objective, self.needs_labels = resolve_objective(objective)
        self.reg_lambda = float(reg_lambda)
        self.importance_every = int(importance_every)
        self.importance_source = importance_source
        self.importance_method = importance_method
        self.importance_output = importance_output
        self.consolidate_at = consolidate_at
        self.steps_per_batch = int(steps_per_batch)
        self.sync_every = int(sync_every)
        self.prox_every = int(prox_every)
        self.on_bad_input = on_bad_input
        self.recover_after = int(recover_after)
        self.callback = callback

        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._names = [n for n, _ in named]
        self.optimizer = _make_optimizer(optimizer, [p for _, p in named], lr)
        self._guarded_step = bool(getattr(self.optimizer, "_step_supports_amp_scaling", False))
        index = {id(p): i for i, (_, p) in enumerate(named)}
        self._group_indices = [[index[id(p)] for p in g["params"] if id(p) in index]
                               for g in self.optimizer.param_groups]
        wide = self.dtype in (torch.float32, torch.float64)
        self._held_dtype = torch.bfloat16 if compact_state and wide else self.dtype
        self.synapses = Synapses(named, consolidation=consolidation, ema_alpha=ema_alpha,
                                 normalization=omega_normalization, omega_dtype=self._held_dtype)
        # The per-layer importance rules, set up once; the training forward serves the importance pass when the
        # model's train-mode forward equals its eval-mode one (see SensitivityProbe.shares_forward).
        self._probe = (SensitivityProbe(model, output=importance_output, hebbian=importance_method == "hebbian")
                       if importance_method in ("auto", "fast", "hebbian") else None)
        self._share_forward = True
        self._fused = FusedChain.build(model, self.objective, self.optimizer) if fused_step else None
        if self._fused is not None:
            position = {id(p): i for i, p in enumerate(self.synapses.params)}
            self._fused_index = [position[id(p)] for p in self._fused.parameters()]
        self.buffer = HardBuffer(hard_buffer, hard_buffer_decay)
        if plateau is None or isinstance(plateau, (PlateauConfig, Mapping)):
            self.detector = PlateauDetector(plateau)
        else:
            self.detector = plateau
        # the weights of a plateau that holds, as their difference from theta* (which stays put meanwhile)
        self._held_delta: list[torch.Tensor] | None = None

        self.samples_seen = 0
        self.steps = 0
        self.sample_shape: tuple[int, ...] | None = None
        self.feature_names: list[str] | None = None
        self.counters: dict[str, int] = {k: 0 for k in ("plateaus", "peaks", "consolidations",
                                                         "skipped_updates", "rejected_samples", "recoveries")}
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._pending: list[torch.Tensor] = []
        self._skipped = torch.zeros((), dtype=torch.int64, device=self.device)
        self._prox_owed: float | torch.Tensor = 0  # optimizer steps whose proximal step is still to be applied
        self._prox_due = 0
        self._dead_steps = 0  # updates skipped in a row, as of the last host read
        self._last_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None  # what the last update learned

    # -- public views -----------------------------------------------------------------------------------------
    @property
    def consolidations(self) -> int:
        return self.synapses.consolidations

    @property
    def importance(self) -> dict[str, torch.Tensor]:
        """The consolidated Omega, by parameter name."""
        return dict(zip(self._names, self.synapses.omega))

    @property
    def anchor(self) -> dict[str, torch.Tensor]:
        """theta*, the weights consolidated last, by parameter name."""
        return dict(zip(self._names, self.synapses.anchor))

    @property
    def running_importance(self) -> dict[str, torch.Tensor]:
        """The importance measured since the last consolidation (not yet part of Omega)."""
        return dict(zip(self._names, self.synapses.running))

    # -- input ---------------------------------------------------------------------------------------------------
    def _to_tensor(self, x: Any) -> torch.Tensor:
        if isinstance(x, torch.Tensor):
            if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                         torch.uint8, torch.bool)):
                raise ValueError(f"samples must be real numbers, got a tensor of dtype {x.dtype}")
            return x.detach()
        array = np.asarray(x)
        if array.dtype.kind not in "fiub":
            raise ValueError(f"samples must be real numbers, got an array of dtype {array.dtype}")
        return torch.from_numpy(np.ascontiguousarray(array))

    def _prepare(
        self, x: Any, y: Any, labels_required: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Validate a batch; returns (x, y) on the device and the indices kept (None when all are kept)."""
        xt = self._to_tensor(x)
        if xt.dim() < 2:
            raise ValueError(f"learn_many/score_many expect a batch [B, ...]; got shape {tuple(xt.shape)} "
                             "(use learn_one for a single sample)")
        batch = xt.shape[0]
        yt = None
        if y is not None:
            yt = self._to_tensor(y).reshape(-1)
            if yt.shape[0] != batch:
                raise ValueError(f"got {batch} samples but {yt.shape[0]} labels")
        elif self.needs_labels and labels_required:
            raise ValueError("this objective needs labels: pass y")
        shape = tuple(xt.shape[1:])
        if self.sample_shape is not None and shape != self.sample_shape:
            return self._reject(xt, yt, torch.zeros(batch, dtype=torch.bool),
                                f"samples have shape {shape}, the stream's samples have shape {self.sample_shape}")
        finite = self._finite_rows(xt.reshape(batch, -1))
        if finite is None and (yt is None or not yt.is_floating_point()):  # the common case: nothing to look at
            if self.sample_shape is None:
                self.sample_shape = shape
            return self._to_device(xt), self._labels(yt), None
        if finite is None:
            finite = torch.ones(batch, dtype=torch.bool, device=xt.device)
        if yt is not None and yt.is_floating_point():
            finite &= torch.isfinite(yt.to(finite.device))
        ok = torch.tensor(host_read(finite), dtype=torch.bool) if xt.device.type != "cpu" else finite
        if self.sample_shape is None and bool(ok.any()):
            self.sample_shape = shape
        if not bool(ok.all()):
            return self._reject(xt, yt, ok, "samples contain NaN or Inf")
        return self._to_device(xt), self._labels(yt), None

    def _to_device(self, xt: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A batch on the learner's device (in the model's dtype unless told). From host memory to a GPU the copy
        goes through pinned memory and does not block: from pageable memory it waits for the device's queue."""
        dtype = self.dtype if dtype is None else dtype
        if self.device.type == "cuda" and xt.device.type == "cpu":
            return xt.to(dtype).pin_memory().to(self.device, non_blocking=True)
        return xt.to(self.device, dtype)

    @staticmethod
    def _finite_rows(rows: torch.Tensor) -> torch.Tensor | None:
        """Which rows hold only finite numbers (once cast to float32, as the model will see them); ``None``
        when they all do, as far as host-side input can tell at the price of one reduction."""
        if rows.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool):
            return None
        # The sum is finite only if every element is; a non-finite sum may also be an overflow of finite values,
        # so then (rarely) the exact test decides. One reduction instead of a mask.
        if (rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float16, torch.bfloat16)
                and math.isfinite(float(rows.sum(dtype=torch.float32)))):
            return None
        return torch.isfinite(rows.float()).all(dim=1)

    def _labels(self, yt: torch.Tensor | None) -> torch.Tensor | None:
        return None if yt is None else self._to_device(yt, yt.dtype)

    def _reject(self, xt: torch.Tensor, yt: torch.Tensor | None, ok: torch.Tensor, why: str):
        bad = (~ok).nonzero().flatten().tolist()
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        if self.on_bad_input == "raise":
            raise ValueError(f"{len(bad)} of {xt.shape[0]} samples rejected ({why}): indices [{shown}]")
        self.counters["rejected_samples"] += len(bad)
        self._emit("rejected", float(len(bad)))
        keep = ok.nonzero().flatten()
        x_keep = xt[keep.to(xt.device)].to(self.device, self.dtype) if len(keep) else xt[:0].to(self.device)
        y_keep = None if yt is None else self._labels(yt[keep.to(yt.device)])
        return x_keep, y_keep, keep

    def _vector(self, x: Mapping[str, Any]) -> np.ndarray:
        if self.feature_names is None:
            self.feature_names = list(x)
        # Features absent from a sample are 0 (river's sparse convention); features never seen before are
        # not part of the model's input and are left out.
        return np.array([float(x.get(name, 0.0)) for name in self.feature_names], dtype=np.float32)

    @staticmethod
    def _spread(values: torch.Tensor, keep: torch.Tensor | None, batch: int) -> torch.Tensor:
        if keep is None:
            return values
        full = torch.full((batch,), math.nan, dtype=values.dtype, device=values.device)
        full[keep.to(values.device)] = values
        return full

    # -- learning ----------------------------------------------------------------------------------------------------
    def learn_many(self, x: Any, y: Any = None) -> torch.Tensor:
        """Score a batch (prequential per-sample loss, returned on the learner's device), then learn from it.

        Rejected samples (``on_bad_input="skip"``) score NaN and are not learned.
        """
        batch = len(x)
        xb, yb, keep = self._prepare(x, y)
        if xb.shape[0] == 0:
            return torch.full((batch,), math.nan, device=self.device)
        measure = self.reg_lambda > 0 and self.importance_source == "stream" and self.steps % self.importance_every == 0
        scores, score_mean, measured = self._update(xb, yb, measure)
        if measure and not measured:
            weight = functools.partial(self.synapses.fold_weight, xb.shape[0])
            if self._probe is None or not self._probe.measure_into(xb, self.synapses.running, weight):
                self.synapses.accumulate(self._measure(xb), xb.shape[0])
        self._pending.append(score_mean)
        self.steps += 1
        self.samples_seen += xb.shape[0]
        if self.steps % self.sync_every == 0:
            self._sync()
        return self._spread(scores, keep, batch)

    def _update(self, xb: torch.Tensor, yb: torch.Tensor | None,
                measure: bool = False) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The update; returns the prequential scores, their mean, and whether the batch's importance was folded in
        already, from the last step's own forward pass (measured before that step's update, on the batch's rows
        only)."""
        x_all, y_all = self.buffer.extend(xb, yb)
        self._last_rows = (x_all, y_all)
        scores = score_mean = None
        measured = False
        share = measure and self._share_forward and self._probe is not None and self._probe.shares_forward()
        if self._fused is not None and self._fused.applicable(x_all):
            return self._fused_update(xb, x_all, y_all, share and self.importance_output is None
                                      and self.importance_method != "hebbian")
        for step in range(self.steps_per_batch):
            capture = share and step == self.steps_per_batch - 1
            if capture:  # the probe's hooks exist only for this forward pass
                with self._probe.capture():
                    output = self.model(x_all)
            else:
                output = self.model(x_all)
            losses = self.objective(output, x_all, y_all)
            if scores is None:
                scores = losses[: xb.shape[0]].detach()
            loss = losses.mean()
            if score_mean is None:  # without a buffer the first step's loss is the scores' mean: no extra kernel
                score_mean = loss.detach() if x_all is xb else scores.mean()
            finite = torch.isfinite(loss)
            if capture:
                weight = functools.partial(self.synapses.fold_weight, xb.shape[0])
                measured = self._probe.ready(x_all.shape[0]) and self._probe.fold(
                    xb.shape[0], self.synapses.running, weight, retain_graph=True)
                self._probe.release()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._step(finite)
        self.buffer.update(x_all, y_all, losses.detach())
        return scores, score_mean, measured

    def _fused_update(self, xb: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor | None,
                      measure: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """:meth:`_update` by the hand-derived step; the importance, when asked for, comes from the last step."""
        scores = score_mean = None
        measured = False
        for step in range(self.steps_per_batch):
            fold = None
            if measure and step == self.steps_per_batch - 1:
                running = self.synapses.running
                fold = ([running[i] for i in self._fused_index],
                        functools.partial(self.synapses.fold_weight, xb.shape[0]))
            result = self._fused.step(x_all, xb.shape[0], fold)
            if scores is None:
                scores = result.losses[: xb.shape[0]]
                score_mean = result.mean if x_all is xb else scores.mean()
            measured = measured or result.measured
            self._skipped += ~result.finite
            if self.synapses.consolidations and self.reg_lambda:
                self._regularise(result.finite.to(self.dtype))
        self.buffer.update(x_all, y_all, result.losses)
        return scores, score_mean, measured

    def _step(self, finite: torch.Tensor) -> None:
        """Optimizer step and proximal regulariser, both skipped when the loss is not finite."""
        if self._guarded_step:
            bad = ~finite
            self.optimizer.found_inf = bad.float()
            self.optimizer.grad_scale = None
            self.optimizer.step()
            self._skipped += bad
        else:
            if not host_read(finite):
                self._skipped += 1
                return
            self.optimizer.step()
        if self.synapses.consolidations and self.reg_lambda:
            self._regularise(finite.to(self.dtype) if self._guarded_step else None)

    def _regularise(self, gate: torch.Tensor | None) -> None:
        """The proximal step of the regulariser, applied once every ``prox_every`` steps for all the steps since
        the last one (a proximal step of k times the step size: as stable as one per step, k times cheaper).

        ``gate`` (a device tensor, 1 or 0) is whether this step's update was applied: a skipped step applies no
        proximal step either, and what is owed waits for the next one; all without a host sync.
        """
        self._prox_owed = self._prox_owed + (1 if gate is None else gate)
        self._prox_due += 1
        if self._prox_due < self.prox_every:
            return
        self._prox_due = 0
        steps = self._prox_owed if gate is None else self._prox_owed * gate
        # The gradients are dead after the optimizer step: their memory is the regulariser's workspace.
        self._proximal(steps, [p.grad for p in self.synapses.params])
        self._prox_owed = 0 if gate is None else self._prox_owed * (1 - gate)

    def _proximal(self, steps: float | torch.Tensor, grads: list[torch.Tensor | None]) -> None:
        for group, indices in zip(self.optimizer.param_groups, self._group_indices):
            workspace = [grads[i] for i in indices]
            if any(g is None or g.is_sparse for g in workspace):
                workspace = None
            self.synapses.proximal_step(self.reg_lambda, group["lr"], steps, indices, workspace)
        for p in self.synapses.params:
            p.grad = None

    def _settle_regulariser(self) -> None:
        """Apply the proximal steps still owed, before Omega and theta* change."""
        if self.synapses.consolidations and self.reg_lambda and self._prox_due:
            self._proximal(self._prox_owed, [None] * len(self.synapses.params))
        self._prox_owed, self._prox_due = 0, 0

    def _measure(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.importance_method == "hebbian":
            imp = hebbian_importance(self.model, x)
        else:
            imp = output_sensitivity(self.model, x, output=self.importance_output, method=self.importance_method)
        return [imp[n] for n in self._names]

    def score_many(self, x: Any, y: Any = None) -> torch.Tensor:
        """Per-sample loss of a batch, with no update."""
        batch = len(x)
        xb, yb, keep = self._prepare(x, y)
        if xb.shape[0] == 0:
            return torch.full((batch,), math.nan, device=self.device)
        with torch.no_grad():
            return self._spread(self.objective(self.model(xb), xb, yb), keep, batch)

    def predict_many(self, x: Any) -> torch.Tensor:
        """The model's output on a batch, with no update."""
        xb, _, _ = self._prepare(x, None, labels_required=False)
        with torch.no_grad():
            return self.model(xb)

    def _one(self, x: Any) -> np.ndarray | torch.Tensor:
        if isinstance(x, Mapping):
            return self._vector(x)[None]
        return self._to_tensor(x).unsqueeze(0)

    def learn_one(self, x: Any, y: Any = None) -> float:
        """Learn one sample (array, tensor or dict of features); returns its prequential loss."""
        return float(host_read(self.learn_many(self._one(x), None if y is None else [y]))[0])

    def score_one(self, x: Any, y: Any = None) -> float:
        """The loss of one sample, with no update."""
        return float(host_read(self.score_many(self._one(x), None if y is None else [y]))[0])

    # -- plateaus and consolidation -------------------------------------------------------------------------------
    def _sync(self) -> None:
        """Read the pending device values once, feed the detector and act on what it says."""
        if not self._pending:
            return
        values = host_read(torch.stack([*[v.float() for v in self._pending], self._skipped.float()]))
        self._pending.clear()
        skipped = int(values.pop())
        if skipped:
            self._skipped.zero_()
            self.counters["skipped_updates"] += skipped
            self._emit("skipped_update", float(skipped))
        window = len(values) * self.steps_per_batch
        self._dead_steps = self._dead_steps + skipped if skipped >= window else 0
        if self.recover_after and self._dead_steps >= self.recover_after:
            self._dead_steps = 0
            self._recover()
        # The weights are read once, after the whole run of values: they stand for the plateau only if the
        # detector said "hold" to every value since the plateau (or since the run began), never after a rise.
        # A peak consolidates only a plateau whose weights were taken that way: a plateau found so late that the
        # loss rose within the same run has none, and anchoring anything else (the weights of the regime that has
        # just begun, or those of an earlier time) would freeze weights that are good for no regime.
        holding = True
        found = False
        for value in values:
            decision = self.detector.update(value)
            if decision == PLATEAU:
                self.counters["plateaus"] += 1
                self._emit("plateau", value)
                if self.consolidate_at == "plateau":
                    self.consolidate()
                else:
                    found = True
                holding = True
            elif decision == PEAK:
                self.counters["peaks"] += 1
                self._emit("peak", value)
                if self._held_delta is not None:
                    held, self._held_delta = self._held_delta, None
                    self._consolidate(None, shift=held)
                found = holding = False
            elif decision != HOLD:
                holding = False
        if holding and (found or self._held_delta is not None):
            self._follow_plateau()

    def _recover(self) -> None:
        """Restore theta* if the weights have diverged: theta* scores the last batch finitely where they do not.

        After a run of skipped updates the cause is either the weights (they ran away, and every loss now
        overflows) or the input (it overflows any model). Only in the first case are the weights replaced; the
        optimizer's state and the regime's running importance, both built from the runaway weights, restart."""
        if self._last_rows is None:
            return
        x, y = self._last_rows
        with torch.no_grad():
            now = self.objective(self.model(x), x, y).mean()
            anchored = {n: a for n, a in zip(self.synapses.names, self.synapses.anchor)}
            before = self.objective(torch.func.functional_call(self.model, anchored, (x,)), x, y).mean()
            if bool(host_read(torch.isfinite(now) | ~torch.isfinite(before))):
                return
            torch._foreach_copy_([p.detach() for p in self.synapses.params], self.synapses.anchor)
        self.optimizer.state.clear()
        self.synapses.reset_running()
        self._prox_owed, self._prox_due = 0, 0
        self.counters["recoveries"] += 1
        self._emit("recovered", float(before))

    def _follow_plateau(self) -> None:
        """Keep the weights of a plateau that holds (a copy, refreshed while it holds), to be anchored at the next
        peak; theta* stays where it is meanwhile, so that the regulariser still protects the earlier regimes.
        The regime's importance keeps accumulating; with ``importance_source="buffer"`` it is measured on the
        buffer now, while the buffer still holds this regime's samples."""
        params, anchor = self.synapses.params, self.synapses.anchor
        if self._held_delta is None:
            self._held_delta = [torch.empty_like(p, dtype=self._held_dtype, memory_format=torch.contiguous_format)
                                for p in params]
        for held, p, a in zip(self._held_delta, params, anchor):
            torch.sub(p.detach(), a, out=held)  # no full-size temporary: the difference is rounded as it is written
        if self.importance_source == "buffer":
            torch._foreach_copy_(self.synapses.running, self._buffer_importance())

    def _buffer_importance(self) -> list[torch.Tensor]:
        if not len(self.buffer):
            return [torch.zeros_like(t) for t in self.synapses.running]
        return self._measure(self.buffer.x)

    def consolidate(self) -> None:
        """Consolidate now: Omega absorbs the current regime's importance, theta* anchors the weights."""
        self._held_delta = None
        importance = self._buffer_importance() if self.importance_source == "buffer" else None
        self._consolidate(importance)

    def _consolidate(self, importance: list[torch.Tensor] | None, *, shift: list[torch.Tensor] | None = None) -> None:
        self._settle_regulariser()
        self.synapses.consolidate(importance, shift=shift)
        self.counters["consolidations"] += 1
        self._emit("consolidation", None)

    def flush(self) -> None:
        """Process the device values not read yet (the detector sees every step's loss)."""
        self._sync()

    def _emit(self, kind: str, value: float | None) -> None:
        event = Event(kind, self.steps, self.samples_seen, value)
        self.events.append(event.as_dict())
        if self.callback is not None:
            self.callback(event)

    # -- state --------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The whole state: model, optimizer, Omega, theta*, running importance, detector, buffer, counters.

        Made of tensors, numbers, strings, lists and dicts only, so ``torch.load(..., weights_only=True)``
        reads it back.
        """
        self._sync()
        return {
            "format": 1,
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "synapses": self.synapses.state_dict(),
            "detector": self.detector.state_dict(),
            "buffer": self.buffer.state_dict(),
            "held_delta": None if self._held_delta is None else {
                n: d.clone() for n, d in zip(self._names, self._held_delta)},
            "prox_owed": float(host_read(torch.as_tensor(self._prox_owed))),
            "prox_due": self._prox_due,
            "counters": dict(self.counters),
            "samples_seen": self.samples_seen,
            "steps": self.steps,
            "sample_shape": None if self.sample_shape is None else list(self.sample_shape),
            "feature_names": self.feature_names,
            "events": list(self.events),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state made by :meth:`state_dict`; tensors move to this learner's device."""
        if state.get("format") != 1:
            raise ValueError(f"unsupported learner state format {state.get('format')!r}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.synapses.load_state_dict(state["synapses"])
        self.detector.load_state_dict(state["detector"])
        buffer = dict(state["buffer"])
        for key in ("x", "y", "loss"):
            if buffer[key] is not None:
                buffer[key] = buffer[key].to(self.device)
        self.buffer.load_state_dict(buffer)
        owed = float(state["prox_owed"])
        self._prox_owed = torch.tensor(owed, dtype=self.dtype, device=self.device) if self._guarded_step else owed
        self._prox_due = int(state["prox_due"])
        self._held_delta = None
        if state.get("held_delta") is not None:
            self._held_delta = [state["held_delta"][n].to(self.device, self._held_dtype) for n in self._names]
        elif state.get("held_theta") is not None:  # written before the weights were kept as a difference
            self._held_delta = [(state["held_theta"][n].to(self.device, a.dtype) - a).to(self._held_dtype)
                                for n, a in zip(self._names, self.synapses.anchor)]
        self.counters.update({k: int(v) for k, v in state["counters"].items()})
        self.samples_seen = int(state["samples_seen"])
        self.steps = int(state["steps"])
        self.sample_shape = None if state["sample_shape"] is None else tuple(state["sample_shape"])
        self.feature_names = None if state["feature_names"] is None else list(state["feature_names"])
        self.events.clear()
        self.events.extend(state["events"])
        self._pending.clear()
        self._skipped.zero_()

    def state_nbytes(self) -> dict[str, int]:
        """Bytes held by the learner beyond the model: the synapses (Omega, theta*, running importance), the
        weights of a plateau that holds (``consolidate_at="peak"``: ``held`` now, ``held_max`` while one holds) and
        the hard buffer."""
        params = sum(p.numel() * p.element_size() for p in self.synapses.params)
        held = 0 if self._held_delta is None else sum(t.numel() * t.element_size() for t in self._held_delta)
        held_max = 0
        if self.consolidate_at == "peak":
            held_max = sum(p.numel() for p in self.synapses.params) * self._held_dtype.itemsize
        return {"parameters": params, "synapses": self.synapses.nbytes(), "held": held, "held_max": held_max,
                "buffer": self.buffer.nbytes()}
