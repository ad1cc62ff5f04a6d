"""The update engines: one learner step on a batch, by autograd or by the hand-derived chain step.

An engine scores the batch (the prequential per-sample loss, before the update), takes the optimizer's
steps on the batch plus the hard buffer, has the proximal schedule regularise each applied step, folds the
batch's importance into the running mean when asked, and refreshes the hard buffer. A step whose loss is not
finite is skipped and counted on the device (:attr:`AutogradUpdate.skipped`); the learner reads the count with
its other device values.

:func:`make_update` picks the engine at construction: :class:`FusedUpdate` where the model is a chain of linear
layers and activations trained by plain SGD on the reconstruction error (see :mod:`streammas.learner.fused`),
:class:`AutogradUpdate` otherwise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from streammas.backend.hostsync import host_read
from streammas.learner.buffer import HardBuffer
from streammas.learner.fused import FusedChain
from streammas.learner.meter import ImportanceMeter
from streammas.learner.proximal import ProximalSchedule
from streammas.learner.replay import ReplayMemory

if TYPE_CHECKING:
    from streammas.collective.reduce import GroupReducer

Scores = tuple[torch.Tensor, torch.Tensor]


class Update(Protocol):
    """One learner step: ``update(x, y, measure) -> (scores, their mean)``, both on the device.

    Calling an engine scores the batch ``xb`` (labels ``yb`` or ``None``), learns it with the hard buffer's
    rows, and folds its importance when ``measure`` is true. :class:`AutogradUpdate` and
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
    >>> scores, mean = update(torch.rand(8, 4), None, measure=False)
    >>> scores.shape, bool(torch.isclose(mean, scores.mean())), int(update.skipped), update.last_rows[0].shape
    (torch.Size([8]), True, 0, torch.Size([8, 4]))
    >>> _ = update(torch.full((8, 4), float("inf")), None, measure=False)  # a non-finite loss: no step
    >>> int(update.skipped)
    1
    """

    skipped: torch.Tensor
    last_rows: tuple[torch.Tensor, torch.Tensor | None] | None

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor | None, measure: bool) -> Scores: ...


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
        Measures and folds the batch's importance.
    proximal : ProximalSchedule
        The regulariser's proximal step after each applied step.
    steps_per_batch : int, default 1
        Optimisation steps on each batch.
    replay : ReplayMemory or None, default None
        Past samples replayed beside each batch (as many as it holds); ``None``: none.
    group : GroupReducer or None, default None
        The collectives of a group of workers (:mod:`streammas.collective.reduce`), which learn the union of
        their batches; ``None``: this learner alone.

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
    >>> first, _ = update(x, None, measure=True)
    >>> for _ in range(100):
    ...     scores, mean = update(x, None, measure=False)
    >>> bool(mean < first.mean()), synapses.running_count
    (True, 16)
    """

    def __init__(self, model: nn.Module, objective: Callable, optimizer: torch.optim.Optimizer, buffer: HardBuffer,
                 meter: ImportanceMeter, proximal: ProximalSchedule, steps_per_batch: int = 1,
                 replay: ReplayMemory | None = None, group: GroupReducer | None = None) -> None:
        self.model = model
        self.objective = objective
        self.optimizer = optimizer
        self.buffer = buffer
        self.meter = meter
        self.proximal = proximal
        self.steps_per_batch = int(steps_per_batch)
        self.replay = replay
        self.group = group
        self._group_rows = 0  # in a group: the rows the whole group learns this step, its losses' divisor
        first = next(model.parameters())
        self.dtype = first.dtype
        # Fused optimizers skip a step on a device-side flag (found_inf): a non-finite loss needs no host sync.
        self.guarded = bool(getattr(optimizer, "_step_supports_amp_scaling", False))
        self.skipped = torch.zeros((), dtype=torch.int64, device=first.device)
        self.last_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None  # what the last update learned

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor | None, measure: bool) -> Scores:
        x_all, y_all = self._with_replay(xb, yb)
        x_all, y_all = self.buffer.extend(x_all, y_all)
        self.last_rows = (x_all, y_all)
        scores, score_mean, measured = self._steps(xb, x_all, y_all, measure)
        if measure and not measured and self.group is None:
            self.meter.fold(xb)
        elif measure and not measured:  # each worker measures its rows, all fold the group's sums
            self.meter.fold_sum(self.group.all_reduce(self.meter.measure_sum(xb)), self.group.batch.total)
        return scores, score_mean

    def _with_replay(self, xb: torch.Tensor, yb: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.group is None:
            return (xb, yb) if self.replay is None else self.replay.extend(xb, yb)
        total = self.group.batch.total
        replaying = self.replay is not None and len(self.replay) > 0
        self._group_rows = total * (2 if replaying else 1)  # the batch, and one replayed sample per row
        if not replaying:
            return xb, yb
        return self.replay.extend(xb, yb, draws=total, positions=self.group.batch.positions)

    def _steps(self, xb: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor | None,
               measure: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The steps; returns the scores, their mean, and whether the importance was folded from the last step's
        own forward pass (measured before that step's update, on the batch's rows only)."""
        if self.group is not None:
            return self._group_steps(xb, x_all, y_all, measure)
        scores = score_mean = None
        measured = False
        share = measure and self.meter.can_share()
        for step in range(self.steps_per_batch):
            capture = share and step == self.steps_per_batch - 1
            if capture:
                with self.meter.capture():
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
                measured = self.meter.fold_captured(x_all.shape[0], xb.shape[0])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self._step(finite)
        self.buffer.update(x_all, y_all, losses.detach())
        return scores, score_mean, measured

    def _group_steps(self, xb: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor | None,
                     measure: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """:meth:`_steps` in a group: each loss is a sum over this worker's rows divided by the group's row count,
        and the group sums the gradients (:meth:`_reduce_and_step`) before the optimizer's step. A worker with no
        rows computes nothing and adds zeros."""
        share = measure and self.meter.can_share()
        scores = score_mean = None
        for step in range(self.steps_per_batch):
            capture = share and step == self.steps_per_batch - 1
            importance: list[torch.Tensor] | None = self._zero_sums() if capture else []
            self.optimizer.zero_grad(set_to_none=True)
            losses = torch.zeros(0, dtype=self.dtype, device=self.skipped.device)
            if xb.shape[0]:
                with self.meter.capture() if capture else contextlib.nullcontext():
                    output = self.model(x_all)
                losses = self.objective(output, x_all, y_all)
                if capture:
                    importance = self.meter.captured_sum(x_all.shape[0], xb.shape[0])
                (losses.sum() / self._group_rows).backward()
                losses = losses.detach()
            if scores is None:
                scores = losses[: xb.shape[0]]
            if capture and self.group.any(importance is None):  # as alone: a separate pass after the steps
                share, capture, importance = False, False, []
            score_sum = self._reduce_and_step(scores, losses, importance, capture)
            if score_mean is None:
                score_mean = score_sum / self.group.batch.total
        return scores, score_mean, share

    def _zero_sums(self) -> list[torch.Tensor]:
        return [torch.zeros_like(t) for t in self.meter.synapses.running]

    def _reduce_and_step(self, scores: torch.Tensor, losses: torch.Tensor, importance: list[torch.Tensor],
                         fold: bool) -> torch.Tensor:
        """In a group: sum the gradients, the importance and the losses over the workers (one all-reduce), fold the
        importance (``fold``), and step, or skip on every worker alike when the group's loss is not finite.
        Returns the sum of the group's scores."""
        sums, importance = self.group.reduce_step(self.meter.synapses.params, [scores.sum(), losses.sum()],
                                                  importance)
        if fold:
            self.meter.fold_sum(importance, self.group.batch.total)
        self._step(torch.isfinite(sums[1]))
        return sums[0]

    def _step(self, finite: torch.Tensor) -> None:
        """The optimizer's step and the regulariser's, both skipped when the loss is not finite."""
        if self.guarded:
            bad = ~finite
            self.optimizer.found_inf = bad.float()
            self.optimizer.grad_scale = None
            self.optimizer.step()
            self.skipped += bad
            if self.proximal.active:  # no gate kernel while there is nothing to protect
                self.proximal.after_step(finite.to(self.dtype))
            return
        if not host_read(finite):
            self.skipped += 1
            return
        self.optimizer.step()
        self.proximal.after_step(None)


class FusedUpdate(AutogradUpdate):
    """The hand-derived step of :class:`~streammas.learner.fused.FusedChain`, the importance folded in its backward
    pass.

    A batch the chain cannot take as it is (hooks on the model, another shape) takes the autograd step.
    Autograd's numbers up to rounding (``tests/test_fused.py``).

    :func:`make_update` makes one where :meth:`FusedChain.build <streammas.learner.fused.FusedChain.build>` applies: a
    chain of linear layers and activations, the reconstruction objective and plain SGD.

    Parameters
    ----------
    chain : FusedChain
        The model read as a chain (:meth:`FusedChain.build <streammas.learner.fused.FusedChain.build>`).
    *args, **kwargs
        :class:`AutogradUpdate`'s arguments: ``model, objective, optimizer, buffer, meter, proximal`` and
        ``steps_per_batch``.

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
    >>> first, _ = update(x, None, measure=True)
    >>> for _ in range(100):
    ...     scores, mean = update(x, None, measure=False)
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
        position = {id(p): i for i, p in enumerate(self.meter.synapses.params)}
        self._chain_index = [position[id(p)] for p in chain.parameters()]

    def _steps(self, xb: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor | None,
               measure: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
        if not self.chain.applicable(x_all) or self.group is not None:
            return super()._steps(xb, x_all, y_all, measure)
        fold_here = measure and self.meter.chain_can_fold()
        scores = score_mean = None
        measured = False
        for step in range(self.steps_per_batch):
            fold = None
            if fold_here and step == self.steps_per_batch - 1:
                running = self.meter.synapses.running
                fold = ([running[i] for i in self._chain_index], self.meter.weight(xb.shape[0]))
            result = self.chain.step(x_all, xb.shape[0], fold)
            if self.chain.writes_grads:  # Adam: the optimizer's own step on the hand-derived gradients
                self._step(result.finite)
            else:
                self.skipped += ~result.finite
                if self.proximal.active:
                    self.proximal.after_step(result.finite.to(self.dtype))
            if scores is None:
                scores = result.losses[: xb.shape[0]]
                score_mean = result.mean if x_all is xb else scores.mean()
            measured = measured or result.measured
        self.buffer.update(x_all, y_all, result.losses)
        return scores, score_mean, measured

    def _group_steps(self, xb: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor | None,
                     measure: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The chain's step in a group: the gradients left to the optimizer (SGD too) and summed first, the
        importance of this worker's rows folded into zeros with weight 1 (their mean), then summed and folded."""
        if not self.chain.applicable(x_all):
            return super()._group_steps(xb, x_all, y_all, measure)
        fold_here = measure and self.meter.chain_can_fold()
        local = xb.shape[0]
        scores = score_mean = None
        for step in range(self.steps_per_batch):
            measuring = fold_here and step == self.steps_per_batch - 1
            importance = self._zero_sums() if measuring else []
            losses = torch.zeros(0, dtype=self.dtype, device=self.skipped.device)
            if not local:  # no gradient of the last step may stay behind (the group adds zeros for none)
                self.optimizer.zero_grad(set_to_none=True)
            else:
                fold = ([importance[i] for i in self._chain_index], lambda: 1.0) if measuring else None
                losses = self.chain.step(x_all, local, fold, rows_total=self._group_rows).losses
                if measuring:
                    torch._foreach_mul_(importance, float(local))  # the mean over this worker's rows, as a sum
            if scores is None:
                scores = losses[:local]
            score_sum = self._reduce_and_step(scores, losses, importance, measuring)
            if score_mean is None:
                score_mean = score_sum / self.group.batch.total
        return scores, score_mean, fold_here


def make_update(model: nn.Module, objective: Callable, optimizer: torch.optim.Optimizer, buffer: HardBuffer,
                meter: ImportanceMeter, proximal: ProximalSchedule, *, steps_per_batch: int = 1,
                fused: bool = True, replay: ReplayMemory | None = None,
                group: GroupReducer | None = None) -> AutogradUpdate:
    """The engine for this model, objective and optimizer: the hand-derived chain step where it applies and
    ``fused`` allows it, autograd otherwise; ``group``: the collectives of a group of workers."""
    chain = FusedChain.build(model, objective, optimizer, writes_grads=group is not None) if fused else None
    args = (model, objective, optimizer, buffer, meter, proximal, steps_per_batch, replay, group)
    return AutogradUpdate(*args) if chain is None else FusedUpdate(chain, *args)
