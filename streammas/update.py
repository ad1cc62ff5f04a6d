"""The update engines: one learner step on a batch, by autograd or by the hand-derived chain step.

An engine scores the batch (the prequential per-sample loss, before the update), takes the optimizer's
steps on the batch plus the hard buffer, has the proximal schedule regularise each applied step, folds the
batch's importance into the running mean when asked, and refreshes the hard buffer. A step whose loss is not
finite is skipped and counted on the device (:attr:`AutogradUpdate.skipped`); the learner reads the count with
its other device values.

:func:`make_update` picks the engine at construction: :class:`FusedUpdate` where the model is a chain of linear
layers and activations trained by plain SGD on the reconstruction error (see :mod:`streammas.fused`),
:class:`AutogradUpdate` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

from streammas.buffer import HardBuffer
from streammas.fused import FusedChain
from streammas.hostsync import host_read
from streammas.meter import ImportanceMeter
from streammas.proximal import ProximalSchedule
from streammas.replay import ReplayMemory

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
    >>> from streammas.objectives import reconstruction
    >>> from streammas.synapses import Synapses
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
        ``(output, x, y) -> per-sample losses`` (see :mod:`streammas.objectives`).
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

    Examples
    --------
    >>> from streammas.objectives import reconstruction
    >>> from streammas.synapses import Synapses
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
                 replay: ReplayMemory | None = None) -> None:
        self.model = model
        self.objective = objective
        self.optimizer = optimizer
        self.buffer = buffer
        self.meter = meter
        self.proximal = proximal
        self.steps_per_batch = int(steps_per_batch)
        self.replay = replay
        first = next(model.parameters())
        self.dtype = first.dtype
        # Fused optimizers skip a step on a device-side flag (found_inf): a non-finite loss needs no host sync.
        self.guarded = bool(getattr(optimizer, "_step_supports_amp_scaling", False))
        self.skipped = torch.zeros((), dtype=torch.int64, device=first.device)
        self.last_rows: tuple[torch.Tensor, torch.Tensor | None] | None = None  # what the last update learned

    def __call__(self, xb: torch.Tensor, yb: torch.Tensor | None, measure: bool) -> Scores:
        x_all, y_all = (xb, yb) if self.replay is None else self.replay.extend(xb, yb)
        x_all, y_all = self.buffer.extend(x_all, y_all)
        self.last_rows = (x_all, y_all)
        scores, score_mean, measured = self._steps(xb, x_all, y_all, measure)
        if measure and not measured:
            self.meter.fold(xb)
        return scores, score_mean

    def _steps(self, xb: torch.Tensor, x_all: torch.Tensor, y_all: torch.Tensor | None,
               measure: bool) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """The steps; returns the scores, their mean, and whether the importance was folded from the last step's
        own forward pass (measured before that step's update, on the batch's rows only)."""
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
    """The hand-derived step of :class:`~streammas.fused.FusedChain`, the importance folded in its backward pass.

    A batch the chain cannot take as it is (hooks on the model, another shape) takes the autograd step.
    Autograd's numbers up to rounding (``tests/test_fused.py``).

    :func:`make_update` makes one where :meth:`FusedChain.build <streammas.fused.FusedChain.build>` applies: a
    chain of linear layers and activations, the reconstruction objective and plain SGD.

    Parameters
    ----------
    chain : FusedChain
        The model read as a chain (:meth:`FusedChain.build <streammas.fused.FusedChain.build>`).
    *args, **kwargs
        :class:`AutogradUpdate`'s arguments: ``model, objective, optimizer, buffer, meter, proximal`` and
        ``steps_per_batch``.

    Examples
    --------
    >>> from streammas.objectives import reconstruction
    >>> from streammas.synapses import Synapses
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
        if not self.chain.applicable(x_all):
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


def make_update(model: nn.Module, objective: Callable, optimizer: torch.optim.Optimizer, buffer: HardBuffer,
                meter: ImportanceMeter, proximal: ProximalSchedule, *, steps_per_batch: int = 1,
                fused: bool = True, replay: ReplayMemory | None = None) -> AutogradUpdate:
    """The engine for this model, objective and optimizer: the hand-derived chain step where it applies and
    ``fused`` allows it, autograd otherwise."""
    chain = FusedChain.build(model, objective, optimizer) if fused else None
    args = (model, objective, optimizer, buffer, meter, proximal, steps_per_batch, replay)
    return AutogradUpdate(*args) if chain is None else FusedUpdate(chain, *args)
