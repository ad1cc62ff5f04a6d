"""Data that ships with installed packages, and the helpers that cut it into regimes and passes.

Shared by the tuning streams (:mod:`~streammas.tools.evaluation.streams`) and the held-out ones
(:mod:`~streammas.tools.evaluation.heldout`).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> x, y, segments = _assemble([(np.zeros((3, 2)), None, 0), (np.ones((2, 2)), None, 1)])
>>> x.shape, segments
((5, 2), [(0, 3, 0), (3, 5, 1)])
>>> sorted(_passes(3, 2, rng).tolist())
[0, 0, 1, 1, 2, 2]
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

ANOMALY_RATE = 0.05
SCRAMBLE = 0.25
DIGIT_GROUPS = ((0, 1, 2, 3), (4, 5, 6), (7, 8, 9))


# -- data from installed packages ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype(np.float32), data.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _segments_raw() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from river import datasets

    rows, labels = [], []
    for x, y in datasets.ImageSegments():
        rows.append([float(v) for v in x.values()])
        labels.append(y)
    names = tuple(sorted(set(labels)))
    return np.asarray(rows, dtype=np.float64), np.array([names.index(v) for v in labels]), names


def _split(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, test_share: float = 0.25):
    """A stratified train/test split."""
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(len(idx) * test_share))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx, test_idx = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    return x[train_idx], y[train_idx], x[test_idx], y[test_idx]


def _digits(rng: np.random.Generator):
    x, y = _digits_raw()
    return _split(x, y, rng)


def _image_segments(rng: np.random.Generator):
    x, y, names = _segments_raw()
    xtr, ytr, xte, yte = _split(x, y, rng)
    # Standardised with the training part's statistics; constant features stay 0.
    mean, std = xtr.mean(0), xtr.std(0)
    std[std == 0] = 1.0
    return ((xtr - mean) / std).astype(np.float32), ytr, ((xte - mean) / std).astype(np.float32), yte, names


def _permutations(rng: np.random.Generator, n: int, n_features: int) -> list[np.ndarray]:
    """``n`` pixel permutations, the first of them the identity."""
    return [np.arange(n_features)] + [rng.permutation(n_features) for _ in range(n - 1)]


def _passes(n: int, passes: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``passes`` passes over ``n`` samples, each pass in a fresh random order."""
    return np.concatenate([rng.permutation(n) for _ in range(passes)])


def _scramble(x: np.ndarray, rng: np.random.Generator, fraction: float = 1.0) -> np.ndarray:
    """Planted anomalies: in each sample, a random ``fraction`` of the features trade places at random (the
    same values, part of the structure gone). A well-fitted model sees them; a model that forgot the regime
    finds every sample of it equally strange."""
    n, f = x.shape
    k = max(2, int(round(fraction * f)))
    out = x.copy()
    for i in range(n):
        cols = rng.choice(f, k, replace=False)
        out[i, cols] = x[i, rng.permutation(cols)]
    return out


def _assemble(parts: Sequence[tuple[np.ndarray, np.ndarray | None, int]]):
    xs, ys, segments, start = [], [], [], 0
    for x, y, regime in parts:
        xs.append(x)
        ys.append(y)
        segments.append((start, start + len(x), regime))
        start += len(x)
    y = None if ys[0] is None else np.concatenate(ys)
    return np.concatenate(xs).astype(np.float32), y, segments


def _permuted_classes(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray, rng: np.random.Generator,
                      passes: int, n_regimes: int, n_classes: int) -> dict:
    """A classification stream of ``n_regimes`` fixed feature permutations (the first the identity), each shown
    for ``passes`` passes, with the test set under each permutation."""
    perms = _permutations(rng, n_regimes, xtr.shape[1])
    parts = []
    for r, perm in enumerate(perms):
        idx = _passes(len(xtr), passes, rng)
        parts.append((xtr[idx][:, perm], ytr[idx], r))
    x, y, segments = _assemble(parts)
    return dict(kind="classification", x=x, y=y, segments=segments, n_classes=n_classes,
                tests=[(xte[:, perm].astype(np.float32), yte) for perm in perms],
                regime_names=["identity"] + [f"permutation {r}" for r in range(1, n_regimes)])
