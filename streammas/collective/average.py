"""Periodic averaging for the learner: N workers learn their own rows alone, and every ``k`` steps of the group
they average what they learned, in one collective.

Between two averagings a worker takes ordinary local steps (no collective at all), so a slow link costs one
all-reduce per ``k`` steps instead of three collectives per step (:mod:`streammas.collective.reduce`). What
the workers end each period with is the same on every worker, bit for bit:

- **the model** (parameters and floating buffers) and **the optimizer's state** (Adam's moments and step), each
  worker weighted by the rows it learned in the period (a worker that had none adds nothing and takes the
  others' average); the optimizer's state only when every worker has one (a worker that has not stepped yet
  has no moments to average: each keeps its own until all have one);
- **the running importance**, merged exactly as one learner would have folded all the workers' samples (the
  synapses' own ``running_move`` and ``merge_running``);
- **the input scaler's statistics**, merged exactly (count, mean and variance of every sample of every worker,
  relative to the statistics agreed at the last averaging, so that raw units lose no precision: the scaler's own
  ``sums_since`` and ``merge``);
- **what the detector sees**: the group's mean loss of each step of the period (each worker's sum of its
  rows' losses over the group's rows), so that every worker makes the same plateau, peak and consolidation
  decisions at the same averaging; and the skipped updates, summed, for the recovery check.

The replay memory and the hard buffer stay each worker's own (a sample of its own rows). With ``k = 1`` and
plain SGD (no momentum), the state after each step is that of one learner fed the union of the rows, since
averaging commutes with a gradient step that is linear in the gradients; with Adam or ``k > 1`` it is local
SGD, an approximation whose cost against the exact mode ``streammas bench scale`` measures.

A period takes one host collective (each worker's calls, rows and a few counts: the weights are known on the
host before the device all-reduce) and two device all-reduces: one flat buffer in the model's dtype (with Adam,
four times the parameters: weights, two moments, importance, every ``k`` steps, against the gradients' once
every step in the exact mode) and a small float64 one (each step's rows and loss sums, the scaler's sums).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from streammas.backend.hostsync import host_read
from streammas.collective.alone import Learner, Period
from streammas.collective.context import DistributedContext
from streammas.collective.reduce import GroupCollective

__all__ = ["AveragingGroup"]


class AveragingGroup(GroupCollective):
    """The collective of a learner in a group that averages every ``ctx.average_every`` steps (see the module's
    docstring): its steps are its own (the step's reductions are :class:`~streammas.collective.alone.Alone`'s), and
    its period ends with the averaging.

    Every worker records every step of the group (:meth:`record`, or :meth:`idle` for a step where it has no rows)
    and settles at the same steps; :meth:`agreed` after the learner acted on the period, so that the next period is
    measured from the agreed state.

    Parameters
    ----------
    ctx : DistributedContext
        The group; ``ctx.average_every`` is the period.

    Examples
    --------
    A group of one, the same calls as in a group of many:

    >>> import tempfile
    >>> import torch.distributed as dist
    >>> store = tempfile.NamedTemporaryFile(delete=False).name
    >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    >>> from torch import nn
    >>> from streammas import OnlineMAS
    >>> learner = OnlineMAS(nn.Linear(3, 3), optimizer="sgd")      # alone: its parts serve the example
    >>> group = AveragingGroup(DistributedContext(0, 1, mode="average", average_every=2))
    >>> group.agreed(learner)
    >>> group.record(4, torch.tensor(0.5), steps=1, sync_every=1)
    False
    >>> group.idle()     # a step where this worker had no rows
    True
    >>> group.settle(learner)
    Period(losses=[0.5], updates=1, skipped=0, clipped=0, counts=(1, 4))
    >>> dist.destroy_process_group()
    """

    def __init__(self, ctx: DistributedContext) -> None:
        super().__init__(ctx)
        self.every = ctx.average_every
        self._rows: list[int] = []
        self._loss_sums: list[torch.Tensor | None] = []
        # The agreed state at the last averaging, from which each worker's contribution is measured.
        self._counts = (0, 0)
        self._running: list[torch.Tensor] = []
        self._running_count = 0
        self._scaler: Mapping[str, Any] | None = None

    def check_settings(self, *, hard_buffer: int, importance_source: str,
                       replay_retrieval: str = "uniform") -> None:
        if importance_source == "buffer":  # each worker's buffer is its own
            raise ValueError('importance_source = "buffer" is not supported in the averaging mode')

    def replay_seed(self, seed: int) -> int:
        return seed + self.ctx.rank  # each worker's memory is a sample of its own rows

    # -- the period ---------------------------------------------------------------------------------------------
    def record(self, rows: int, score_mean: torch.Tensor | None, *, steps: int = 0, sync_every: int = 1) -> bool:
        """One step of the group: this worker's ``rows`` and their mean loss; returns whether the period is over."""
        self._rows.append(int(rows))
        self._loss_sums.append(score_mean * rows if rows else None)
        return len(self._rows) >= self.every

    def idle(self) -> bool:
        return self.record(0, None)

    def settle(self, learner: Learner) -> Period | None:
        """Average the period's state over the workers (a collective); ``None`` when no step is pending."""
        if not self._rows:
            return None
        learner.proximal.settle()  # each worker's owed proximal steps first: they count its own steps
        return self._average(learner)

    def agree(self, learner: Learner) -> Period | None:
        return self.settle(learner)

    def agreed(self, learner: Learner) -> None:
        """Remember the learner's state as agreed by the group (its running importance, scaler statistics and
        counts): after an averaging and what the learner did with it, at creation, after a consolidation."""
        synapses = learner.synapses
        self._counts = (learner.steps, learner.samples_seen)
        self._running = [t.clone() for t in synapses.running]
        self._running_count = synapses.running_count
        self._scaler = learner.scaler.state_dict()

    def restart(self, learner: Learner) -> None:
        """A state was loaded: the steps recorded since the last averaging are forgotten."""
        self._rows, self._loss_sums = [], []
        self.agreed(learner)

    # -- the averaging ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _average(self, learner: Learner) -> Period:
        model, optimizer, synapses, scaler = learner.model, learner.optimizer, learner.synapses, learner.scaler
        skipped = learner.update.skipped  # this worker's device count since the last averaging
        if len(self._running) != len(synapses.running):
            raise RuntimeError("agreed(learner) must record the agreed state before the first averaging")
        rows, sums = self._rows, self._loss_sums
        self._rows, self._loss_sums = [], []
        state = [t for t in model.state_dict().values() if t.is_floating_point()]
        moments = _optimizer_tensors(optimizer)
        features = 0 if scaler.mean is None else scaler.mean.numel()
        facts = self.ctx.gather_ints([len(rows), sum(rows), sum(1 for n in rows if n), features,
                                      int(moments is not None), synapses.running_count, scaler.seen])
        if len({f[0] for f in facts}) != 1:
            raise RuntimeError(f"the workers averaged after different numbers of steps: {[f[0] for f in facts]}; "
                               "every worker must call learn_many once per step of the group")
        total = sum(f[1] for f in facts)
        weight = sum(rows) / total if total else 1.0 / self.world_size
        with_moments = all(f[4] for f in facts)
        width = max(f[3] for f in facts) if scaler.enabled else 0
        device = skipped.device
        before = self._running_count
        total_count = before + sum(f[5] - before for f in facts)
        # In the model's dtype: the weighted states, and the running importance as each worker's move away from
        # the agreed one, weighted by its share of the samples (no large products: fp16 and bf16 stay in range).
        parts = [t * weight for t in state]
        if with_moments:  # Adam's step counter may live on the host while the moments are on the device
            parts += [t.to(device) * weight for t in moments]
        parts += synapses.running_move(self._running, total_count)
        out = self.reducer.all_reduce(parts)
        # In float64: the counts and losses of each step, and the scaler's sums (raw units)
        zero = torch.zeros((), dtype=torch.float64, device=device)
        exact = [torch.stack([(s if s is not None else zero).double().reshape(()) for s in sums]),
                 torch.tensor(rows, dtype=torch.float64, device=device), skipped.double().reshape(1)]
        shift = None
        if width:
            shift = self._shift(scaler, width, device)
            exact += scaler.sums_since(self._scaler, shift, width)
        exact = self.reducer.all_reduce(exact)

        torch._foreach_copy_(state, out[:len(state)])
        k = len(state)
        if with_moments:
            for t, averaged in zip(moments, out[k:k + len(moments)]):
                t.copy_(averaged)
            k += len(moments)
        synapses.merge_running(out[k:], self._running, total_count)
        if width:
            seen0 = self._scaler["seen"]
            scaler.merge(exact[3:], self._scaler, shift, seen=seen0 + sum(f[6] - seen0 for f in facts))
        # one host read for the period: each step's losses and rows, the skipped updates, the clipped samples
        values = host_read(torch.cat([exact[0], exact[1], exact[2], scaler.clipped.double().reshape(1)]))
        group_rows = values[len(rows):2 * len(rows)]
        losses = [s / n for s, n in zip(values[:len(rows)], group_rows) if n]
        return Period(losses=losses, updates=sum(f[2] for f in facts), skipped=int(values[-2]),
                      clipped=int(values[-1]), counts=(self._counts[0] + len(losses), self._counts[1] + total))

    def _shift(self, scaler: Any, width: int, device: torch.device) -> torch.Tensor:
        """The mean the scaler's sums are taken relative to: the agreed one; before there is one, the pooled mean
        of the workers' first statistics (a collective of its own), a shift near every worker's data."""
        if self._scaler["mean"] is not None:
            return self._scaler["mean"]
        f64 = dict(dtype=torch.float64, device=device)
        mine = scaler.mean is not None
        pooled = self.reducer.all_reduce([scaler.count * scaler.mean if mine else torch.zeros(width, **f64),
                                          (scaler.count if mine else torch.zeros((), **f64)).reshape(1)])
        return pooled[0] / pooled[1].clamp_min(1.0)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor] | None:
    """The optimizer's floating state tensors in a fixed order, or ``None`` while some parameter has no state
    (it has not stepped yet)."""
    found: list[torch.Tensor] = []
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p)
            if not state:
                return None
            found += [state[key] for key in sorted(state) if torch.is_tensor(state[key])
                      and state[key].is_floating_point()]
    return found
