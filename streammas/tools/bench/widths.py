"""``streammas bench step``'s second table: the defaults against their peer, a plain torch loop that learns the same
rows (:class:`~streammas.tools.bench.peer.PractitionerLoop`), on MLP autoencoders of several input widths, and
what input scaling and the replay memory cost inside a default step.

Per width: ``MLPAutoencoder(width)`` (the model's default sizes), batches of ``--width-batch`` rows in [0, 1],
all in one interleaved run:

- ``plain``: a hand-written step of torch's fused Adam on the batch alone (no scaling, no replay);
- ``defaults``: ``OnlineMAS.learn_many`` with the learner's defaults, consolidated once;
- ``peer``: the practitioner's loop, with the defaults' memory budget and replay ratio;
- ``scaling``: what the defaults' input scaling does in a step, on a copy of the learner's scaler: fold the batch
  into the statistics, standardise the batch and its replayed rows (one call);
- ``replay``: what the defaults' memory does in a step, on a copy of the learner's memory (its scaling apart):
  offer the batch to the reservoir, draw the replayed rows and append them to the batch.
"""

from __future__ import annotations

import argparse
import copy

import torch

from streammas.learner import OnlineMAS, learner_defaults
from streammas.tools.bench import timing
from streammas.tools.bench.peer import PractitionerLoop
from streammas.tools.bench.variants import LR

TARGETS = {"peer": 1.0, "share": 0.10}  # defaults at least as fast as the peer; scaling and replay each <= 10%
SHARE_WIDTH = 64  # where the shares have their target
LABELS = {"plain": "plain fused Adam step, the batch alone", "defaults": "learn_many, defaults",
          "peer": "practitioner's torch loop, the same rows", "scaling": "  input scaling inside a default step",
          "replay": "  replay memory inside a default step"}


def _batches(width: int, batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, width, generator=g) for _ in range(32)]


def _components(learner: OnlineMAS, batches: list[torch.Tensor]) -> dict:
    """Copies of the learner's scaler and memory, doing in each call what a default step makes them do."""
    scaler = copy.deepcopy(learner.scaler)
    memory = copy.deepcopy(learner.replay)
    draws = memory.draws(batches[0].shape[0])
    stacked = torch.cat([batches[0], memory.x[:draws].to(batches[0].dtype)])  # a step's rows, as the memory gives

    def scaling(x: torch.Tensor) -> None:
        scaler.fit(x)
        scaler.transform(stacked)

    def replay(x: torch.Tensor) -> None:
        memory.add(x, None, dtype=x.dtype)
        memory.extend(x, None)

    return {"scaling": timing.cycle(scaling, batches), "replay": timing.cycle(replay, batches)}


def bench_width(width: int, batch: int, args: argparse.Namespace, env: dict) -> dict:
    from streammas.models import MLPAutoencoder

    torch.manual_seed(args.seed)
    base = MLPAutoencoder(width)
    batches = _batches(width, batch, args.seed + 1)
    defaults = learner_defaults()
    learner = OnlineMAS(copy.deepcopy(base), lr=LR)
    peer = PractitionerLoop(copy.deepcopy(base), LR, memory_bytes=defaults["replay_max_bytes"],
                            ratio=defaults["replay_ratio"], max_samples=defaults["replay"], seed=args.seed)
    for x in batches:  # warm-up: both memories hold samples, the statistics exist
        learner.learn_many(x)
        peer.step(x)
    learner.consolidate()
    variants = {"plain": timing.cycle(timing.plain_step(copy.deepcopy(base), LR, "adam"), batches),
                "defaults": timing.cycle(learner.learn_many, batches), "peer": timing.cycle(peer.step, batches),
                **_components(learner, batches)}
    seconds = args.block if args.block is not None else (0.03 if args.quick else 0.25)
    blocks = {name: timing.calibrate(fn, seconds=seconds, sync=lambda: None, clock=env["clock"],
                                     multiple=learner.sync_every if name == "defaults" else 1)
              for name, fn in variants.items()}
    runs = timing.interleaved(variants, blocks, repeats=args.repeats, sync=lambda: None, clock=env["clock"])
    med = {name: timing.median(r) for name, r in runs.items()}
    learned = learner.update.last_rows[0].shape[0]
    if learned != peer.rows_last_step:
        raise RuntimeError(f"width {width}: the defaults learned {learned} rows a step, the peer {peer.rows_last_step}")
    speed = med["peer"] / med["defaults"]
    share = {name: med[name] / med["defaults"] for name in ("scaling", "replay")}
    return {"width": width, "batch": batch, "rows_per_step": learned, "seconds_per_step": med, "runs": runs,
            "steps_per_block": blocks, "defaults_vs_peer": speed, "share_of_default_step": share,
            "memory_samples": {"defaults": learner.replay.x.shape[0], "peer": peer.capacity},
            "targets": {"peer": {"min": TARGETS["peer"], "met": speed >= TARGETS["peer"]},
                        **{n: {"max": TARGETS["share"], "met": s <= TARGETS["share"]}
                           for n, s in share.items() if width == SHARE_WIDTH}}}


def report(cases: list[dict]) -> list[str]:
    if not cases:
        return []
    lines = ["", "the defaults against a practitioner's plain torch loop that learns the same rows (fused Adam, "
             "running float64 mean and variance, a vectorised reservoir of the same bytes, the same replay ratio), MLP "
             f"autoencoders, batch {cases[0]['batch']}; 'speed' is the peer's time over the row's (>= 1: faster than "
             "the peer), 'share' the row's time over a default step's"]
    rows = []
    for c in cases:
        sec = c["seconds_per_step"]
        for name in ("plain", "defaults", "peer", "scaling", "replay"):
            extra, target = "", ""
            if name == "defaults":
                extra = f"speed {c['defaults_vs_peer']:.2f}x"
                target = timing.verdict(c["defaults_vs_peer"], TARGETS["peer"], at_least=True)
            elif name in c["share_of_default_step"]:
                extra = f"share {c['share_of_default_step'][name]:.1%}"
                if name in c["targets"]:
                    target = timing.verdict(c["share_of_default_step"][name], TARGETS["share"], at_least=False)
            rows.append([c["width"], LABELS[name], f"{sec[name] * 1e6:.0f}", extra, target])
    lines += timing.table(["width", "variant", "us/step", "vs defaults", "target"], rows,
                          [True, False, True, False, False])
    lines.append("rows learned per step (batch + replayed), defaults and peer alike: "
                 + ", ".join(f"{c['rows_per_step']} at width {c['width']}" for c in cases))
    return lines
