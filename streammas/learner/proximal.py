"""When the regulariser's proximal step runs: once every ``prox_every`` optimizer steps, for all of them.

The regulariser ``lambda * sum Omega (theta - theta*)^2`` is applied after the optimizer's step as the exact
proximal step of :meth:`~streammas.learner.synapses.Synapses.proximal_step`. A proximal step of k times the step size is
as stable as k single ones and k times cheaper, so the schedule counts the steps it owes and pays them together.
A step the optimizer skipped (a non-finite loss) is owed nothing; on a device whose optimizer skips on a device
flag (``found_inf``) the count is a device tensor, so that no step needs a host sync.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from streammas.backend.compat import adam_second_moment
from streammas.backend.hostsync import host_read
from streammas.learner.synapses import Synapses


class ProximalSchedule:
    """Owes the proximal steps of applied updates and pays them every ``every`` steps.

    A proximal step of k times the step size is as stable as k single ones and k times cheaper, so the schedule
    counts the steps it owes and pays them together; a step the optimizer skipped is owed nothing.

    Parameters
    ----------
    synapses : Synapses
        Whose :meth:`~streammas.learner.synapses.Synapses.proximal_step` is paid.
    optimizer : torch.optim.Optimizer
        The learner's optimizer; each of its parameter groups is paid at its own learning rate.
    reg_lambda : float
        The regulariser's strength (0: nothing to pay).
    every : int
        Pay what is owed once every this many steps (the learner's ``prox_every``).
    device_gated : bool, default False
        The updates' success arrives as a device tensor (1 or 0) rather than being known on the host.
    metric_floor : float, default 0.0
        Under Adam, each weight's metric ``sqrt(v_hat) + eps`` is raised to at least this fraction of its
        tensor's mean metric (0: Adam's own, weight by weight), so that a weight Adam rarely moved (a tiny
        ``v_hat``) is not pinned to theta* by an enormous ``c``.

    Attributes
    ----------
    payments : int
        Proximal steps paid so far in this process (each for all the updates it owed; not saved): what
        ``streammas bench step`` reads to check that a variant ran the regulariser.

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.tensor([3.0]))
    >>> syn = Synapses([("w", w)], normalization="none")
    >>> syn.accumulate([torch.tensor([1.0])], batch_size=1)
    >>> syn.consolidate()                          # theta* = 3, Omega = 1
    >>> optimizer = torch.optim.SGD([w], lr=0.25)
    >>> with torch.no_grad():
    ...     _ = w.fill_(5.0)
    >>> schedule = ProximalSchedule(syn, optimizer, reg_lambda=1.0, every=2)
    >>> schedule.after_step(None); w.item()          # owed, not yet paid
    5.0
    >>> schedule.after_step(None); w.item()          # two steps at once: c = 2 * 2 * 0.25 = 1, (5 + 3) / 2
    4.0
    >>> schedule.payments
    1
    """

    def __init__(self, synapses: Synapses, optimizer: torch.optim.Optimizer, *, reg_lambda: float, every: int,
                 device_gated: bool = False, metric_floor: float = 0.0) -> None:
        self.synapses = synapses
        self.metric_floor = float(metric_floor)
        self.optimizer = optimizer
        self.reg_lambda = float(reg_lambda)
        self.every = int(every)
        self.device_gated = device_gated
        index = {id(p): i for i, p in enumerate(synapses.params)}
        self._group_indices = [[index[id(p)] for p in g["params"] if id(p) in index] for g in optimizer.param_groups]
        self.owed: float | torch.Tensor = 0  # optimizer steps whose proximal step is still to be paid
        self.due = 0
        self.payments = 0

    @property
    def active(self) -> bool:
        """Whether there is anything to protect: a regulariser and at least one consolidation."""
        return bool(self.reg_lambda) and self.synapses.consolidations > 0

    def after_step(self, gate: torch.Tensor | None) -> None:
        """Count one update (``gate``: a device 1 or 0, whether it was applied; ``None``: it was), paying what is
        owed every ``every`` steps. The gradients are dead after the optimizer's step, so their memory is the
        proximal step's workspace."""
        if not self.active:
            return
        self.owed = self.owed + (1 if gate is None else gate)
        self.due += 1
        if self.due < self.every:
            return
        self.due = 0
        steps = self.owed if gate is None else self.owed * gate
        self._pay(steps, [p.grad for p in self.synapses.params])
        # A skipped last step keeps what was owed for the next one.
        self.owed = 0 if gate is None else self.owed * (1 - gate)

    def settle(self) -> None:
        """Pay every owed step now, before Omega or theta* change."""
        if self.active and self.due:
            self._pay(self.owed, [None] * len(self.synapses.params))
        self.reset()

    def reset(self) -> None:
        self.owed, self.due = 0, 0

    def _pay(self, steps: float | torch.Tensor, grads: list[torch.Tensor | None]) -> None:
        self.payments += 1
        for group, indices in zip(self.optimizer.param_groups, self._group_indices):
            workspace = [grads[i] for i in indices]
            if any(g is None or g.is_sparse for g in workspace):
                workspace = None
            self.synapses.proximal_step(self.reg_lambda, group["lr"], steps, indices, workspace,
                                        self._metric(group, indices))
        for p in self.synapses.params:
            p.grad = None

    def _metric(self, group: dict, indices: list[int]) -> list[torch.Tensor] | None:
        """Adam's per-parameter step-size divisor ``sqrt(v_hat) + eps`` (``None`` for optimizers that step in
        the parameters' own metric, as SGD does). A parameter Adam has not stepped yet gets no proximal step."""
        if not isinstance(self.optimizer, (torch.optim.Adam, torch.optim.AdamW)) or group.get("amsgrad"):
            return None
        beta2, eps = group["betas"][1], group["eps"]
        out = []
        for i in indices:
            moment = adam_second_moment(self.optimizer, self.synapses.params[i])
            if moment is None:
                out.append(torch.full_like(self.synapses.params[i], torch.inf))
                continue
            v, step = moment
            correction = 1.0 - beta2 ** step
            metric = (v / correction.to(v)).sqrt_().add_(eps)
            if self.metric_floor:
                metric = torch.maximum(metric, metric.mean() * self.metric_floor)
            out.append(metric)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"owed": float(host_read(torch.as_tensor(self.owed))), "due": self.due}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        owed = float(state["owed"])
        if self.device_gated:
            first = self.synapses.params[0]
            self.owed = torch.tensor(owed, dtype=first.dtype, device=first.device)
        else:
            self.owed = owed
        self.due = int(state["due"])
