"""Periodic averaging for the learner: N workers learn their own rows alone, and every ``k`` steps of the group
they average what they learned, in one collective.

Between two averagings a worker takes ordinary local steps (no collective at all), so a slow link costs one
all-reduce per ``k`` steps instead of three collectives per step (:mod:`streammas.collective.reduce`). What
the workers end each period with is the same on every worker, bit for bit:

- **the model** (parameters and floating buffers) and **the optimizer's state** (Adam's moments and step), each
  worker weighted by the rows it learned in the period (a worker that had none adds nothing and takes the
  others' average); the optimizer's state only when every worker has one (a worker that has not stepped yet
  has no moments to average: each keeps its own until all have one);
- **the running importance**, merged exactly as one learner would have folded all the workers' samples;
- **the input scaler's statistics**, merged exactly (count, mean and variance of every sample of every worker,
  relative to the statistics agreed at the last averaging, so that raw units lose no precision);
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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from streammas.backend.hostsync import host_read
from streammas.collective.context import DistributedContext
from streammas.collective.reduce import GroupReducer

if TYPE_CHECKING:
    from streammas.learner.scaling import InputScaler
    from streammas.learner.synapses import Synapses

__all__ = ["GroupAverager", "Period"]


@dataclass(frozen=True)
class Period:
    """What the group learned in one averaging period, as every worker reads it after the averaging.

    Examples
    --------
    >>> Period(losses=[0.5, 0.4], steps=2, rows=20, updates=3, skipped=0, clipped=0).steps
    2
    """

    #: The group's mean loss of each step of the period that had rows, in order.
    losses: list[float]
    #: Steps of the group that had rows.
    steps: int
    #: Rows learned by the group.
    rows: int
    #: Local updates the workers attempted (one per worker per step with rows).
    updates: int
    #: Of those, skipped on a non-finite loss.
    skipped: int
    #: Samples the group's input scaler has clipped so far (its lifetime count, as merged).
    clipped: int


class GroupAverager:
    """The learner's collectives in a group that averages every :attr:`every` steps (see the module's docstring).

    Every worker calls :meth:`record` once per step of the group, with its rows (possibly none), and
    :meth:`average` at the same steps (the learner does both); :meth:`mark` after the learner acted on the
    period's values, so that the next period is measured from the agreed state.

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
    >>> from streammas import OnlineMAS
    >>> learner = OnlineMAS(nn.Linear(3, 3), optimizer="sgd")      # alone: its parts serve the example
    >>> averager = GroupAverager(DistributedContext(0, 1, mode="average", average_every=2))
    >>> averager.mark(learner)
    >>> averager.record(4, torch.tensor(2.0))
    False
    >>> averager.record(0, None)     # a step where this worker had no rows
    True
    >>> period = averager.average(learner.model, learner.optimizer, learner.synapses, learner.scaler,
    ...                           torch.tensor(0))
    >>> period, averager.counts(period)
    (Period(losses=[0.5], steps=1, rows=4, updates=1, skipped=0, clipped=0), (1, 4))
    >>> dist.destroy_process_group()
    """

    def __init__(self, ctx: DistributedContext) -> None:
        self.ctx = ctx
        self.every = ctx.average_every
        self.reducer = GroupReducer(ctx)
        self._rows: list[int] = []
        self._loss_sums: list[torch.Tensor | None] = []
        # The agreed state at the last averaging, from which each worker's contribution is measured.
        self._counts = (0, 0)
        self._running: list[torch.Tensor] = []
        self._running_count = 0
        self._scaler: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor, int] | None = None
        self._shift: torch.Tensor | None = None  # the mean the scaler's sums are taken relative to

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    @property
    def pending(self) -> int:
        """Steps recorded since the last averaging (the same on every worker)."""
        return len(self._rows)

    def counts(self, period: Period) -> tuple[int, int]:
        """The group's steps and samples after ``period``: those agreed at the last averaging, plus the period's."""
        return self._counts[0] + period.steps, self._counts[1] + period.rows

    def all_reduce(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor summed over the workers, in one collective (the recovery check uses it)."""
        return self.reducer.all_reduce(tensors)

    def record(self, rows: int, loss_sum: torch.Tensor | None) -> bool:
        """One step of the group: this worker's ``rows`` and the sum of their losses (``None`` without rows);
        returns whether the period is complete."""
        self._rows.append(int(rows))
        self._loss_sums.append(loss_sum if rows else None)
        return len(self._rows) >= self.every

    def mark(self, learner: Any, discard: bool = False) -> None:
        """Remember the learner's state as agreed by the group (its running importance, scaler statistics and
        counts): after an averaging and what the learner did with it, at creation, after a state is loaded
        (``discard``: the steps recorded since the last averaging are forgotten)."""
        if discard:
            self._rows, self._loss_sums = [], []
        synapses, scaler = learner.synapses, learner.scaler
        self._counts = (learner.steps, learner.samples_seen)
        self._running = [t.clone() for t in synapses.running]
        self._running_count = synapses.running_count
        self._scaler = (scaler.count.clone(), None if scaler.mean is None else scaler.mean.clone(),
                        None if scaler.var is None else scaler.var.clone(), scaler.clipped.clone(), scaler._seen)

    # -- the averaging -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def average(self, model: nn.Module, optimizer: torch.optim.Optimizer, synapses: Synapses, scaler: InputScaler,
                skipped: torch.Tensor) -> Period | None:
        """Average the period's state over the workers (a collective); ``None`` when no step is pending.

        ``skipped`` is this worker's device count of skipped updates since the last averaging (the caller zeroes
        it afterwards)."""
        if not self._rows:
            return None
        if len(self._running) != len(synapses.running):
            raise RuntimeError("mark(learner) must record the agreed state before the first averaging")
        rows, sums = self._rows, self._loss_sums
        self._rows, self._loss_sums = [], []
        state = [t for t in model.state_dict().values() if t.is_floating_point()]
        moments = _optimizer_tensors(optimizer)
        features = 0 if scaler.mean is None else scaler.mean.numel()
        facts = self.ctx.gather_ints([len(rows), sum(rows), sum(1 for n in rows if n), features,
                                      int(moments is not None), synapses.running_count, scaler._seen])
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
        share = synapses.running_count / max(total_count, 1)
        parts += [(t - r) * share for t, r in zip(synapses.running, self._running)]
        out = self.reducer.all_reduce(parts)
        # In float64: the counts and losses of each step, and the scaler's sums (raw units)
        zero = torch.zeros((), dtype=torch.float64, device=device)
        exact = [torch.stack([(s if s is not None else zero).double().reshape(()) for s in sums]),
                 torch.tensor(rows, dtype=torch.float64, device=device), skipped.double().reshape(1)]
        if width:
            exact += self._scaler_parts(scaler, width, device)
        exact = self.reducer.all_reduce(exact)

        torch._foreach_copy_(state, out[:len(state)])
        k = len(state)
        if with_moments:
            for t, averaged in zip(moments, out[k:k + len(moments)]):
                t.copy_(averaged)
            k += len(moments)
        torch._foreach_add_(out[k:], self._running)
        torch._foreach_copy_(synapses.running, out[k:])
        synapses.running_count = total_count
        if width:
            self._set_scaler(scaler, exact[3:], facts)
        # one host read for the period: each step's losses and rows, the skipped updates, the clipped samples
        values = host_read(torch.cat([exact[0], exact[1], exact[2], scaler.clipped.double().reshape(1)]))
        group_rows = values[len(rows):2 * len(rows)]
        losses = [s / n for s, n in zip(values[:len(rows)], group_rows) if n]
        return Period(losses=losses, steps=len(losses), rows=total, updates=sum(f[2] for f in facts),
                      skipped=int(values[-2]), clipped=int(values[-1]))

    def _scaler_parts(self, scaler: InputScaler, width: int, device: torch.device) -> list[torch.Tensor]:
        """This worker's samples as sums relative to a shift ``m0`` (the agreed mean; before there is one, the
        pooled mean of the workers' first statistics, from a collective of its own): ``[count, sum (x - m0),
        sum (x - m0)^2, clipped]``, the agreed part taken out (it is added back once)."""
        count0, mean0, var0, clipped0, _ = self._scaler
        f64 = dict(dtype=torch.float64, device=device)
        mine = scaler.mean is not None
        if mean0 is None:  # the first averaging with statistics: a shift near every worker's data
            pooled = self.reducer.all_reduce([scaler.count * scaler.mean if mine else torch.zeros(width, **f64),
                                              (scaler.count if mine else torch.zeros((), **f64)).reshape(1)])
            self._shift = pooled[0] / pooled[1].clamp_min(1.0)
        else:
            self._shift = mean0
        if not mine:  # nothing seen yet, on this worker and at the last averaging
            nothing = torch.zeros(width, **f64)
            return [torch.zeros(1, **f64), nothing, nothing, torch.zeros(1, **f64)]
        shift = scaler.mean - self._shift
        second = scaler.count * (scaler.var + shift * shift)
        if var0 is not None:
            second = second - count0.to(device) * var0
        return [(scaler.count - count0.to(device)).reshape(1), scaler.count * shift, second,
                (scaler.clipped - clipped0.to(device)).double().reshape(1)]

    def _set_scaler(self, scaler: InputScaler, out: Sequence[torch.Tensor], facts: list[list[int]]) -> None:
        new, first, second, clipped = out[0], out[1], out[2], out[3]
        count0, _, var0, clipped0, seen0 = self._scaler
        count = new.reshape(()) + count0.to(new.device)
        if var0 is not None:
            second = second + count0.to(new.device) * var0
        safe = count.clamp_min(1.0)
        shift = first / safe
        scaler.mean = self._shift + shift
        scaler.var = (second / safe - shift * shift).clamp_min(0.0)
        scaler.count = count
        scaler.clipped = clipped.reshape(()).round().long() + clipped0.to(new.device)
        scaler._seen = seen0 + sum(f[6] - seen0 for f in facts)


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
