"""Skipped updates and recovery from runaway weights.

An update whose loss is not finite is skipped (its count is read from the device with the other values). After
``recover_after`` skipped in a row, the cause is either the weights (they ran away, and every loss now overflows)
or the input (it overflows any model). Only in the first case, seen as theta* scoring the same batch finitely
where the weights do not, are the weights replaced by theta*; the optimizer's state and the regime's running
importance, both built from the runaway weights, restart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from streammas.backend.hostsync import host_read
from streammas.learner.events import EventLog
from streammas.learner.proximal import ProximalSchedule
from streammas.learner.synapses import Synapses


class Recovery:
    """Counts skipped updates and restores theta* when the weights have diverged (``recover_after=0``: never).

    After ``recover_after`` updates skipped in a row, the weights are replaced by theta* only if theta* scores
    the same batch finitely where the weights do not; the optimizer's state and the regime's running importance
    then restart.

    Parameters
    ----------
    model : torch.nn.Module
        The learner's model.
    objective : callable
        ``(output, x, y) -> per-sample losses``.
    optimizer : torch.optim.Optimizer
        The learner's optimizer, whose state is cleared on recovery.
    synapses : Synapses
        Holds theta*, and the running importance that restarts on recovery.
    proximal : ProximalSchedule
        The proximal schedule, reset on recovery.
    events : EventLog
        Receives the ``skipped_update`` and ``recovered`` events.
    recover_after : int, default 64
        Updates skipped in a row before the weights are checked (0: never).
    reduce : callable or None, default None
        ``tensors -> their sums over the workers`` of a group (one collective: each worker scores its own rows, and
        every worker must then take part in every check, with rows or without); ``None``: alone.

    Attributes
    ----------
    skipped : int
        Updates skipped so far.
    recoveries : int
        How many times theta* was restored.

    Examples
    --------
    >>> model = nn.Linear(2, 2)
    >>> synapses = Synapses(model.named_parameters())
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> recovery = Recovery(model, lambda out, x, y: (out - x).pow(2).mean(1), optimizer, synapses,
    ...                     ProximalSchedule(synapses, optimizer, reg_lambda=0.0, every=1),
    ...                     EventLog(10, clock=lambda: (0, 0)), recover_after=2)
    >>> with torch.no_grad():
    ...     _ = model.weight.mul_(1e38)        # runaway weights: every loss overflows
    >>> x = torch.ones(4, 2)
    >>> recovery.observe(skipped=2, window=2, last_rows=(x, None))
    >>> recovery.skipped, recovery.recoveries, torch.equal(model.weight, synapses.anchor[0])
    (2, 1, True)
    """

    def __init__(self, model: nn.Module, objective: Callable, optimizer: torch.optim.Optimizer, synapses: Synapses,
                 proximal: ProximalSchedule, events: EventLog, *, recover_after: int = 64,
                 reduce: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None) -> None:
        self.model = model
        self.objective = objective
        self.optimizer = optimizer
        self.synapses = synapses
        self.proximal = proximal
        self.events = events
        self.recover_after = int(recover_after)
        self.reduce = reduce if reduce is not None else list
        self.skipped = 0
        self.recoveries = 0
        self._dead_steps = 0  # updates skipped in a row, as of the last read

    def observe(self, skipped: int, window: int,
                last_rows: tuple[torch.Tensor, torch.Tensor | None] | None) -> None:
        """Count ``skipped`` of the last ``window`` updates; ``last_rows`` is what the last update learned."""
        if skipped:
            self.skipped += skipped
            self.events.emit("skipped_update", float(skipped))
        self._dead_steps = self._dead_steps + skipped if skipped >= window else 0
        if self.recover_after and self._dead_steps >= self.recover_after:
            self._dead_steps = 0
            self._recover(*(last_rows or (None, None)))

    def _recover(self, x: torch.Tensor | None, y: torch.Tensor | None) -> None:
        with torch.no_grad():
            now, before = self._losses(x, y)
            if bool(host_read(torch.isfinite(now) | ~torch.isfinite(before))):
                return
            torch._foreach_copy_([p.detach() for p in self.synapses.params], self.synapses.anchor)
        self.optimizer.state.clear()
        self.synapses.reset_running()
        self.proximal.reset()
        self.recoveries += 1
        self.events.emit("recovered", float(before))

    def _losses(self, x: torch.Tensor | None, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean loss of the rows with the weights, and with theta*: over the whole group's rows in a group."""
        anchored = dict(zip(self.synapses.names, self.synapses.anchor))
        sums = torch.zeros(3, dtype=self.synapses.anchor[0].dtype, device=self.synapses.anchor[0].device)
        if x is not None and x.shape[0]:  # a worker with no rows adds nothing
            sums[0] = self.objective(self.model(x), x, y).sum()
            sums[1] = self.objective(torch.func.functional_call(self.model, anchored, (x,)), x, y).sum()
            sums[2] = x.shape[0]
        (total,) = self.reduce([sums])
        return total[0] / total[2], total[1] / total[2]

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_updates": self.skipped, "recoveries": self.recoveries}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.skipped = int(state.get("skipped_updates", 0))
        self.recoveries = int(state.get("recoveries", 0))
        self._dead_steps = 0
