"""Replay memory: past samples on the device, replayed beside each new batch.

Which samples the memory keeps is its retention rule's choice (:mod:`streammas.learner.retention`): a uniform
reservoir keeps every sample seen so far with the same chance, so it holds the stream's regimes in proportion to
their length, old ones included (a highest-loss buffer, by contrast, fills with the current regime within a few
steps); a balanced rule gives each of the learner's pseudo-regimes an equal share. The memory is bounded in bytes
as well as in samples, and keeps each sample in the narrowest of the stream's own dtype and the model's (pixels
that arrive as ``uint8`` stay ``uint8``: four times the samples in the same bytes, exactly). The samples are kept
as they arrived, before input scaling, and scaled when replayed, so that they follow the scaler's statistics.
Which slot a sample takes and which samples are replayed is drawn on the host with the memory's own generator: no
tensor is read.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from streammas.learner.draws import below
from streammas.learner.retention import make_retention
from streammas.learner.retrieval import Interfered


class ReplayMemory:
    """Up to ``capacity`` samples (and labels), at most ``max_bytes`` of them, kept by a retention rule.

    Parameters
    ----------
    capacity : int
        Samples kept at most; 0 disables the memory.
    max_bytes : int, default 64 MiB
        The memory's bound in bytes: wide samples lower the capacity to fit, narrow dtypes raise it.
    seed : int, default 0
        Seed of the memory's own generator (slots and replay draws).
    retention : {"reservoir", "balanced"}, default "reservoir"
        The rule that chooses what to keep (:mod:`streammas.learner.retention`).
    ratio : int, default 1
        Samples replayed per row of a batch.
    retrieval : Interfered or None, default None
        Picks what is replayed among ``retrieval.candidates`` times as many uniform draws
        (:mod:`streammas.learner.retrieval`); ``None``: the uniform draws themselves.

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

    Pixels that arrive as bytes are kept as bytes, in a quarter of the memory:

    >>> pixels = ReplayMemory(1000, max_bytes=64 * 100)
    >>> pixels.add(torch.full((10, 64), 255.0), None, dtype=torch.uint8)
    >>> pixels.x.dtype, pixels.x.shape[0], pixels.extend(torch.zeros(1, 64), None)[0][1, 0].item()
    (torch.uint8, 100, 255.0)
    """

    def __init__(self, capacity: int, *, max_bytes: int = 64 << 20, seed: int = 0,
                 retention: str = "reservoir",
                 ratio: int = 1, retrieval: Interfered | None = None) -> None:
        if capacity < 0:
            raise ValueError(f"replay must be >= 0, got {capacity}")
        if ratio < 1:
            raise ValueError(f"replay_ratio must be >= 1, got {ratio}")
        self.capacity = int(capacity)
        self.max_bytes = int(max_bytes)
        self.ratio = int(ratio)
        self.retrieval = retrieval
        self.generator = random.Random(seed)
        self.retention = make_retention(retention, self.generator)
        self.retention_name = retention
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.seen = 0

    def __len__(self) -> int:
        return 0 if self.x is None else min(self.seen, self.x.shape[0])

    def add(self, x: torch.Tensor, y: torch.Tensor | None, *, regime: int = 0,
            dtype: torch.dtype | None = None) -> None:
        """Offer a batch of the pseudo-regime ``regime``; the retention rule chooses the slots it takes. ``dtype``:
        the stream's own dtype, which ``x`` holds exactly, kept where it is narrower than ``x``'s."""
        if self.capacity == 0 or x.shape[0] == 0:
            return
        if self.x is None:
            self._allocate(x, y, dtype)
        elif self.x.dtype not in (x.dtype, dtype):  # a batch the held dtype cannot keep exactly
            self._widen(x.dtype)
        chosen = self.retention.choose(x.shape[0], self.x.shape[0], self.seen, regime)
        self.seen += x.shape[0]
        if not chosen:
            return
        # NumPy and from_numpy: a few microseconds less than torch.tensor on a list (which reads it element by element)
        slots = torch.from_numpy(np.fromiter(chosen, dtype=np.int64, count=len(chosen))).to(x.device)
        rows = torch.from_numpy(np.fromiter(chosen.values(), dtype=np.int64, count=len(chosen))).to(x.device)
        self.x.index_copy_(0, slots, x.index_select(0, rows).to(self.x.dtype))
        if self.y is not None and y is not None:
            self.y.index_copy_(0, slots, y.index_select(0, rows))

    def _allocate(self, x: torch.Tensor, y: torch.Tensor | None, dtype: torch.dtype | None) -> None:
        held = x.dtype if dtype is None or dtype.itemsize >= x.element_size() else dtype
        slots = self._slots(x[0].numel(), held, y)
        self.x = torch.empty((slots, *x.shape[1:]), dtype=held, device=x.device)
        self.y = None if y is None else torch.empty(slots, dtype=y.dtype, device=y.device)

    def _slots(self, features: int, dtype: torch.dtype, y: torch.Tensor | None) -> int:
        per_sample = features * dtype.itemsize + (0 if y is None else y.element_size())
        return min(self.capacity, max(1, self.max_bytes // max(per_sample, 1)))

    def _widen(self, dtype: torch.dtype) -> None:
        """Keep the samples in ``dtype`` from now on, in the slots that still fit the bound in bytes."""
        slots = min(self.x.shape[0], self._slots(self.x[0].numel(), dtype, self.y))
        self.x = self.x[:slots].to(dtype)
        self.y = None if self.y is None else self.y[:slots].clone()
        self.retention.resize(slots)

    def draws(self, rows: int) -> int:
        """How many samples a batch of ``rows`` rows replays once the memory holds any."""
        return rows * self.ratio

    def extend(self, x: torch.Tensor, y: torch.Tensor | None, *, draws: int | None = None,
               positions: list[int] | None = None,
               scale: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch followed by :meth:`draws` samples drawn from the memory (the batch alone while it is empty),
        all standardised by ``scale`` (the learner's input scaling), in one call where nothing compares the batch
        with candidates first: each row is scaled alone, so the result is the same.

        In a group of workers each holds the same memory and draws for the whole global batch (``draws`` rows,
        so that the generators stay alike), keeping the draws of its own rows' ``positions`` in that batch: the
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
            return (x if scale is None else scale(x)), y
        per_row = self.ratio
        wanted = per_row * (x.shape[0] if draws is None else draws)
        # a retrieval rule picks among more candidates; a group's workers split the draws, so they draw uniformly
        pool = wanted * self.retrieval.candidates if self.retrieval is not None and positions is None else wanted
        drawn = below(self.generator, held, pool)  # all of them, so that the workers' generators stay alike
        if positions is not None:
            drawn = drawn.reshape(-1, per_row)[positions].reshape(-1)
        pick = torch.from_numpy(drawn).to(self.x.device)
        replayed = self.x.index_select(0, pick).to(x.dtype)
        replayed_y = None if y is None or self.y is None else self.y.index_select(0, pick)
        if pool > wanted:  # the rule compares the batch with the candidates in the learner's units
            if scale is not None:
                x, replayed, scale = scale(x), scale(replayed), None
            chosen = self.retrieval.pick(x, y, replayed, replayed_y, wanted)
            replayed = replayed.index_select(0, chosen)
            replayed_y = None if replayed_y is None else replayed_y.index_select(0, chosen)
        x_all = torch.cat([x, replayed])
        y_all = None if replayed_y is None else torch.cat([y, replayed_y])
        return (x_all if scale is None else scale(x_all)), y_all

    def describe(self) -> str:
        """What the memory holds, in a line (the demo and ``streammas inspect`` print it).

        >>> memory = ReplayMemory(1000, max_bytes=64 * 100, ratio=2)
        >>> memory.add(torch.zeros(30, 64), None, dtype=torch.uint8)
        >>> memory.describe()
        'a reservoir of 30 samples of the 30 seen (room for 100; 6.2 KiB of uint8), 2 replayed per new sample'
        """
        if self.x is None:
            return "none (replay = 0)" if self.capacity == 0 else "empty so far"
        return describe_memory({"x": self.x, "y": self.y, "seen": self.seen, "retention": self.retention_name,
                                "ratio": self.ratio})

    def nbytes(self) -> int:
        held = 0 if self.x is None else self.x.numel() * self.x.element_size()
        return held + (0 if self.y is None else self.y.numel() * self.y.element_size())

    def state_dict(self) -> dict[str, Any]:
        return {"x": None if self.x is None else self.x.clone(), "y": None if self.y is None else self.y.clone(),
                "seen": self.seen, "generator": _plain(self.generator.getstate()),
                "retention": self.retention_name, "retained": self.retention.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | None = None) -> None:
        self.x = None if state["x"] is None else state["x"].to(device)
        self.y = None if state["y"] is None else state["y"].to(device)
        self.seen = int(state["seen"])
        self.generator.setstate(_tuples(state["generator"]))
        if state.get("retention", "reservoir") == self.retention_name:  # else the rule starts afresh
            self.retention.load_state_dict(state.get("retained", {}))
        else:
            self.retention = make_retention(self.retention_name, self.generator)
            self.retention.adopt(len(self))


def describe_memory(state: Mapping[str, Any]) -> str:
    """:meth:`ReplayMemory.describe` from a memory's ``state_dict`` (a checkpoint's ``learner["replay"]``)."""
    x = state.get("x")
    if x is None:
        return "empty (or none: replay = 0)"
    seen, slots = int(state.get("seen", 0)), int(x.shape[0])
    held = min(seen, slots)
    y = state.get("y")
    size = x.numel() * x.element_size() + (0 if y is None else y.numel() * y.element_size())
    kind = {"reservoir": "a reservoir", "balanced": "a balanced memory"}.get(state.get("retention", "reservoir"),
                                                                             "a memory")
    ratio = state.get("ratio")
    per = "" if ratio is None else f", {ratio} replayed per new sample"
    return (f"{kind} of {held:,} samples of the {seen:,} seen (room for {slots:,}; {_size(size)} of "
            f"{str(x.dtype).removeprefix('torch.')}){per}")


def _size(n: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def _plain(value: Any) -> Any:
    """A generator's state (nested tuples of ints) as lists, which ``torch.load(weights_only=True)`` reads."""
    return [_plain(v) for v in value] if isinstance(value, tuple) else value


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value
