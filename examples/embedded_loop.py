"""streammas embedded in a plain Python loop: no service, no connector, no labels.

The stream: scikit-learn's digits in three regimes (digits 0-3; 4-6 under a pixel permutation; 7-9 under
another) shown A B C A B C, 10 passes each, with nothing telling the learner where one ends. The learner
scores every batch before it learns it (the score, the reconstruction error, is an anomaly score), finds
the plateaus and peaks of its loss by itself, and consolidates. At the end each regime's held-out samples
are scored by streammas and by its twin: the same autoencoder and learner (Adam, the same settings) with no
memory (no replay, no regulariser).

    python examples/embedded_loop.py          # about 10 seconds on one core (needs scikit-learn)
"""

from __future__ import annotations

import argparse

import torch

from streammas import OnlineMAS
from streammas.models import build_model
from streammas.tools.evaluation.streams import make_stream

BATCH = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=10, help="passes over a regime per segment (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stream and the models (default 0)")
    args = parser.parse_args()
    # Micro-batches of a small network: one thread beats torch's one per core (the README's "Threads").
    torch.set_num_threads(1)
    stream = make_stream("recurring-digits", seed=args.seed, passes=args.passes)

    torch.manual_seed(args.seed)
    model = build_model("mlp-autoencoder", stream.sample_shape)  # 64 -> 128 -> 16 -> 128 -> 64
    twin = build_model("mlp-autoencoder", stream.sample_shape)
    twin.load_state_dict(model.state_dict())

    consolidated: list[int] = []
    learner = OnlineMAS(model, callback=lambda e: consolidated.append(e.samples_seen)
                        if e.kind == "consolidation" else None)
    plain = OnlineMAS(twin, reg_lambda=0.0, replay=0)  # the same learner with no memory

    for index, (start, end, regime) in enumerate(stream.segments):
        for b in range(start, end, BATCH):
            x = stream.x[b:b + BATCH]
            scores = learner.learn_many(x)  # per-sample prequential loss, on the learner's device
            plain.learn_many(x)
        print(f"segment {index + 1} (regime {'ABC'[regime]}): last batch's mean score {scores.mean().item():.4f}, "
              f"consolidations so far {learner.consolidations}")
    learner.flush()
    for samples in consolidated:
        segment = next(i for i, (s, e, _) in enumerate(stream.segments) if s <= samples < e)
        print(f"consolidated after {samples:,} samples, {samples - stream.segments[segment][0]:,} into segment "
              f"{segment + 1} (the boundary was never given)")

    print("\nreconstruction error on each regime's held-out samples at the end (lower is better)")
    for name, (x, _) in zip(stream.regime_names, stream.tests):
        ours = learner.score_many(x).mean().item()
        theirs = plain.score_many(x).mean().item()
        print(f"  {name:<30} streammas {ours:.4f}   no memory (Adam) {theirs:.4f}")


if __name__ == "__main__":
    main()
