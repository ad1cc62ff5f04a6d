"""The replay memory's host-side draws: the same draws by the loop and by the vectorised path, a reservoir that
still keeps every sample with the same chance, and draws that follow the generator state a checkpoint saves."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from streammas.learner.draws import VECTOR_FROM, below, below_one
from streammas.learner.replay import ReplayMemory
from streammas.learner.retention import Balanced, Reservoir


@pytest.mark.parametrize("count", [0, 1, VECTOR_FROM - 1, VECTOR_FROM, 200])
def test_below_is_int_of_random_times_the_bound_on_either_path(count):
    drawn, reference = random.Random(11), random.Random(11)
    assert below(drawn, 1337, count).tolist() == [int(reference.random() * 1337) for _ in range(count)]
    bounds = np.arange(5, 5 + count)
    assert below(drawn, bounds, count).tolist() == [int(reference.random() * b) for b in bounds.tolist()]
    assert below_one(drawn, 3) == int(reference.random() * 3)
    assert drawn.getstate() == reference.getstate()  # the generator advances as random() would advance it


def test_below_stays_below_the_bound_and_covers_it():
    generator = random.Random(0)
    for bound in (1, 2, 3, 1000, 2**40 + 1):
        drawn = below(generator, bound, 2000)
        assert drawn.min() >= 0 and drawn.max() < bound
    assert set(below(generator, 7, 2000).tolist()) == set(range(7))


def _original_reservoir(generator: random.Random, rows: int, size: int, seen: int) -> dict[int, int]:
    """The rule as it was written first, one draw per row (randrange's draw replaced by int(random() * n))."""
    chosen = {}
    for row in range(rows):
        n = seen + row
        slot = n if n < size else int(generator.random() * (n + 1))
        if slot < size:
            chosen[slot] = row
    return chosen


@pytest.mark.parametrize("rows", [1, 5, VECTOR_FROM - 1, VECTOR_FROM, 100])
def test_the_reservoir_chooses_what_one_draw_per_row_chooses(rows):
    rule, reference = Reservoir(random.Random(4)), random.Random(4)
    seen = 0
    for _ in range(30):
        assert rule.choose(rows, 50, seen, 0) == _original_reservoir(reference, rows, 50, seen)
        seen += rows
    assert rule.generator.getstate() == reference.getstate()


def _kept(rule, stream: int, size: int, batches: list[int]) -> list[int]:
    """The stream positions a memory of ``size`` slots holds after ``stream`` samples in batches of ``batches``."""
    slots: list[int] = []
    seen = 0
    k = 0
    while seen < stream:
        rows = min(batches[k % len(batches)], stream - seen)
        k += 1
        for slot, row in rule.choose(rows, size, seen, 0).items():
            if slot == len(slots):
                slots.append(seen + row)
            else:
                slots[slot] = seen + row
        seen += rows
    return slots


@pytest.mark.parametrize("rule", [Reservoir, Balanced])
def test_every_sample_is_kept_with_the_same_chance(rule):
    """Over many seeds, each of the stream's 120 positions ends up in a memory of 20 slots in 1/6 of the runs:
    batches of 1, 7 and 40 rows, so that both the loop and the vectorised path choose."""
    runs, stream, size = 3000, 120, 20
    counts = np.zeros(stream)
    for seed in range(runs):
        kept = _kept(rule(random.Random(seed)), stream, size, [1, 7, 40, 3])
        assert len(kept) == len(set(kept)) == size
        counts[kept] += 1
    frequency = counts / runs
    # binomial standard deviation sqrt(p (1 - p) / runs) = 0.0068: five of them, and no trend along the stream
    assert np.abs(frequency - size / stream).max() < 0.034
    early, late = frequency[:stream // 2].mean(), frequency[stream // 2:].mean()
    assert abs(early - late) < 0.01


def test_replayed_samples_are_drawn_uniformly_from_the_memory():
    memory = ReplayMemory(50, seed=2, ratio=2)
    memory.add(torch.arange(50.0).unsqueeze(1), None)
    counts = torch.zeros(50)
    for _ in range(500):
        replayed = memory.extend(torch.zeros(20, 1), None)[0][20:, 0].long()  # 40 draws: the vectorised path
        counts += torch.bincount(replayed, minlength=50)
    expected = 500 * 40 / 50
    assert float((counts - expected).abs().max()) < 5 * expected ** 0.5


@pytest.mark.parametrize("retention", ["reservoir", "balanced"])
def test_a_restored_memory_draws_what_the_original_draws(retention):
    memory = ReplayMemory(30, seed=5, retention=retention)
    for start in range(0, 200, 25):
        memory.add(torch.arange(start, start + 25.0).unsqueeze(1), None, regime=start // 100)
    restored = ReplayMemory(30, seed=99, retention=retention)
    restored.load_state_dict(memory.state_dict())
    for size in (3, 40):
        batch = torch.full((size, 1), -1.0)
        assert torch.equal(restored.extend(batch, None)[0], memory.extend(batch, None)[0])
        restored.add(batch, None, regime=2)
        memory.add(batch, None, regime=2)
        assert torch.equal(restored.x, memory.x)
