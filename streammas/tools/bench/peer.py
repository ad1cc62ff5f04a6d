"""The peer of the learner's defaults in ``streammas bench step``: a plain torch loop, as a practitioner who knows
torch well would write it, that learns the same rows per step as the defaults do.

Per batch: the running per-feature mean and variance in float64 (Chan's merge of the batch's mean and variance), a
reservoir of past inputs with the same byte budget as the learner's memory (float32 samples), vectorised (one
draw for the batch's slots, one for the replayed rows), ``ratio`` replayed rows per row of the batch, the batch
and the replayed rows standardised together, one forward and backward pass, and torch's fused Adam. Nothing
else: no input checks, no clipping, no importance, no skipped steps.
"""

from __future__ import annotations

import torch
from torch import nn


class PractitionerLoop:
    """A plain torch online step: running float64 standardisation, a vectorised reservoir, fused Adam.

    Parameters
    ----------
    model : torch.nn.Module
        An autoencoder; the loss is the mean squared reconstruction error of the standardised rows.
    lr : float
        Adam's step size.
    memory_bytes : int
        The reservoir's budget in bytes (float32 samples): ``memory_bytes // (4 * features)`` samples.
    ratio : int
        Rows replayed per row of the batch (drawn with replacement, as the learner draws).
    max_samples : int, default 1,000,000
        The reservoir's cap in samples, as the learner's ``replay``.
    seed : int, default 0
        Seed of the loop's own generator.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> loop = PractitionerLoop(nn.Sequential(nn.Linear(4, 2), nn.ReLU(), nn.Linear(2, 4)), 1e-3,
    ...                         memory_bytes=4 * 4 * 50, ratio=2)
    >>> for _ in range(10):
    ...     losses = loop.step(torch.rand(8, 4))
    >>> losses.shape, loop.rows_last_step, loop.held, loop.capacity
    (torch.Size([8]), 24, 50, 50)
    """

    def __init__(self, model: nn.Module, lr: float, *, memory_bytes: int, ratio: int, max_samples: int = 1_000_000,
                 seed: int = 0) -> None:
        self.model = model
        try:  # torch's fused kernel where the device has one
            self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
        except (RuntimeError, ValueError):
            self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.memory_bytes, self.ratio, self.max_samples = int(memory_bytes), int(ratio), int(max_samples)
        self.generator = torch.Generator().manual_seed(seed)
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None
        self.memory: torch.Tensor | None = None
        self.capacity = self.held = self.seen = 0
        self.rows_last_step = 0

    def _statistics(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold the batch into the float64 running statistics; the float32 mean and std to standardise with."""
        flat = flat.double()
        mean_b = flat.mean(dim=0)
        var_b = (flat - mean_b).pow_(2).mean(dim=0)  # torch.var_mean over dim 0 is far slower on a CPU
        n, b = self.count, flat.shape[0]
        if self.mean is None:
            self.mean, self.var = mean_b, var_b
        else:
            total = n + b
            delta = mean_b - self.mean
            self.mean = self.mean.add(delta, alpha=b / total)
            self.var = (self.var * (n / total)).add_(var_b, alpha=b / total).addcmul_(delta, delta,
                                                                                       value=n * b / total ** 2)
        self.count = n + b
        return self.mean.float(), self.var.add(1e-8).sqrt_().float()

    def _store(self, flat: torch.Tensor) -> None:
        """Reservoir sampling for the whole batch at once: row ``i`` is stream sample ``seen + i``; it takes a
        free slot, or slot ``j ~ U{0..seen+i}`` when ``j`` falls inside the reservoir."""
        if self.memory is None:
            self.capacity = min(self.max_samples, max(1, self.memory_bytes // (4 * flat.shape[1])))
            self.memory = torch.empty(self.capacity, flat.shape[1])
        place = torch.arange(self.seen, self.seen + flat.shape[0])
        if self.seen + flat.shape[0] > self.capacity:
            drawn = (torch.rand(flat.shape[0], dtype=torch.float64, generator=self.generator) * (place + 1)).long()
            place = torch.where(place < self.capacity, place, drawn)
        kept = place < self.capacity
        self.memory.index_copy_(0, place[kept], flat[kept])
        self.seen += flat.shape[0]
        self.held = min(self.seen, self.capacity)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Learn a batch with ``ratio`` replayed rows per row; returns the batch's losses before the update."""
        flat = x.reshape(x.shape[0], -1).float()
        mean, std = self._statistics(flat)
        rows = flat
        if self.held:
            pick = torch.randint(self.held, (self.ratio * flat.shape[0],), generator=self.generator)
            rows = torch.cat([flat, self.memory.index_select(0, pick)])
        z = (rows - mean) / std
        losses = (self.model(z) - z).pow(2).mean(dim=1)
        self.optimizer.zero_grad(set_to_none=True)
        losses.mean().backward()
        self.optimizer.step()
        self._store(flat)
        self.rows_last_step = rows.shape[0]
        return losses[: flat.shape[0]].detach()
