"""What ``streammas bench step`` measures and ``streammas bench memory`` re-runs alone: the learner variants.

A variant is a label, :class:`~streammas.OnlineMAS` settings, whether importance shares the training forward,
and whether the learner is consolidated before it is measured (its steady state: where the regulariser is on,
the proximal step runs from then on). ``"sgd"`` names the plain hand-written step of the learner's optimizer
they are all compared with. The benchmark checks from the learner's own counters that each variant did what its
label says (:func:`expected_work`).

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

__all__ = ["BREAKDOWN", "FUSED_ONLY", "LR", "NEVER", "OPTIMIZER", "REG", "VARIANTS", "expected_work", "make_learner",
           "variant_step"]

LR = learner_defaults()["lr"]  # the learner's; the baseline takes the same step size
OPTIMIZER = learner_defaults()["optimizer"]  # and the same optimizer

#: The regulariser's strength in the variants that run it: the setting measured to help without replay (the
#: default is 0, which leaves the proximal step out); the cost of a step does not depend on the value.
REG = 0.01
#: Beyond any run: the importance is measured on the first batch only (in the warm-up), never while timed.
NEVER = 1 << 30

#: name -> (label, OnlineMAS settings, share the training forward, consolidate before timing)
VARIANTS: dict[str, tuple[str, dict, bool, bool]] = {
    "every": ("learn_many, importance every batch, regulariser on (proximal step every 16)",
              {"importance_every": 1, "reg_lambda": REG}, True, True),
    "defaults": ("learn_many, defaults (importance every 16th batch, no regulariser)", {}, True, True),
}
#: Where the time goes, measured unless --quick.
BREAKDOWN: dict[str, tuple[str, dict, bool, bool]] = {
    "every_separate": ("  importance every batch, regulariser on, separate eval forward",
                       {"importance_every": 1, "reg_lambda": REG}, False, True),
    "reg": ("  defaults with the regulariser on (importance every 16th batch, proximal step every 16)",
            {"reg_lambda": REG}, True, True),
    "prox_each": ("  defaults with the regulariser on, proximal step on every update",
                  {"reg_lambda": REG, "prox_every": 1}, True, True),
    "defaults_fresh": ("  defaults, before the first consolidation", {}, True, False),
    "no_reg": ("  defaults without importance or regulariser (nothing measured, no proximal step)",
               {"importance_every": NEVER}, True, True),
    "buffer": ("  defaults with a hard buffer of 16", {"hard_buffer": 16}, True, True),
    "every_autograd": ("  importance every batch, regulariser on, autograd step",
                       {"importance_every": 1, "reg_lambda": REG, "fused_step": False}, True, True),
    "defaults_autograd": ("  defaults, autograd step", {"fused_step": False}, True, True),
}
#: Variants that only differ where the model takes the hand-derived step (streammas.learner.fused).
FUSED_ONLY = ("every_autograd", "defaults_autograd")


def expected_work(settings: dict, consolidated: bool) -> dict[str, bool]:
    """What a variant's timed steps must have done: measured the importance on every batch (``every``), on none
    (``none``), and paid the regulariser's proximal step (``proximal``: on, once consolidated, with lambda > 0).

    >>> expected_work(VARIANTS["every"][1], True)
    {'every': True, 'none': False, 'proximal': True}
    >>> expected_work(VARIANTS["defaults"][1], True)
    {'every': False, 'none': False, 'proximal': False}
    """
    defaults = learner_defaults()
    every = settings.get("importance_every", defaults["importance_every"])
    reg = settings.get("reg_lambda", defaults["reg_lambda"])
    return {"every": every == 1, "none": every >= NEVER, "proximal": bool(reg) and consolidated}


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
