"""What ``streammas bench step`` measures and ``streammas bench memory`` re-runs alone: the learner variants.

A variant is a label, :class:`~streammas.OnlineMAS` settings, whether importance shares the training forward,
and whether the learner is consolidated before it is measured (its steady state, where the proximal step runs
on every update). ``"sgd"`` names the plain hand-written SGD step they are all compared with.

>>> sorted(VARIANTS)
['defaults', 'every']
>>> step = variant_step("mlp", 4, "defaults", "cpu", seed=0)
>>> step()  # one learn_many on the next of 32 cycled batches
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from streammas.learner import OnlineMAS, learner_defaults
from streammas.tools.bench import timing

__all__ = ["BREAKDOWN", "FUSED_ONLY", "LR", "OPTIMIZER", "VARIANTS", "make_learner", "variant_step"]

LR = learner_defaults()["lr"]  # the learner's; the baseline takes the same step size
OPTIMIZER = learner_defaults()["optimizer"]  # and the same optimizer

#: name -> (label, OnlineMAS settings, share the training forward, consolidate before timing)
VARIANTS: dict[str, tuple[str, dict, bool, bool]] = {
    "every": ("learn_many, importance every batch", {"importance_every": 1}, True, True),
    "defaults": ("learn_many, defaults", {}, True, True),
}
#: Where the time goes, measured unless --quick.
BREAKDOWN: dict[str, tuple[str, dict, bool, bool]] = {
    "every_separate": ("  importance every batch, separate eval forward", {"importance_every": 1}, False, True),
    "prox_each": ("  defaults, proximal step on every update", {"prox_every": 1}, True, True),
    "defaults_fresh": ("  defaults, before the first consolidation", {}, True, False),
    "no_reg": ("  no regulariser (no importance, no proximal step)", {"reg_lambda": 0.0}, True, False),
    "buffer": ("  defaults with a hard buffer of 16", {"hard_buffer": 16}, True, True),
    "every_autograd": ("  importance every batch, autograd step", {"importance_every": 1, "fused_step": False},
                       True, True),
    "defaults_autograd": ("  defaults, autograd step", {"fused_step": False}, True, True),
}
#: Variants that only differ where the model takes the hand-derived step (streammas.learner.fused).
FUSED_ONLY = ("every_autograd", "defaults_autograd")


def make_learner(model: torch.nn.Module, settings: dict, share: bool) -> OnlineMAS:
    """An :class:`~streammas.OnlineMAS` with the benchmark's step size and a variant's settings; ``share``:
    importance reuses the training forward (else it runs a separate evaluation forward)."""
    learner = OnlineMAS(model, lr=LR, **settings)
    learner.meter.share_forward = share
    return learner


def variant_step(kind: str, batch: int, variant: str, device: str, seed: int,
                 before_model: Callable[[], None] | None = None) -> Callable[[], None]:
    """One step of ``variant`` (``"sgd"`` or a name in :data:`VARIANTS`) on a ``kind`` model, warmed up (and
    consolidated when the variant says so): each call learns the next of 32 cycled batches. ``before_model``
    runs after the data is made and before the model is built (where a memory measurement starts)."""
    batches = timing.stream_batches(kind, batch, 32, device, seed + 1)
    if before_model is not None:
        before_model()
    model = timing.make_model(kind, device, seed)
    if variant == "sgd":
        return timing.cycle(timing.plain_step(model, LR, OPTIMIZER), batches)
    _, settings, share, consolidate = VARIANTS[variant]
    learner = make_learner(model, settings, share)
    for x in batches:
        learner.learn_many(x)
    if consolidate:
        learner.consolidate()
    return timing.cycle(learner.learn_many, batches)
