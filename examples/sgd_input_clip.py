"""Plain SGD and the input scaler's clip: the README's "The input clip" finding, reproduced.

784-pixel digits (scikit-learn's 8 x 8 digits upscaled 3 x 3, with a 2-pixel black border, so that many pixels
are black for a whole regime), a 784-100-10 classifier learned by ``OnlineMAS(optimizer="sgd", lr=0.05)`` under
5 pixel permutations of 10 passes each, batch 10. A pixel black so far has a running deviation near 0: when a
permutation moves ink onto it, its standardised value lands on the clip. Printed: the mean accuracy over the
permutations at the end, per setting, over the seeds::

    python examples/sgd_input_clip.py                  # 3 seeds, about 3 minutes on 2 cores
    python examples/sgd_input_clip.py --seeds 1 --passes 2 --permutations 2   # a quick look
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import nn

from streammas import OnlineMAS

SETTINGS = {
    "input_clip=30 (the default)": {},
    "input_clip=100 (before)": {"input_clip": 100.0},
    "scale_inputs='none'": {"scale_inputs": "none"},
}


def bordered_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits as 28 x 28 images in [0, 1], flattened: upscaled 3 x 3 and framed by 2 black pixels."""
    digits = load_digits()
    x = np.kron(digits.data.reshape(-1, 8, 8) / 16.0, np.ones((1, 3, 3)))
    x = np.pad(x, ((0, 0), (2, 2), (2, 2))).reshape(len(x), 784).astype(np.float32)
    return x, digits.target


def accuracy(settings: dict, seed: int, permutations: int, passes: int, batch: int = 10) -> float:
    """Mean held-out accuracy over the permutations after learning them one after the other."""
    x, y = bordered_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    test, train = order[:360], order[360:]
    perms = [np.arange(784)] + [rng.permutation(784) for _ in range(permutations - 1)]
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))
    learner = OnlineMAS(model, objective="classification", optimizer="sgd", lr=0.05, **settings)
    for perm in perms:
        for _ in range(passes):
            shuffled = rng.permutation(train)
            for k in range(0, len(shuffled), batch):
                rows = shuffled[k:k + batch]
                learner.learn_many(x[rows][:, perm], y[rows])
    hits = [(learner.predict_many(x[test][:, perm]).argmax(1).numpy() == y[test]).mean() for perm in perms]
    return float(np.mean(hits))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--permutations", type=int, default=5, help="regimes, each a pixel permutation")
    parser.add_argument("--passes", type=int, default=10, help="passes over the training digits per regime")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, settings in SETTINGS.items():
        values = [accuracy(settings, seed, args.permutations, args.passes) for seed in range(args.seeds)]
        print(f"{name:30s} {100 * np.mean(values):5.1f}%  seeds: {', '.join(f'{100 * v:.1f}' for v in values)}")


if __name__ == "__main__":
    main()
