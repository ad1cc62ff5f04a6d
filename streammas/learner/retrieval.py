"""What the replay memory replays: the rule that picks, among stored samples, the ones learned beside a batch.

- ``"uniform"`` (no object): every stored sample has the same chance, drawn on the host by the memory.
- :class:`Interfered`: maximally interfered retrieval (MIR; Aljundi, Caccia, Belilovsky et al., NeurIPS 2019).
  The memory draws ``candidates`` times the samples it will replay; the rule takes a *virtual* step of the
  optimizer on the new batch alone and replays the candidates whose loss that step would raise most: the past
  that the next update would otherwise overwrite.

The virtual step is the one the optimizer would take, without momentum: ``-lr * g`` for SGD, and under Adam
``-lr * g / (sqrt(v_hat) + eps)`` with Adam's own second moment, so that what counts as interference follows the
geometry of the update that will happen. Everything stays on the device; nothing is read on the host.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

__all__ = ["RETRIEVALS", "Interfered", "make_retrieval"]


class Interfered:
    """Replay the candidates that a virtual step on the new batch would hurt most.

    Parameters
    ----------
    model : torch.nn.Module
        The model the learner trains.
    objective : callable
        ``(output, x, y) -> per-sample losses``.
    optimizer : torch.optim.Optimizer
        The learner's optimizer: its learning rate, and under Adam its second moments, shape the virtual step.
    candidates : int, default 5
        Samples drawn from the memory per sample replayed.

    Examples
    --------
    >>> from streammas.learner.objectives import reconstruction
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> rule = Interfered(model, reconstruction, torch.optim.SGD(model.parameters(), lr=0.1), candidates=3)
    >>> batch, pool = torch.rand(5, 4), torch.rand(6, 4)
    >>> picked = rule.pick(batch, None, pool, None, 2)   # 2 of the 6 candidates
    >>> picked.shape, picked.dtype
    (torch.Size([2]), torch.int64)

    The candidate that the batch's step harms most is the one most unlike the batch:

    >>> batch = torch.zeros(8, 4)
    >>> pool = torch.cat([torch.zeros(1, 4), torch.full((1, 4), 3.0)])
    >>> for _ in range(200):                   # learn both, then see which one a step on zeros would undo
    ...     _ = reconstruction(model(pool), pool, None).mean().backward(); rule.optimizer.step()
    ...     rule.optimizer.zero_grad()
    >>> int(rule.pick(batch, None, pool, None, 1))
    1
    """

    def __init__(self, model: nn.Module, objective: Callable, optimizer: torch.optim.Optimizer,
                 candidates: int = 5) -> None:
        if candidates < 1:
            raise ValueError(f"replay_candidates must be >= 1, got {candidates}")
        self.model = model
        self.objective = objective
        self.optimizer = optimizer
        self.candidates = int(candidates)
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self._groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}

    def pick(self, x: torch.Tensor, y: torch.Tensor | None, pool_x: torch.Tensor, pool_y: torch.Tensor | None,
             k: int) -> torch.Tensor:
        """Indices into ``pool_x`` of the ``k`` candidates whose loss a virtual step on ``(x, y)`` raises most."""
        if k >= pool_x.shape[0]:
            return torch.arange(pool_x.shape[0], device=pool_x.device)
        params = [p for _, p in self.named]
        with torch.enable_grad():
            loss = self.objective(self.model(x), x, y).mean()
            grads = torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            before = self.objective(self.model(pool_x), pool_x, pool_y)
            stepped = {name: p - self._step(p, g) for (name, p), g in zip(self.named, grads) if g is not None}
            after = self.objective(functional_call(self.model, stepped, (pool_x,)), pool_x, pool_y)
            return torch.topk(after - before, k).indices

    def _step(self, p: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """The optimizer's step on ``p`` for the gradient ``g``, without momentum."""
        group = self._groups[id(p)]
        state = self.optimizer.state.get(p, {})
        v = state.get("exp_avg_sq")
        if v is None:  # SGD, or Adam before its first step (whose step is then lr * sign(g), as here)
            return group["lr"] * (g if "betas" not in group else g / (g.abs() + group["eps"]))
        # the step count may live on the device (fused Adam): the bias correction stays there
        v_hat = v / (1 - group["betas"][1] ** state["step"])
        return group["lr"] * g / (v_hat.sqrt() + group["eps"])


#: The retrieval rules by the names the settings accept (``"uniform"``: the memory's own draws).
RETRIEVALS = ("uniform", "interfered")


def make_retrieval(name: str, model: nn.Module, objective: Callable, optimizer: torch.optim.Optimizer,
                   candidates: int) -> Interfered | None:
    """The retrieval rule called ``name`` (``None`` for uniform draws)."""
    if name not in RETRIEVALS:
        raise ValueError(f"replay_retrieval must be one of {RETRIEVALS}, got {name!r}")
    return None if name == "uniform" else Interfered(model, objective, optimizer, candidates)
