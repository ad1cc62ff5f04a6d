"""The collective of a learner that learns alone, and what every collective hands the learner.

A learner is given one collective and calls it at fixed points of its step, the same calls whatever the group:

- :meth:`Alone.begin`: the step's rows (:class:`StepRows`), or ``None`` when this learner takes no step;
- :meth:`Alone.reduce_step` and :meth:`Alone.sum_step`: the step's gradients and sums over the workers that
  learn the step together (the exact mode); alone, and in the averaging mode, they are this learner's own;
- :meth:`Alone.capture_importance`, :meth:`Alone.chain_fold`, :meth:`Alone.fold_importance`,
  :meth:`Alone.measure_importance`: how the step's importance is combined: alone, folded at once into the
  running mean; in the exact mode, summed over the workers first;
- :meth:`Alone.record`, :meth:`Alone.settle`, :meth:`Alone.agree`, :meth:`Alone.agreed`: the period after which the
  device values are read on the host (and, in the averaging mode, the workers' states averaged); a
  :class:`Period` says what the period learned;
- :meth:`Alone.all_reduce`: sums over the whole group (the recovery check).

:class:`Alone` exchanges nothing: its reductions return what they are given, and its period is ``sync_every``
steps of its own. :class:`~streammas.collective.reduce.ExactGroup` and
:class:`~streammas.collective.average.AveragingGroup` are the group's forms. The collectives know the learner only
through the few attributes :class:`Learner` names; they import nothing of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from streammas.backend.hostsync import host_read

__all__ = ["Alone", "Learner", "Period", "StepRows"]


@dataclass(frozen=True)
class StepRows:
    """One step's rows, as one learner sees them.

    Examples
    --------
    >>> rows = StepRows.own(torch.zeros(3, 2), None)
    >>> rows.total, rows.seen_x is rows.x, rows.positions
    (3, True, None)
    """

    #: This learner's rows (``[0, *sample_shape]`` for a worker of a group that has none) and their labels.
    x: torch.Tensor
    y: torch.Tensor | None
    #: The rows the input statistics and the replay memory take: the group's in the exact mode, else ``x``.
    seen_x: torch.Tensor
    seen_y: torch.Tensor | None
    #: The step's rows over every worker that learns it: the loss's divisor and the replay memory's draws.
    total: int
    #: The global slots of ``x``'s rows among the group's (the exact mode), else ``None``.
    positions: list[int] | None = None
    #: The dtype the rows arrived in, which ``seen_x`` holds exactly (``None``: not known, or not agreed).
    source_dtype: torch.dtype | None = None

    @classmethod
    def own(cls, x: torch.Tensor, y: torch.Tensor | None, source_dtype: torch.dtype | None = None) -> StepRows:
        """A step of this learner's rows alone."""
        return cls(x, y, x, y, x.shape[0], source_dtype=source_dtype)


@dataclass(frozen=True)
class Period:
    """What the learner learned since the last host read, once read (and, in a group that averages, agreed).

    Examples
    --------
    >>> Period(losses=[0.5, 0.4], updates=2, skipped=0, clipped=0).counts is None
    True
    """

    #: The mean loss of each step that had rows, in order (the group's, in a group).
    losses: list[float]
    #: Updates attempted (optimisation steps counted once per batch).
    updates: int
    #: Of those, skipped on a non-finite loss.
    skipped: int
    #: Samples the input scaler has clipped so far (its lifetime count).
    clipped: int
    #: The group's steps and samples, where they differ from this learner's own counts (the averaging mode).
    counts: tuple[int, int] | None = None


class Learner(Protocol):
    """What a collective reads and writes of the learner it serves (``OnlineMAS`` conforms)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    synapses: Any  # streammas.learner.synapses.Synapses: merge_running, running, running_count
    scaler: Any  # streammas.learner.scaling.InputScaler: merge, sums_since, state_dict
    proximal: Any  # streammas.learner.proximal.ProximalSchedule: settle
    update: Any  # the update engine: its device count of skipped steps, ``skipped``
    steps: int
    samples_seen: int


class Alone:
    """The collective of a learner alone: it exchanges nothing, and reads its device values every ``sync_every``
    steps.

    Examples
    --------
    >>> alone = Alone()
    >>> rows = alone.begin(torch.ones(4, 2), None, None, torch.float32)
    >>> alone.reduce_step([], [torch.tensor(4.0), torch.tensor(8.0)], [])[0][1]
    tensor(8.)
    >>> alone.record(rows.x.shape[0], torch.tensor(0.5), steps=1, sync_every=2)
    False
    >>> alone.begin(torch.ones(0, 2), None, None, torch.float32) is None    # nothing to learn: no step
    True
    """

    world_size = 1
    rank = 0
    #: Whether the workers' gradients are summed before each optimizer step (so a step must leave them in ``.grad``).
    sums_gradients = False

    def __init__(self) -> None:
        self._pending: list[torch.Tensor] = []  # the steps' mean losses, not yet read by the host

    # -- starting -----------------------------------------------------------------------------------------------
    def check_settings(self, *, hard_buffer: int, importance_source: str,
                       replay_retrieval: str = "uniform") -> None:
        """Refuse the learner's settings this collective cannot serve (a ``ValueError``); alone: none."""

    def start(self, model: nn.Module) -> None:
        """Make the workers' models alike (rank 0's); alone: nothing to do."""

    def replay_seed(self, seed: int) -> int:
        """The seed of this learner's replay draws."""
        return seed

    # -- a step -------------------------------------------------------------------------------------------------
    def begin(self, x: torch.Tensor, y: torch.Tensor | None, sample_shape: tuple[int, ...] | None,
              dtype: torch.dtype, source_dtype: torch.dtype | None = None) -> StepRows | None:
        """The step's rows from this learner's validated rows (in the model's ``dtype``; they arrived in
        ``source_dtype``), or ``None`` when it takes no step."""
        return StepRows.own(x, y, source_dtype) if x.shape[0] else None

    def idle(self) -> bool:
        """A step of the stream in which this learner learned nothing; returns whether its period is over."""
        return False

    def reduce_step(self, params: Sequence[nn.Parameter], sums: Sequence[torch.Tensor],
                    importance: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The gradients of ``params``, the 0-d ``sums`` and the ``importance`` sums, summed over the workers that
        learn this step together (the gradients in place); alone: as they are."""
        return list(sums), list(importance)

    # -- the step's importance: measured by the learner's meter, combined here -----------------------------------
    def capture_importance(self, meter: Any, rows: int, batch: int) -> list[torch.Tensor] | None:
        """The importance of the first ``batch`` of the ``rows`` rows of the pass ``meter`` captured: alone, folded
        into the running mean at once (``[]``: nothing left to combine); ``None`` if the pass could not serve."""
        return [] if meter.fold_captured(rows, batch) else None

    def chain_fold(self, meter: Any, index: Sequence[int], batch: int) -> tuple[tuple, list[torch.Tensor]]:
        """Where a hand-derived step folds the importance of its ``batch`` rows (the running importance at
        ``index``, with the running mean's weight), and what is left to combine after the step."""
        running = meter.synapses.running
        return ([running[i] for i in index], meter.weight(batch)), []

    def fold_importance(self, meter: Any, importance: Sequence[torch.Tensor], total: int) -> None:
        """Fold the step's combined ``importance`` over its ``total`` rows; alone, already folded."""

    def measure_importance(self, meter: Any, x: torch.Tensor, total: int) -> None:
        """Measure the importance of ``x`` in a pass of its own and fold it."""
        meter.fold(x)

    def sum_step(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``tensors`` summed over the workers that learn this step together; alone: as they are."""
        return list(tensors)

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on any worker that learns this step (a host-side agreement)."""
        return flag

    def all_reduce(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """``tensors`` summed over the whole group; alone: as they are."""
        return list(tensors)

    # -- the period ---------------------------------------------------------------------------------------------
    def record(self, rows: int, score_mean: torch.Tensor, *, steps: int, sync_every: int) -> bool:
        """A step learned (``rows`` of this learner's, their mean loss ``score_mean``, the ``steps``-th);
        returns whether the period is over."""
        self._pending.append(score_mean)
        return steps % sync_every == 0

    def settle(self, learner: Learner) -> Period | None:
        """End the period: read its device values in one host read (``None``: nothing pending)."""
        if not self._pending:
            return None
        values = host_read(torch.stack([*[v.float() for v in self._pending], learner.update.skipped.float(),
                                        learner.scaler.clipped.float()]))
        self._pending.clear()
        clipped = int(values.pop())
        skipped = int(values.pop())
        return Period(losses=values, updates=len(values), skipped=skipped, clipped=clipped)

    def agree(self, learner: Learner) -> Period | None:
        """Before an explicit consolidation: the state the workers must agree on first (``None``: nothing)."""
        return None

    def agreed(self, learner: Learner) -> None:
        """The learner acted on a period (or was created, or consolidated): remember its state as agreed."""

    def restart(self, learner: Learner) -> None:
        """A state was loaded into the learner: forget what is pending."""
        self._pending.clear()
