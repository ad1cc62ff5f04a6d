"""What the replay memory keeps: the rule that gives a new sample a slot, or none.

A rule sees only host-side facts (how many samples the stream has offered, the pseudo-regime each came from, which
slot holds which regime) and draws from the memory's own generator, so that choosing reads no tensor.

- :class:`Reservoir`: every sample of the stream has the same chance ``capacity / n`` to be held, so the memory
  holds the regimes in proportion to their length (a rare regime gets a rare share).
- :class:`Balanced`: every pseudo-regime gets an equal share (in the spirit of class-balanced reservoir sampling,
  with the learner's own regimes in place of labels): a full memory makes room for a sample of a regime that
  holds fewer slots than the largest by evicting a random sample of the largest; within a regime that holds its
  share, a reservoir over that regime's samples.

The learner's pseudo-regime of a sample is the number of peaks its detector has seen when the sample arrives (a
new regime begins at each peak, :mod:`streammas.learner.regimes`).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from streammas.learner.draws import VECTOR_FROM, below, below_one

__all__ = ["RETENTIONS", "Balanced", "Reservoir", "make_retention"]


class Reservoir:
    """Uniform reservoir sampling over the whole stream.

    Examples
    --------
    >>> rule = Reservoir(random.Random(0))
    >>> rule.choose(rows=2, size=2, seen=0, regime=0)      # an empty memory fills in order
    {0: 0, 1: 1}
    >>> len(rule.choose(rows=1000, size=2, seen=1000, regime=0)) <= 2
    True
    """

    def __init__(self, generator: random.Random) -> None:
        self.generator = generator

    def choose(self, rows: int, size: int, seen: int, regime: int) -> dict[int, int]:
        """The slots a batch of ``rows`` samples takes (slot -> row; a later row drawing the same slot wins), the
        memory having ``size`` slots and the stream ``seen`` samples before this batch."""
        # The rows that still find an empty slot take them in order; every later sample, the n-th of the stream
        # (0-based), draws j uniform in [0, n] and takes slot j if j < size: kept with chance size / (n + 1).
        fill = min(rows, max(size - seen, 0))
        chosen = {seen + row: row for row in range(fill)}
        bounds = range(seen + fill + 1, seen + rows + 1)  # n + 1 for each later row
        if len(bounds) < VECTOR_FROM:  # below NumPy's fixed cost: the same draws, one by one
            draw = self.generator.random
            for row, bound in enumerate(bounds, fill):
                slot = int(draw() * bound)  # below_one, inlined: a call per row would cost as much as the draw
                if slot < size:
                    chosen[slot] = row  # a later row drawing the same slot wins
        else:
            slots = below(self.generator, np.arange(bounds.start, bounds.stop), len(bounds))
            kept = np.flatnonzero(slots < size)
            chosen.update(zip(slots[kept].tolist(), (kept + fill).tolist()))  # in row order: a later row wins
        return chosen

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    def resize(self, size: int) -> None:
        """The memory keeps only its first ``size`` slots."""

    def adopt(self, held: int) -> None:
        """The memory holds ``held`` samples this rule did not choose."""


class Balanced:
    """An equal share of the memory for every pseudo-regime.

    Examples
    --------
    >>> rule = Balanced(random.Random(0))
    >>> _ = rule.choose(rows=4, size=4, seen=0, regime=0)        # regime 0 fills the memory
    >>> chosen = rule.choose(rows=2, size=4, seen=4, regime=1)   # regime 1 takes two of regime 0's slots
    >>> len(chosen), sorted(rule.held().items())
    (2, [(0, 2), (1, 2)])
    >>> _ = rule.choose(rows=100, size=4, seen=6, regime=0)      # a long regime 0 keeps its share, no more
    >>> sorted(rule.held().items())
    [(0, 2), (1, 2)]
    """

    def __init__(self, generator: random.Random) -> None:
        self.generator = generator
        self.slot_regime: list[int] = []  # by slot: the regime of the sample it holds
        self._slots: dict[int, list[int]] = {}  # by regime: the slots holding its samples
        self._seen: dict[int, int] = {}  # by regime: samples it has offered

    def held(self) -> dict[int, int]:
        """Slots held, by pseudo-regime."""
        return {r: len(s) for r, s in self._slots.items() if s}

    def choose(self, rows: int, size: int, seen: int, regime: int) -> dict[int, int]:
        chosen: dict[int, int] = {}
        mine = self._slots.setdefault(regime, [])
        for row in range(rows):
            self._seen[regime] = n = self._seen.get(regime, 0) + 1
            if len(self.slot_regime) < size:  # room left
                slot = len(self.slot_regime)
                self.slot_regime.append(regime)
                mine.append(slot)
            else:
                largest = max(self._slots, key=lambda r: len(self._slots[r]))
                if len(mine) < len(self._slots[largest]):  # below the largest share: take one of its samples
                    theirs = self._slots[largest]
                    slot = theirs.pop(below_one(self.generator, len(theirs)))
                    self.slot_regime[slot] = regime
                    mine.append(slot)
                else:  # a reservoir over this regime's own samples
                    j = below_one(self.generator, n)
                    if j >= len(mine):
                        continue
                    slot = mine[j]
            chosen[slot] = row
        return chosen

    def adopt(self, held: int) -> None:
        """The memory holds ``held`` samples this rule did not choose: one pseudo-regime of their own (-1)."""
        self.slot_regime = [-1] * held
        self.resize(held)

    def resize(self, size: int) -> None:
        """The memory keeps only its first ``size`` slots."""
        del self.slot_regime[size:]
        self._slots = {}
        for slot, r in enumerate(self.slot_regime):
            self._slots.setdefault(r, []).append(slot)

    def state_dict(self) -> dict[str, Any]:
        # each regime's slots in their order (evictions index into it), the regimes in theirs (ties go first)
        regimes = list(self._slots)
        return {"regimes": torch.tensor(regimes, dtype=torch.int64),
                "slot_counts": torch.tensor([len(self._slots[r]) for r in regimes], dtype=torch.int64),
                "slots": torch.tensor([slot for r in regimes for slot in self._slots[r]], dtype=torch.int64),
                "seen_regimes": torch.tensor(list(self._seen), dtype=torch.int64),
                "seen_counts": torch.tensor(list(self._seen.values()), dtype=torch.int64)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        slots = iter(state["slots"].tolist())
        self._slots = {int(r): [next(slots) for _ in range(n)]
                       for r, n in zip(state["regimes"].tolist(), state["slot_counts"].tolist())}
        self.slot_regime = [0] * sum(len(s) for s in self._slots.values())
        for r, held in self._slots.items():
            for slot in held:
                self.slot_regime[slot] = r
        self._seen = dict(zip(state["seen_regimes"].tolist(), state["seen_counts"].tolist()))


#: The retention rules by the names the settings accept.
RETENTIONS = {"reservoir": Reservoir, "balanced": Balanced}


def make_retention(name: str, generator: random.Random) -> Reservoir | Balanced:
    """The retention rule called ``name``, drawing from ``generator``."""
    if name not in RETENTIONS:
        raise ValueError(f"replay_retention must be one of {tuple(RETENTIONS)}, got {name!r}")
    return RETENTIONS[name](generator)
