"""Plateau and peak detection: fires after learning, never on the flat loss before it, scale-free."""

import math
import random

import pytest

from streammas.learner.plateau import PlateauConfig, PlateauDetector


def _noisy(curve, seed=0, noise=0.4):
    rng = random.Random(seed)
    return [v * max(0.05, rng.gauss(1.0, noise)) for v in curve]


def _learning_curve(steps=600, start=2.0, floor=0.2, tau=60.0):
    return [floor + (start - floor) * math.exp(-t / tau) for t in range(steps)]


def _decisions(values, **settings):
    detector = PlateauDetector(**settings)
    return [(t, d) for t, v in enumerate(values) if (d := detector.update(v)) in ("plateau", "peak")]


def test_fires_on_decreasing_then_flat_loss():
    events = _decisions(_noisy(_learning_curve()))
    assert [d for _, d in events] == ["plateau"]
    # once the loss has come down (two time constants: 86% of the drop), not before
    assert events[0][0] > 120


def test_does_not_fire_on_the_flat_noisy_loss_after_initialisation():
    flat = _noisy([1.0] * 2000, seed=1, noise=0.6)
    assert _decisions(flat) == []


@pytest.mark.parametrize("seed", range(5))
def test_a_loss_that_cannot_halve_is_learned_too(seed):
    # a high noise floor: the loss falls by 15% only (2% noise per batch), then stays
    values = _noisy(_learning_curve(steps=800, start=1.0, floor=0.85), seed=seed, noise=0.02)
    events = _decisions(values)
    assert [d for _, d in events] == ["plateau"]
    assert events[0][0] > 180  # once most of the drop is behind it (three time constants)
    # the rule switched off: no plateau at all, as before it existed
    assert _decisions(values, floor_drop=0.99) == []


@pytest.mark.parametrize("noise", [0.02, 0.1, 0.3])
def test_the_flat_loss_after_initialisation_is_no_small_drop_either(noise):
    for seed in range(10):
        assert _decisions(_noisy([1.0] * 3000, seed=seed, noise=noise)) == []


def test_rearms_on_a_peak_and_fires_again():
    values = _noisy(_learning_curve() + _learning_curve(start=3.0, floor=0.3), seed=2)
    events = _decisions(values)
    assert [d for _, d in events] == ["plateau", "peak", "plateau"]
    assert 600 <= events[1][0] < 640  # the peak is found within a window of the regime change
    assert events[2][0] > events[1][0] + 100


def test_no_second_plateau_without_a_peak():
    values = _noisy(_learning_curve(steps=3000), seed=3)
    assert [d for _, d in _decisions(values)] == ["plateau"]


@pytest.mark.parametrize("seed", range(5))
def test_scale_free(seed):
    values = _noisy(_learning_curve() + _learning_curve(start=4.0) + [0.2] * 300, seed=seed)
    base = _decisions(values)
    assert base  # something happens in this stream
    assert _decisions([v * 1000 for v in values]) == base
    assert _decisions([v / 1000 for v in values]) == base


def test_absolute_rule_of_the_task_free_paper():
    values = _noisy(_learning_curve(), seed=4, noise=0.1) + [2.0] * 100
    events = _decisions(values, rule="absolute", mean_threshold=0.3, var_threshold=0.01)
    assert [d for _, d in events] == ["plateau", "peak"]
    # in absolute units it never fires once the loss scale changes: the trap the relative rule avoids
    assert _decisions([v * 1000 for v in values], rule="absolute", mean_threshold=0.3, var_threshold=0.01) == []


def test_state_round_trip_continues_identically():
    values = _noisy(_learning_curve() + _learning_curve(start=3.0), seed=5)
    a = PlateauDetector()
    first = [a.update(v) for v in values[:400]]
    b = PlateauDetector()
    b.load_state_dict(a.state_dict())
    assert [a.update(v) for v in values[400:]] == [b.update(v) for v in values[400:]]
    assert first.count("plateau") == 1


def test_invalid_settings_are_rejected():
    with pytest.raises(ValueError, match="window"):
        PlateauConfig(window=1)
    with pytest.raises(ValueError, match="rule"):
        PlateauDetector(rule="magic")


def test_huge_finite_losses_are_taken_without_an_overflow():
    """A diverging float64 model's loss can be finite and beyond 1e154, whose square overflows a Python float."""
    detector = PlateauDetector(rule="absolute", window=4, patience=1, mean_threshold=2.0, var_threshold=1.0)
    assert [detector.update(v) for v in (1e200, 1e-3, 5e199, 1.0, 1e300, 2.0)] == [None] * 6
    relative = PlateauDetector()
    assert all(relative.update(v) is None for v in [1e300, 1e-300] * 50)
