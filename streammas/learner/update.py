"""The update engines: one learner step on a batch, by autograd or by the hand-derived chain step.

An engine scores the batch (the prequential per-sample loss, before the update), takes the optimizer's
steps on the batch plus what the memory replays and the hard buffer, has the proximal schedule regularise each
applied step, folds the batch's importance into the running mean when asked, and refreshes the hard buffer. A
step whose loss is not finite is skipped and counted on the device (:attr:`AutogradUpdate.skipped`); the learner
reads the count with its other device values.

One step loop serves every case. A *gradient source* writes the gradients of the step's loss (autograd, or the
hand-derived chain of :mod:`streammas.learner.fused`, which with SGD may also apply the update itself), as a sum
over this learner's rows divided by the step's row count; the learner's collective
(:mod:`streammas.collective`) then sums the gradients, the losses and the importance over the workers that learn
the step together (alone: nothing to do), and the optimizer steps on identical numbers everywhere.

:func:`make_update` picks the engine at construction: :class:`FusedUpdate` where the model is a chain of linear
layers and activations trained by SGD or Adam on the reconstruction error, :class:`AutogradUpdate` otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn

from streammas.backend.adam_kernel import OptimizerStep
from streammas.backend.compat import skips_on_device
from streammas.backend.hostsync import cpu_read, host_read
from streammas.collective.alone import Alone, StepRows
from streammas.learner.buffer import HardBuffer
from streammas.learner.fused import FusedChain
from streammas.learner.host_forward import HostForward
from streammas.learner.meter import ImportanceMeter
from streammas.learner.proximal import ProximalSchedule
from streammas.learner.replay import ReplayMemory

Scores = tuple[torch.Tensor, torch.Tensor]


class Update(Protocol):
    """One learner step: ``update(rows, x, measure) -> (scores, their mean)``, both on the device.

    Calling an engine scores the step's rows (``rows``, a :class:`~streammas.collective.alone.StepRows`, whose ``x``
    it is given, standardised by its ``scale`` together with what the memory replays), learns them with the replayed
    rows and the hard buffer's, and folds their importance when ``measure`` is true. :class:`AutogradUpdate` and
    :class:`FusedUpdate` conform; :func:`make_update` picks one.

    Attributes
    ----------
    skipped : torch.Tensor
        Steps skipped for a non-finite loss, counted on the device (a 0-d int64 tensor).
    last_rows : tuple of (torch.Tensor, torch.Tensor or None) or None
        The rows the last call learned (the batch, the replayed samples and the buffer's), with their labels;
        ``None`` before the first call.

    Examples
    --------
    >>> from streammas.learner.objectives import reconstruction
    >>> from streammas.learner.synapses import Synapses
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> synapses = Synapses(model.named_parameters())
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> update: Update = make_update(model, reconstruction, optimizer, HardBuffer(0), ImportanceMeter(model, synapses),
    ...                              ProximalSchedule(synapses, optimizer, reg_lambda=0.1, every=1))
    >>> x = torch.rand(8, 4)
    >>> scores, mean = update(StepRows.own(x, None), x, measure=False)
    >>> scores.shape, bool(torch.isclose(mean, scores.mean())), int(update.skipped), update.last_rows[0].shape
    (torch.Size([8]), True, 0, torch.Size([8, 4]))
    >>> bad = torch.full((8, 4), float("inf"))
    >>> _ = update(StepRows.own(bad, None), bad, measure=False)  # a non-finite loss: no step
    >>> int(update.skipped)
    1
    """

    skipped: torch.Tensor
    last_rows: tuple[torch.Tensor, torch.Tensor | None] | None

    def __call__(self, rows: StepRows, x: torch.Tensor, measure: bool) -> Scores: ...


class AutogradUpdate:
    """The step by autograd, for any model, objective and optimizer.

    Parameters
    ----------
    model : torch.nn.Module
        The model to train.
    objective : callable
        ``(output, x, y) -> per-sample losses`` (see :mod:`streammas.learner.objectives`).
    optimizer : torch.optim.Optimizer
        The optimizer of the model's trained parameters.
    buffer : HardBuffer
        The hard buffer whose rows join each update.
    meter : ImportanceMeter
        Measures the batch's importance.
    proximal : ProximalSchedule
        The regulariser's proximal step after each applied step.
    steps_per_batch : int, default 1
        Optimisation steps on each batch.
    replay : ReplayMemory or None, default None
        Past samples replayed beside each batch (one per row, once it holds any); ``None``: none.
    collective : Alone or None, default None
        The learner's collective (:mod:`streammas.collective`), which sums each step over the workers that learn
        it together; ``None``: alone.
    scale : callable or None, default None
        The learner's input scaling, applied to the batch and its replayed rows at once; ``None``: none.

    Examples
    --------
    >>> from streammas.learner.objectives import reconstruction
    >>> from streammas.learner.synapses import Synapses
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> synapses = Synapses(model.named_parameters())
    >>> optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    >>> update = AutogradUpdate(model, reconstruction, optimizer, HardBuffer(0), ImportanceMeter(model, synapses),
    ...                         ProximalSchedule(synapses, optimizer, reg_lambda=0.1, every=1))
    >>> x = torch.rand(16, 4)
    >>> first, _ = update(StepRows.own(x, None), x, measure=True)
    >>> for _ in range(100):
    ...     scores, mean = update(StepRows.own(x, None), x, measure=False)
    >>> bool(mean < first.mean()), synapses.running_count
    (True, 16)
    """

    def __init__(self, model: nn.Module, objective: Callable, optimizer: torch.optim.Optimizer, buffer: HardBuffer,
                 meter: ImportanceMeter, proximal: ProximalSchedule, steps_per_batch: int = 1,
                 replay: ReplayMemory | None = None, collective: Alone | None = None,
                 scale: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.model = model
        self.scale = scale
        self.objective = objective
        self.optimizer = optimizer
        self.buffer = buffer
        self.meter = meter
        self.proximal = proximal
        self.steps_per_batch = int(steps_per_batch)
        self.replay = replay
        self.collective = Alone() if collective is None else collective
        first = next(model.parameters())
        self.dtype = first.dtype
        # Fused optimizers skip a step on a device-side flag (found_inf): a non-finite loss needs no host sync.
        self.guarded = skips_on_device(optimizer)
        self.step_optimizer = OptimizerStep(optimizer)  # torch's fused Adam kernel without Optimizer.step around it
        self.skipped = torch.zeros((), dtype=torch.int64, device=first.device)
        self.last_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None  # what the last update learned

    def __call__(self, rows: StepRows, x: torch.Tensor, measure: bool) -> Scores:
        # Replayed samples for each row of the step, drawn for the whole step so that the workers of a group draw
        # alike and each keeps its own rows' draws; scaled with the batch, in one call.
        replaying = self.replay is not None and len(self.replay) > 0
        if replaying:
            x_all, y_all = self.replay.extend(x, rows.y, draws=rows.total, positions=rows.positions, scale=self.scale)
            z = x_all[:x.shape[0]]
        else:
            z = x if self.scale is None else self.scale(x)
            x_all, y_all = z, rows.y
        learned = x_all.shape[0]
        x_all, y_all = self.buffer.extend(x_all, y_all)
        self.last_rows = (x_all, y_all)
        # the step's loss: the sum over its rows, over every worker that learns it, divided by their count
        divisor = rows.total + (self.replay.draws(rows.total) if replaying else 0) + (x_all.shape[0] - learned)
        scores, score_mean, measured = self._steps(rows.total, z, x_all, y_all, divisor, measure)
        if measure and not measured:  # a separate eval-mode pass over the step's rows
            self.collective.measure_importance(self.meter, z, rows.total)
        return scores, score_mean

    def _steps(self, total: int, z: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor | None, divisor: int,
               measure: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The steps; returns the scores, their mean over the step, and whether the importance was folded from the
        last step's own forward pass (measured before that step's update, on the step's rows only)."""
        local = z.shape[0]
        share = measure and self.meter.can_share()
        scores = score_mean = losses = None
        for step in range(self.steps_per_batch):
            capture = share and step == self.steps_per_batch - 1
            importance: list[torch.Tensor] | None = []
            self.optimizer.zero_grad(set_to_none=True)
            if not local:  # a worker of a group with no rows computes nothing and adds zeros
                losses, loss_sum = self._empty()
                if capture:
                    importance = self._zero_sums()
            else:
                with self.meter.capture() if capture else contextlib.nullcontext():
                    output = self.model(x_all)
                losses = self.objective(output, x_all, y_all)
                if capture:  # measured on this pass, before the update
                    importance = self.collective.capture_importance(self.meter, x_all.shape[0], local)
                loss_sum = losses.sum()
                (loss_sum / divisor).backward()
                losses, loss_sum = losses.detach(), loss_sum.detach()
            if capture and self.collective.any(importance is None):  # measured apart, after the steps
                share, capture, importance = False, False, []
            if scores is None:
                scores = losses[:local]
            score_sum = loss_sum if x_all is z else scores.sum()
            sums, importance = self.collective.reduce_step(self.meter.synapses.params, [score_sum, loss_sum],
                                                           importance)
            if capture:
                self.collective.fold_importance(self.meter, importance, total)
            self._step(torch.isfinite(sums[1]))
            if score_mean is None:
                score_mean = sums[0] / total
        self.buffer.update(x_all, y_all, losses)
        return scores, score_mean, share

    def output(self, z: torch.Tensor) -> torch.Tensor:
        """The model's output on ``z`` for scoring, with no update (the objective flattens it as it needs)."""
        return self.model(z)

    def score_row(self, z: torch.Tensor) -> float | None:
        """The loss of the one standardised sample ``z`` computed on the host, or ``None``: :meth:`output` scores
        it (here always; :class:`FusedUpdate` has a host forward)."""
        return None

    def score_host_row(self, row: np.ndarray, scale: Callable[[np.ndarray], np.ndarray]) -> float | None:
        """The loss of the one flat sample ``row`` (float32, host memory), standardised by ``scale`` and scored in
        NumPy, or ``None`` (here always; :class:`FusedUpdate` has a host forward)."""
        return None

    def _empty(self) -> tuple[torch.Tensor, torch.Tensor]:
        """No losses, and their sum."""
        return (torch.zeros(0, dtype=self.dtype, device=self.skipped.device),
                torch.zeros((), dtype=self.dtype, device=self.skipped.device))

    def _zero_sums(self) -> list[torch.Tensor]:
        return [torch.zeros_like(t) for t in self.meter.synapses.running]

    def _step(self, finite: torch.Tensor) -> None:
        """The optimizer's step and the regulariser's, both skipped when the loss is not finite."""
        if self.guarded and finite.device.type == "cpu":  # the flag costs no sync to read: no device-side skip
            if cpu_read(finite):
                self.step_optimizer()
                self.proximal.after_step(None)
            else:
                self.skipped += 1
                self.proximal.after_step(finite.to(self.dtype))  # a skipped update owes nothing, as on a device
            return
        if self.guarded:
            bad = ~finite
            self.step_optimizer(bad.float())
            self.skipped += bad
            if self.proximal.active:  # no gate kernel while there is nothing to protect
                self.proximal.after_step(finite.to(self.dtype))
            return
        if not host_read(finite):
            self.skipped += 1
            return
        self.step_optimizer()
        self.proximal.after_step(None)


class FusedUpdate(AutogradUpdate):
    """The hand-derived step of :class:`~streammas.learner.fused.FusedChain`, the importance measured in its
    backward pass.

    A batch the chain cannot take as it is (hooks on the model, another shape) takes the autograd step.
    Autograd's numbers up to rounding (``tests/test_fused.py``).

    :func:`make_update` makes one where :meth:`FusedChain.build <streammas.learner.fused.FusedChain.build>` applies:
    a chain of linear layers and activations, the reconstruction objective, and SGD or Adam.

    Parameters
    ----------
    chain : FusedChain
        The model read as a chain (:meth:`FusedChain.build <streammas.learner.fused.FusedChain.build>`).
    *args, **kwargs
        :class:`AutogradUpdate`'s arguments.

    Examples
    --------
    >>> from streammas.learner.objectives import reconstruction
    >>> from streammas.learner.synapses import Synapses
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> synapses = Synapses(model.named_parameters())
    >>> sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> parts = (HardBuffer(0), ImportanceMeter(model, synapses),
    ...          ProximalSchedule(synapses, sgd, reg_lambda=0.1, every=1))
    >>> update = make_update(model, reconstruction, sgd, *parts)
    >>> type(update).__name__
    'FusedUpdate'
    >>> x = torch.rand(16, 4)
    >>> first, _ = update(StepRows.own(x, None), x, measure=True)
    >>> for _ in range(100):
    ...     scores, mean = update(StepRows.own(x, None), x, measure=False)
    >>> bool(mean < first.mean()), synapses.running_count
    (True, 16)
    >>> adam = torch.optim.Adam(model.parameters(), lr=0.01)  # Adam steps on the hand-derived gradients
    >>> type(make_update(model, reconstruction, adam, *parts)).__name__
    'FusedUpdate'
    >>> amsgrad = torch.optim.Adam(model.parameters(), lr=0.01, amsgrad=True)  # AMSGrad: the autograd step
    >>> type(make_update(model, reconstruction, amsgrad, *parts)).__name__
    'AutogradUpdate'
    """

    def __init__(self, chain: FusedChain, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chain = chain
        # scoring one sample in CPU memory: the chain's forward in NumPy (None: torch scores it)
        self.host = HostForward.build(chain.modules)
        position = {id(p): i for i, p in enumerate(self.meter.synapses.params)}
        self._chain_index = [position[id(p)] for p in chain.parameters()]

    def output(self, z: torch.Tensor) -> torch.Tensor:
        return self.chain.output(z) if self.chain.applicable(z) else self.model(z)

    def score_row(self, z: torch.Tensor) -> float | None:
        """The reconstruction error of the one standardised sample ``z`` by the host forward, or ``None`` where it
        does not apply (a device, a hook, an activation without a NumPy rule)."""
        if self.host is None or z.device.type != "cpu" or z.dtype != torch.float32 or not self.chain.applicable(z):
            return None
        return self.host.reconstruction_error(z)

    def score_host_row(self, row: np.ndarray, scale: Callable[[np.ndarray], np.ndarray]) -> float | None:
        if self.host is None or self.chain.hooked():
            return None  # before scaling it: the general path scales it in torch
        return self.host.row_error(scale(row))

    def _steps(self, total: int, z: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor | None, divisor: int,
               measure: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if not self.chain.applicable(x_all):
            return super()._steps(total, z, x_all, y_all, divisor, measure)
        local = z.shape[0]
        share = measure and self.meter.chain_can_fold()
        scores = score_mean = None
        for step in range(self.steps_per_batch):
            measuring = share and step == self.steps_per_batch - 1
            fold, importance = self.collective.chain_fold(self.meter, self._chain_index, local) if measuring else (
                None, [])
            finite = None
            if not local:  # no gradient of the last step may stay behind (the group adds zeros for none)
                self.optimizer.zero_grad(set_to_none=True)
                losses, loss_sum = self._empty()
            else:
                result = self.chain.step(x_all, local, fold, rows_total=divisor)
                losses, loss_sum, finite = result.losses, result.total, result.finite
            if scores is None:
                scores = losses[:local]
            score_sum = loss_sum if x_all is z else scores.sum()
            if self.chain.writes_grads:  # the optimizer's own step on the hand-derived gradients, summed first
                sums, importance = self.collective.reduce_step(self.meter.synapses.params, [score_sum, loss_sum],
                                                               importance)
                # unless a group summed the losses, the chain's own flag says it (the sum over the same divisor)
                self._step(finite if sums[1] is loss_sum and finite is not None else torch.isfinite(sums[1]))
            else:  # SGD alone: the chain applied the update itself, unless the loss was not finite
                sums = [score_sum, loss_sum]
                self.skipped += ~finite
                if self.proximal.active:
                    self.proximal.after_step(finite.to(self.dtype))
            if measuring:
                self.collective.fold_importance(self.meter, importance, total)
            if score_mean is None:
                score_mean = sums[0] / total
        self.buffer.update(x_all, y_all, losses)
        return scores, score_mean, share


def make_update(model: nn.Module, objective: Callable, optimizer: torch.optim.Optimizer, buffer: HardBuffer,
                meter: ImportanceMeter, proximal: ProximalSchedule, *, steps_per_batch: int = 1,
                fused: bool = True, replay: ReplayMemory | None = None,
                collective: Alone | None = None, scale: Callable[[torch.Tensor], torch.Tensor] | None = None
                ) -> AutogradUpdate:
    """The engine for this model, objective and optimizer: the hand-derived chain step where it applies and
    ``fused`` allows it, autograd otherwise; ``collective``: the learner's (:mod:`streammas.collective`); ``scale``:
    the learner's input scaling, applied to the step's rows (``None``: none)."""
    collective = Alone() if collective is None else collective
    chain = (FusedChain.build(model, objective, optimizer, writes_grads=collective.sums_gradients) if fused
             else None)
    args = (model, objective, optimizer, buffer, meter, proximal, steps_per_batch, replay, collective, scale)
    return AutogradUpdate(*args) if chain is None else FusedUpdate(chain, *args)
