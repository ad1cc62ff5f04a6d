"""How many stored samples the river estimators replay per sample: the two river examples' measures, by ratio.

The river estimators' ``replay_ratio`` default was decided here (README, "river"): for each ratio (0: no replay
memory), the accuracy of ``StandardScaler() | MASClassifier()`` under river's progressive validation on Phishing
and ImageSegments, and the ROC AUC of ``MinMaxScaler() | MASAutoencoder(scale_inputs="running")`` on
``examples/river_anomaly.py``'s stream (whole stream, and the regime that returns after a long absence), means
over seeds (and the lowest and highest seed's). Everything else is each estimator's default.

    python examples/river_replay_ratio.py                  # ratios 0-3, seeds 0-4: about 2 minutes on one core
    python examples/river_replay_ratio.py --ratios 1 2 --seeds 0 --passes 1   # a short look
"""

from __future__ import annotations

import argparse

import torch
from river import compose, datasets, evaluate, metrics, preprocessing
from river_anomaly import roc_auc  # the anomaly example's test-then-train loop (this script's own folder)

from streammas.river import MASAutoencoder, MASClassifier
from streammas.tools.evaluation.streams import anomaly_digits

MEASURES = ("Phishing accuracy", "ImageSegments accuracy", "anomaly ROC AUC", "returning regime ROC AUC")


def memory(ratio: int) -> dict:
    """The estimator parameters of ``ratio`` (0: no replay memory at all)."""
    return {"replay": 0} if ratio == 0 else {"replay_ratio": ratio}


def classification(ratio: int, seed: int) -> list[float]:
    scores = []
    for dataset in (datasets.Phishing(), datasets.ImageSegments()):
        model = preprocessing.StandardScaler() | MASClassifier(seed=seed, **memory(ratio))
        scores.append(evaluate.progressive_val_score(dataset, model, metrics.Accuracy()).get())
    return scores


def anomaly(ratio: int, seed: int, passes: int) -> list[float]:
    model = compose.Pipeline(preprocessing.MinMaxScaler(),
                             MASAutoencoder(scale_inputs="running", seed=seed, **memory(ratio)))
    return list(roc_auc(model, anomaly_digits(passes, seed)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratios", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--passes", type=int, default=5, help="passes over each regime of the anomaly stream")
    args = parser.parse_args()
    torch.set_num_threads(1)  # micro-batches of a small network (the README's "Threads")
    print(f"means over seeds {args.seeds} (lowest-highest seed)")
    print(f"{'replay_ratio':<14}" + "".join(f"{m:>27}" for m in MEASURES))
    for ratio in args.ratios:
        runs = [classification(ratio, seed) + anomaly(ratio, seed, args.passes) for seed in args.seeds]
        cells = []
        for k in range(len(MEASURES)):
            values = [run[k] for run in runs]
            cells.append(f"{sum(values) / len(values):.4f} ({min(values):.3f}-{max(values):.3f})")
        label = "0 (no replay)" if ratio == 0 else str(ratio)
        print(f"{label:<14}" + "".join(f"{c:>27}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
