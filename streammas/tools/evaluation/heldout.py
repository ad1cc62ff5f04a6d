"""Held-out streams: made to differ from the six tuning streams in the ways that broke the learner's defaults.

The six streams of :mod:`~streammas.tools.evaluation.streams` hold values in [0, 1] or standardised ones, at most
64 features, and losses that fall far. These ten do not: raw units (values in the hundreds and thousands),
wide inputs (512 and 1,024 features), high noise floors (the loss cannot fall by half), time-series
windows; regimes of 1 to 20 passes, 2 to 8 regimes, recurring and not. Every one is made from data that
ships with scikit-learn or river, or generated; each regime has a held-out test set. ``"short"`` is one pass
per segment; ``"long"`` is :data:`LONG_PASSES` (10 unless listed there; 5 or 20). Anomaly streams plant 5% of
anomalies, show their regimes in order and bring the first back for one pass, as ``anomaly-digits`` does.

Samples per stream (long / short):

* ``shuttle-raw`` (reconstruction, 9 features, raw units, heavy tails, values up to 1,685; 60,000 / 12,000):
  river's ``Shuttle``, its normal samples (but the 0.1% beyond 10 standard deviations) split by k-means (on
  standardised features, 3 clusters) into regimes A B C A B C; 2,000 training and 500 test samples per
  regime; long: 5 passes.
* ``wine-raw`` (reconstruction, 13 features, raw units up to 1,680; 5,320 / 266): scikit-learn's wine, the
  three cultivars as regimes, A B C A B C; 36 to 53 training samples per regime; long: 20 passes.
* ``cancer-permuted`` (classification, 30 features, raw units up to 4,254; 17,080 / 1,708): scikit-learn's
  breast cancer (benign or malignant) under 4 fixed feature permutations, one after another; 426 training
  samples; long: 10 passes.
* ``cancer-anomaly`` (anomaly, 30 features, raw units; 8,808 / 695): breast cancer, benign then malignant
  samples as regimes (A B, then A returns); an anomaly takes a quarter of its features from other samples of
  its regime (each value plausible, their relations broken); long: 20 passes.
* ``wide-digits`` (reconstruction, 1,024 features; 26,940 / 2,694): the digits (their 6 inner columns)
  upsampled to 32 x 32 (nearest), three groups of classes, each under its own pixel permutation, A B C A B C;
  long: 10 passes.
* ``wide-permuted-digits`` (classification, 1,024 features; 43,104 / 10,776): the same 32 x 32 digits under
  8 pixel permutations, one after another; long: 4 passes.
* ``noisy-digits`` (reconstruction, 512 features; 26,940 / 2,694): the digits with Gaussian noise (std 0.3,
  drawn afresh each time a sample is shown) and 448 features of such noise alone appended, three groups of
  classes under their own permutations, A B C A B C; long: 10 passes.
* ``noisy-prototypes`` (reconstruction, 32 features; 48,000 / 2,400): ``recurring-prototypes`` with noise of
  std 1 (drawn afresh each time) instead of 0.05, four regimes of 300 samples, A B C D A B C D; long: 20
  passes.
* ``waterflow-anomaly`` (anomaly, windows of 24 steps, raw units ~100; 15,620 / 990): river's ``WaterFlow``
  series cut into three stretches of time (regimes A B C, then A returns); windows that touch one of its
  three sensor drops are left out; an anomaly has a quarter of its time steps shuffled; the test set of a
  stretch is its last quarter; long: 20 passes.
* ``sp500-windows`` (reconstruction, windows of 32 daily returns in %; 18,220 / 3,644): river's
  ``SP500Stocks``, one stock per regime (AMZN, JNJ, JPM, XOM), not recurring; the last quarter of the days
  is the test set; returns are close to white noise, so no model reconstructs much of them (a high noise
  floor); long: 5 passes.

>>> s = make_heldout("wide-digits", passes=1, seed=0)
>>> s["kind"], s["x"].shape[1], [r for _, _, r in s["segments"]]
('reconstruction', 1024, [0, 1, 2, 0, 1, 2])
>>> a = make_heldout("waterflow-anomaly", passes=1, seed=0)
>>> a["x"].shape[1], a["returning"], bool(a["x"].max() > 100)
(24, 3, True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

from streammas.tools.evaluation.data import (
    ANOMALY_RATE,
    DIGIT_GROUPS,
    SCRAMBLE,
    _assemble,
    _digits_raw,
    _passes,
    _permutations,
    _permuted_classes,
    _scramble,
    _split,
)

#: Passes per segment of the ``"long"`` length where it is not 10.
LONG_PASSES = {"shuttle-raw": 5, "wine-raw": 20, "cancer-anomaly": 20, "wide-permuted-digits": 4,
               "noisy-prototypes": 20, "waterflow-anomaly": 20, "sp500-windows": 5}
#: At least this many planted anomalies in a regime's test set (the small regimes would have a handful).
MIN_TEST_ANOMALIES = 20
ABCABC = (0, 1, 2, 0, 1, 2)


# -- data from installed packages ----------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def _river(name: str) -> tuple[np.ndarray, np.ndarray]:
    from river import datasets

    rows, targets = [], []
    for x, y in getattr(datasets, name)():
        rows.append([float(v) for v in x.values() if not hasattr(v, "tzinfo")])
        targets.append(y)
    return np.asarray(rows, dtype=np.float64), np.asarray(targets)


@functools.lru_cache(maxsize=1)
def _shuttle_regimes() -> tuple[np.ndarray, np.ndarray]:
    """Shuttle's normal samples (raw) and their k-means cluster, clusters numbered by size (largest first).

    The 0.1% of them that lie more than 10 standard deviations out on some feature (values up to 26,739) are
    left out: one of them in a test set would outweigh the other 499 in the reconstruction error."""
    from sklearn.cluster import KMeans

    x, y = _river("Shuttle")
    normal = x[y == 0]
    normal = normal[(np.abs(normal - normal.mean(0)) <= 10 * normal.std(0)).all(1)]
    z = (normal - normal.mean(0)) / normal.std(0)
    labels = KMeans(3, random_state=0, n_init=4).fit(z).labels_
    rank = np.argsort(np.argsort(-np.bincount(labels)))
    return normal, rank[labels]


def _sklearn(name: str) -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets

    data = getattr(datasets, f"load_{name}")()
    return data.data.astype(np.float64), data.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def _wide_digits() -> tuple[np.ndarray, np.ndarray]:
    """The digits without their two outer columns, upsampled from 8 x 6 to 32 x 32 (nearest), flattened.

    The outer columns are almost never inked (standard deviations down to 0.001): in the standardised
    reconstruction error such a pixel, copied 16 times, would outweigh all the others."""
    x, y = _digits_raw()
    crop = x.reshape(-1, 8, 8)[:, :, 1:7]
    up = crop[:, np.arange(32) // 4][:, :, np.arange(32) * 6 // 32]
    return np.ascontiguousarray(up.reshape(len(x), 1024), dtype=np.float32), y


def _mix(x: np.ndarray, pool: np.ndarray, rng: np.random.Generator, fraction: float = SCRAMBLE) -> np.ndarray:
    """Planted anomalies for features in their own units: a ``fraction`` of each sample's features take the
    value of the same feature in a random sample of ``pool`` (each value plausible, the relations broken)."""
    n, f = x.shape
    k = max(2, int(round(fraction * f)))
    out = x.copy()
    for i in range(n):
        cols = rng.choice(f, k, replace=False)
        out[i, cols] = pool[rng.integers(0, len(pool), k), cols]
    return out


# -- shapes of streams -----------------------------------------------------------------------------------------
def _reconstruction(train, tests, order, passes, rng, names, noise: Callable | None = None) -> dict:
    parts = []
    for r in order:
        x = train[r][_passes(len(train[r]), passes, rng)]
        parts.append((x if noise is None else noise(x), None, r))
    x, _, segments = _assemble(parts)
    return dict(kind="reconstruction", x=x, y=None, segments=segments, regime_names=list(names),
                tests=[(t.astype(np.float32), None) for t in tests])


def _anomaly(train, tests, order, passes, rng, names, plant: Callable, returning: int = 0) -> dict:
    """Regimes in ``order`` for ``passes`` each, then ``returning`` for one pass; 5% of planted anomalies."""
    parts = []
    for r, n_passes in [*((r, passes) for r in order), (returning, 1)]:
        x = train[r][_passes(len(train[r]), n_passes, rng)].copy()
        flags = rng.random(len(x)) < ANOMALY_RATE
        x[flags] = plant(x[flags], r)
        parts.append((x, flags.astype(np.int64), r))
    x, y, segments = _assemble(parts)
    out_tests = []
    for r, normal in enumerate(tests):
        n = max(MIN_TEST_ANOMALIES, int(round(len(normal) * 2 * ANOMALY_RATE)))
        anomalies = plant(normal[rng.choice(len(normal), n, replace=n > len(normal))], r)
        out_tests.append((np.concatenate([normal, anomalies]).astype(np.float32),
                          np.concatenate([np.zeros(len(normal)), np.ones(n)]).astype(np.int64)))
    return dict(kind="anomaly", x=x, y=y, segments=segments, tests=out_tests, returning=len(segments) - 1,
                regime_names=list(names))


def _windows(series: np.ndarray, width: int) -> np.ndarray:
    return np.lib.stride_tricks.sliding_window_view(series, width).copy()


# -- the streams ------------------------------------------------------------------------------------------------
def shuttle_raw(passes: int, seed: int, order: Sequence[int] = ABCABC, per_regime: int = 2000,
                per_test: int = 500) -> dict:
    rng = np.random.default_rng([seed, 11])
    x, cluster = _shuttle_regimes()
    train, tests = [], []
    for r in range(3):
        idx = rng.permutation(np.flatnonzero(cluster == r))[: per_regime + per_test]
        train.append(x[idx[:per_regime]].astype(np.float32))
        tests.append(x[idx[per_regime:]])
    return _reconstruction(train, tests, order, passes, rng, [f"cluster {r}" for r in range(3)])


def wine_raw(passes: int, seed: int, order: Sequence[int] = ABCABC) -> dict:
    rng = np.random.default_rng([seed, 12])
    xtr, ytr, xte, yte = _split(*_sklearn("wine"), rng)
    train = [xtr[ytr == c].astype(np.float32) for c in range(3)]
    return _reconstruction(train, [xte[yte == c] for c in range(3)], order, passes, rng,
                           [f"cultivar {c}" for c in range(3)])


def cancer_permuted(passes: int, seed: int, n_regimes: int = 4) -> dict:
    rng = np.random.default_rng([seed, 13])
    xtr, ytr, xte, yte = _split(*_sklearn("breast_cancer"), rng)
    return _permuted_classes(xtr, ytr, xte, yte, rng, passes, n_regimes, n_classes=2)


def cancer_anomaly(passes: int, seed: int, order: Sequence[int] = (0, 1)) -> dict:
    rng = np.random.default_rng([seed, 14])
    xtr, ytr, xte, yte = _split(*_sklearn("breast_cancer"), rng)
    # scikit-learn's target: 0 malignant, 1 benign; regime A is benign
    train = [xtr[ytr == c].astype(np.float32) for c in (1, 0)]
    tests = [xte[yte == c] for c in (1, 0)]
    return _anomaly(train, tests, order, passes, rng, ["benign", "malignant"],
                    plant=lambda x, r: _mix(x, train[r], rng))


def wide_digits(passes: int, seed: int, order: Sequence[int] = ABCABC) -> dict:
    rng = np.random.default_rng([seed, 15])
    xtr, ytr, xte, yte = _split(*_wide_digits(), rng)
    perms = _permutations(rng, len(DIGIT_GROUPS), xtr.shape[1])
    train = [xtr[np.isin(ytr, g)][:, p] for g, p in zip(DIGIT_GROUPS, perms)]
    tests = [xte[np.isin(yte, g)][:, p] for g, p in zip(DIGIT_GROUPS, perms)]
    return _reconstruction(train, tests, order, passes, rng,
                           [f"digits {''.join(map(str, g))} (32 x 32)" for g in DIGIT_GROUPS])


def wide_permuted_digits(passes: int, seed: int, n_regimes: int = 8) -> dict:
    rng = np.random.default_rng([seed, 16])
    xtr, ytr, xte, yte = _split(*_wide_digits(), rng)
    return _permuted_classes(xtr, ytr, xte, yte, rng, passes, n_regimes, n_classes=10)


NOISE_FEATURES = 448
PIXEL_NOISE = 0.3


def noisy_digits(passes: int, seed: int, order: Sequence[int] = ABCABC) -> dict:
    rng = np.random.default_rng([seed, 17])
    xtr, ytr, xte, yte = _split(*_digits_raw(), rng)
    perms = _permutations(rng, len(DIGIT_GROUPS), xtr.shape[1])

    def noisy(x: np.ndarray) -> np.ndarray:
        extra = rng.standard_normal((len(x), NOISE_FEATURES))
        return np.concatenate([x + PIXEL_NOISE * rng.standard_normal(x.shape), PIXEL_NOISE * extra], 1)

    train = [xtr[np.isin(ytr, g)][:, p] for g, p in zip(DIGIT_GROUPS, perms)]
    tests = [noisy(xte[np.isin(yte, g)][:, p]) for g, p in zip(DIGIT_GROUPS, perms)]
    return _reconstruction(train, tests, order, passes, rng,
                           [f"digits {''.join(map(str, g))} + noise" for g in DIGIT_GROUPS], noise=noisy)


def noisy_prototypes(passes: int, seed: int, order: Sequence[int] = (0, 1, 2, 3, 0, 1, 2, 3),
                     features: int = 32, per_regime: int = 300, noise: float = 1.0) -> dict:
    rng = np.random.default_rng([seed, 18])
    protos = [(rng.random((4, features)) < 0.3).astype(np.float32) for _ in range(4)]

    def draw(p: np.ndarray, n: int) -> np.ndarray:
        return p[rng.integers(0, len(p), n)]

    def noisy(x: np.ndarray) -> np.ndarray:
        return x + noise * rng.standard_normal(x.shape)

    train = [draw(p, per_regime) for p in protos]
    tests = [noisy(draw(p, per_regime // 2)) for p in protos]
    return _reconstruction(train, tests, order, passes, rng, [f"prototypes {'ABCD'[r]}" for r in range(4)],
                           noise=noisy)


WATER_WINDOW = 24
WATER_DROP = 90.0  # the sensor drops read ~24; a window that touches one is left out


def waterflow_anomaly(passes: int, seed: int, order: Sequence[int] = (0, 1, 2)) -> dict:
    rng = np.random.default_rng([seed, 19])
    _, flow = _river("WaterFlow")
    flow = flow.astype(np.float64)
    train, tests = [], []
    for stretch in np.array_split(np.arange(len(flow)), 3):
        cut = stretch[0] + int(0.75 * len(stretch))
        parts = []
        for lo, hi in ((stretch[0], cut), (cut, stretch[-1] + 1)):
            w = _windows(flow[lo:hi], WATER_WINDOW)
            parts.append(w[(w >= WATER_DROP).all(1)])
        train.append(parts[0].astype(np.float32))
        tests.append(parts[1])
    return _anomaly(train, tests, order, passes, rng, ["stretch 1", "stretch 2", "stretch 3"],
                    plant=lambda x, r: _scramble(x, rng, SCRAMBLE))


SP500_WINDOW = 32
SP500_STOCKS = ("AMZN", "JNJ", "JPM", "XOM")
SP500_ORDER = ("AAPL", "AMZN", "IBM", "INTC", "JNJ", "JPM", "KO", "MSFT", "WMT", "XOM")  # river's columns


def sp500_windows(passes: int, seed: int) -> dict:
    rng = np.random.default_rng([seed, 20])
    returns, _ = _river("SP500Stocks")
    cut = int(0.75 * len(returns))
    train, tests = [], []
    for stock in SP500_STOCKS:
        series = returns[:, SP500_ORDER.index(stock)]
        train.append(_windows(series[:cut], SP500_WINDOW).astype(np.float32))
        tests.append(_windows(series[cut:], SP500_WINDOW))
    return _reconstruction(train, tests, range(len(SP500_STOCKS)), passes, rng, list(SP500_STOCKS))


#: The held-out benchmarks, registered into :data:`streammas.tools.evaluation.streams.BENCHMARKS`.
HELDOUT_BENCHMARKS: dict[str, Callable[..., dict]] = {
    "shuttle-raw": shuttle_raw,
    "wine-raw": wine_raw,
    "cancer-permuted": cancer_permuted,
    "cancer-anomaly": cancer_anomaly,
    "wide-digits": wide_digits,
    "wide-permuted-digits": wide_permuted_digits,
    "noisy-digits": noisy_digits,
    "noisy-prototypes": noisy_prototypes,
    "waterflow-anomaly": waterflow_anomaly,
    "sp500-windows": sp500_windows,
}


def make_heldout(name: str, passes: int = 1, seed: int = 0) -> dict:
    """The fields of a held-out :class:`~streammas.tools.evaluation.streams.Stream` (``make_stream`` wraps them)."""
    spec = HELDOUT_BENCHMARKS[name](passes, seed)
    spec["x"] = spec["x"].astype(np.float32)
    return spec
