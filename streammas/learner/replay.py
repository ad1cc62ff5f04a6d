"""Replay memory: a uniform reservoir of past samples on the device, replayed beside each new batch.

Reservoir sampling keeps every sample seen so far with the same chance ``capacity / n``, so the memory holds
the stream's regimes in proportion to their length, old ones included (a highest-loss buffer, by contrast,
fills with the current regime within a few steps). The samples are kept as they arrived, before input scaling,
and scaled when replayed, so that they follow the scaler's statistics. Which slot a sample takes and which
samples are replayed is drawn on the host with the memory's own generator: no tensor is read.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import torch


class ReplayMemory:
    """A reservoir of up to ``capacity`` samples (and labels), at most ``max_bytes`` of them.

    Parameters
    ----------
    capacity : int
        Samples kept; 0 disables the memory.
    max_bytes : int, default 64 MiB
        The memory's bound in bytes: wide samples lower the capacity to fit.
    seed : int, default 0
        Seed of the memory's own generator (slots and replay draws).
    transform : callable or None
        Applied to replayed samples (the learner's input scaling).

    Attributes
    ----------
    x, y : torch.Tensor or None
        The samples kept (and their labels), allocated at the first :meth:`add`.
    seen : int
        Samples offered so far.

    Examples
    --------
    >>> memory = ReplayMemory(4, seed=0)
    >>> for start in range(0, 100, 10):
    ...     memory.add(torch.arange(start, start + 10, dtype=torch.float32).unsqueeze(1), None)
    >>> len(memory), memory.seen
    (4, 100)
    >>> x_all, _ = memory.extend(torch.zeros(3, 1), None)   # the batch, then 3 replayed samples
    >>> x_all.shape, bool((x_all[3:] >= 0).all())
    (torch.Size([6, 1]), True)
    """

    def __init__(self, capacity: int, *, max_bytes: int = 64 << 20, seed: int = 0,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        if capacity < 0:
            raise ValueError(f"replay must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.max_bytes = int(max_bytes)
        self.transform = transform
        self.generator = random.Random(int(seed))
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.seen = 0

    def __len__(self) -> int:
        return 0 if self.x is None else min(self.seen, self.x.shape[0])

    def add(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        """Offer a batch: each sample takes a slot with probability ``capacity / seen``."""
        if self.capacity == 0 or x.shape[0] == 0:
            return
        if self.x is None:
            per_sample = x[0].numel() * x.element_size() + (0 if y is None else y.element_size())
            slots = min(self.capacity, max(1, self.max_bytes // max(per_sample, 1)))
            self.x = torch.empty((slots, *x.shape[1:]), dtype=x.dtype, device=x.device)
            self.y = None if y is None else torch.empty(slots, dtype=y.dtype, device=y.device)
        size = self.x.shape[0]
        chosen: dict[int, int] = {}  # slot -> row of the batch; a later row drawing the same slot wins
        for row in range(x.shape[0]):
            n = self.seen + row  # this sample's place in the stream (0-based)
            slot = n if n < size else self.generator.randrange(n + 1)
            if slot < size:
                chosen[slot] = row
        self.seen += x.shape[0]
        if not chosen:
            return
        slots = torch.tensor(list(chosen), device=x.device)
        rows = torch.tensor(list(chosen.values()), device=x.device)
        self.x.index_copy_(0, slots, x.index_select(0, rows))
        if self.y is not None and y is not None:
            self.y.index_copy_(0, slots, y.index_select(0, rows))

    def extend(self, x: torch.Tensor, y: torch.Tensor | None, *, draws: int | None = None,
               positions: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch followed by as many samples drawn from the memory (the batch alone while it is empty).

        In a group of workers each holds the same memory and draws for the whole global batch (``draws`` samples,
        so that the generators stay alike), keeping the draws at its own rows' ``positions`` in that batch: the
        workers together replay what one learner would.

        >>> memory = ReplayMemory(8, seed=1)
        >>> memory.add(torch.arange(8.0).unsqueeze(1), None)
        >>> twin = ReplayMemory(8, seed=1)
        >>> twin.add(torch.arange(8.0).unsqueeze(1), None)
        >>> whole = memory.extend(torch.zeros(3, 1), None)[0][3:]
        >>> part = twin.extend(torch.zeros(1, 1), None, draws=3, positions=[1])[0][1:]
        >>> bool(part[0] == whole[1])
        True
        """
        held = len(self)
        if held == 0:
            return x, y
        drawn = [self.generator.randrange(held) for _ in range(x.shape[0] if draws is None else draws)]
        if positions is not None:
            drawn = [drawn[i] for i in positions]
        pick = torch.tensor(drawn, dtype=torch.long, device=self.x.device)
        replayed = self.x.index_select(0, pick)
        if self.transform is not None:
            replayed = self.transform(replayed)
        x_all = torch.cat([x, replayed.to(x.dtype)])
        y_all = None if y is None or self.y is None else torch.cat([y, self.y.index_select(0, pick)])
        return x_all, y_all

    def nbytes(self) -> int:
        held = 0 if self.x is None else self.x.numel() * self.x.element_size()
        return held + (0 if self.y is None else self.y.numel() * self.y.element_size())

    def state_dict(self) -> dict[str, Any]:
        return {"x": None if self.x is None else self.x.clone(), "y": None if self.y is None else self.y.clone(),
                "seen": self.seen, "generator": _plain(self.generator.getstate())}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | None = None) -> None:
        self.x = None if state["x"] is None else state["x"].to(device)
        self.y = None if state["y"] is None else state["y"].to(device)
        self.seen = int(state["seen"])
        self.generator.setstate(_tuples(state["generator"]))


def _plain(value: Any) -> Any:
    """A generator's state (nested tuples of ints) as lists, which ``torch.load(weights_only=True)`` reads."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
