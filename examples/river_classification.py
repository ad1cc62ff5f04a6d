"""streammas as a river classifier, evaluated with river's progressive validation.

    python examples/river_classification.py
"""

from __future__ import annotations

import torch
from river import datasets, evaluate, linear_model, metrics, preprocessing

from streammas.river import MASClassifier


def main() -> None:
    # Micro-batches of a small network: one thread beats torch's one per core (the README's "Threads").
    torch.set_num_threads(1)
    models = {
        "streammas MASClassifier": preprocessing.StandardScaler() | MASClassifier(seed=0),
        "river LogisticRegression": preprocessing.StandardScaler() | linear_model.LogisticRegression(),
    }
    for name, model in models.items():
        for dataset in (datasets.Phishing(), datasets.ImageSegments()):
            if name.startswith("river") and isinstance(dataset, datasets.ImageSegments):
                continue  # binary only
            metric = evaluate.progressive_val_score(dataset, model.clone(), metrics.Accuracy())
            print(f"{name:<26} {type(dataset).__name__:<14} {metric}")


if __name__ == "__main__":
    main()
