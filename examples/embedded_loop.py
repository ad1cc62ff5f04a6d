"""streammas embedded in a plain Python loop: no service, no connector, no labels.

The stream: 32-feature samples from three regimes (each a few prototypes of its own plus noise) shown
A B C A B C, with nothing telling the learner where one ends. The learner scores every batch before it
learns it (the score is an anomaly score: the reconstruction error), finds the plateaus and the peaks of
its loss by itself, and consolidates. At the end each regime is scored again, by streammas and by the same
autoencoder trained with plain online SGD.

    python examples/embedded_loop.py          # a few seconds on one core
"""

from __future__ import annotations

import numpy as np
import torch

from streammas import OnlineMAS
from streammas.models import MLPAutoencoder

FEATURES, BATCH, STEPS_PER_SEGMENT = 32, 10, 600


def regimes(rng: np.random.Generator, n: int = 3) -> list[np.ndarray]:
    """Each regime: 4 binary prototypes over the features."""
    return [(rng.random((4, FEATURES)) < 0.3).astype(np.float32) for _ in range(n)]


def batch(prototypes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = prototypes[rng.integers(0, len(prototypes), BATCH)]
    return (x + 0.05 * rng.standard_normal(x.shape)).astype(np.float32)


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    protos = regimes(rng)
    torch.manual_seed(0)
    model = MLPAutoencoder(FEATURES, hidden=(64,), latent=8)
    plain_model = MLPAutoencoder(FEATURES, hidden=(64,), latent=8)
    plain_model.load_state_dict(model.state_dict())

    events = []
    learner = OnlineMAS(model, callback=lambda e: events.append(e) if e.kind == "consolidation" else None)
    plain = OnlineMAS(plain_model, reg_lambda=0.0)  # the same learner with no memory
    order = [0, 1, 2, 0, 1, 2]
    for segment, r in enumerate(order):
        for _ in range(STEPS_PER_SEGMENT):
            x = batch(protos[r], rng)
            scores = learner.learn_many(x)  # per-sample prequential loss, on the learner's device
            plain.learn_many(x)
        print(f"segment {segment + 1}: regime {'ABC'[r]}, last batch's mean score {scores.mean().item():.4f}, "
              f"consolidations so far {learner.consolidations}")
    learner.flush()
    per_segment = BATCH * STEPS_PER_SEGMENT
    for e in events:
        print(f"consolidated after {e.samples_seen:,} samples (segment {e.samples_seen // per_segment + 1})")

    print("\nmean reconstruction error per regime at the end (lower is better)")
    for r, p in enumerate(protos):
        held_out = np.concatenate([batch(p, rng) for _ in range(20)])
        ours = learner.score_many(held_out).mean().item()
        theirs = plain.score_many(held_out).mean().item()
        print(f"  regime {'ABC'[r]}: streammas {ours:.4f}   plain online SGD {theirs:.4f}")


if __name__ == "__main__":
    main()
