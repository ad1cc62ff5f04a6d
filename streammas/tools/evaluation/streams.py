"""Benchmark streams for task-free continual learning, made only from data that ships with installed packages.

Every stream is a sequence of *segments*; each segment shows one *regime* (a pixel permutation of
scikit-learn's ``load_digits``, a group of digit classes, a group of clusters of river's bundled
``ImageSegments``) for a number of passes over that regime's training samples. Nothing tells the learner
where a segment ends. Each regime also has a held-out test set, used to measure what the learner still
knows about it at any time.

Six benchmarks, each in two lengths (``"long"``: every segment shows its regime for about 10 passes, so that
a regime is learned and then overwritten; ``"short"``: one pass):

* ``permuted-digits``: 5 fixed pixel permutations of the digits, one after another; classification.
* ``recurring-digits``: an autoencoder's stream (no labels) whose regimes are three groups of digit
  classes, each under its own pixel permutation, shown A B C A B C: regimes come, go and come back.
* ``anomaly-digits``: an anomaly detector's stream: the digits under three pixel permutations shown
  A B C, then A returns after a long absence (for one pass, whatever the length); 5% of the samples are
  planted anomalies (a quarter of their pixels scrambled), their flags kept for ROC AUC only.
* ``recurring-segments`` and ``anomaly-segments``: the same two designs on river's bundled
  ``ImageSegments`` (standardised; three groups of its classes as regimes): heavy-tailed features, noisy
  losses. The defaults were not tuned on them at first; they were held out, and then used to choose
  between candidates that the digits could not tell apart (README, results).
* ``recurring-prototypes``: generated (A B C A B C): each regime is 4 binary prototypes of its own over 32
  features plus noise, so that regimes share nothing and each overwrites the last.

These six (:data:`TUNING`) are the streams the learner's defaults were chosen on. Ten more, held out
(:data:`HELDOUT`, :mod:`~streammas.tools.evaluation.heldout`), differ from them in the ways that broke the
defaults: raw units, wide inputs, high noise floors, time-series windows, 2 to 8 regimes of 1 to 20 passes.
Nine stress streams (:data:`STRESS`, :mod:`~streammas.tools.evaluation.stress`: many regimes, rare ones,
regimes that never return, a recurring fault, gradual drift) are where one memory must beat another; they run
only when asked for (``--benchmarks stress``). All are registered into :data:`BENCHMARKS`;
:func:`stream_passes` gives each benchmark's passes.

>>> s = make_stream("permuted-digits", "short", seed=0)
>>> s.kind, s.x.shape[1], len(s.segments), s.n_regimes
('classification', 64, 5, 5)
>>> s.boundaries == [end for _, end, _ in s.segments[:-1]]
True
>>> a = make_stream("anomaly-digits", "long", seed=0)
>>> a.kind, [r for _, _, r in a.segments], a.returning
('anomaly', [0, 1, 2, 0], 3)
>>> bool(0.03 < a.y.mean() < 0.07)
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from streammas.tools.evaluation.data import (
    ANOMALY_RATE,
    DIGIT_GROUPS,
    SCRAMBLE,
    _assemble,
    _digits,
    _image_segments,
    _passes,
    _permutations,
    _permuted_classes,
    _scramble,
)

LENGTHS = {"long": 10, "short": 1}


@dataclass
class Stream:
    """A benchmark stream: samples in stream order, their regimes, and a test set per regime.

    :func:`make_stream` builds the benchmarks; any stream built by hand runs in
    :func:`~streammas.tools.evaluation.harness.run_method` as well.

    Parameters
    ----------
    name : str
        The benchmark's name (``"permuted-digits"`` ...).
    length : str
        ``"long"`` or ``"short"`` (see :data:`LENGTHS`).
    kind : str
        ``"classification"``, ``"reconstruction"`` or ``"anomaly"``: what is learned and measured.
    x : numpy.ndarray
        The samples in stream order, ``[n, ...]``.
    y : numpy.ndarray or None
        Class labels for a classification stream (given to the learner), anomaly flags for an anomaly
        stream (never given to the learner, used for ROC AUC), ``None`` otherwise.
    segments : list of (int, int, int)
        ``(start, end, regime)`` in sample indices, in stream order.
    tests : list of (numpy.ndarray, numpy.ndarray or None)
        ``tests[r]`` is ``(x, y)`` for regime ``r`` (``y``: labels, anomaly flags, or ``None``).
    regime_names : list of str
        A name per regime.
    n_classes : int, default 0
        The number of classes of a classification stream.
    returning : int or None, default None
        The index of the segment where a regime returns after a long absence (anomaly streams).
    meta : dict, default {}
        Anything else worth recording (how the stream was made; what the stress metrics need).
    evaluate_at : list of int or None, default None
        Sample counts at which to evaluate, instead of :meth:`eval_points`' points in every segment (a stream
        of a hundred segments is evaluated a few times in all).

    Examples
    --------
    Two regimes of four features, low then high, 20 samples each:

    >>> from streammas.tools.evaluation.harness import run_method
    >>> from streammas.tools.evaluation.methods import Method
    >>> rng = np.random.default_rng(0)
    >>> low, high = 0.1 * rng.random((20, 4), np.float32), 1 - 0.1 * rng.random((20, 4), np.float32)
    >>> stream = Stream("two-levels", "short", "reconstruction", np.concatenate([low, high]), None,
    ...                 segments=[(0, 20, 0), (20, 40, 1)], tests=[(low, None), (high, None)],
    ...                 regime_names=["low", "high"])
    >>> stream.n_regimes, stream.boundaries, stream.sample_shape, stream.eval_points(2)
    (2, [20], (4,), [10, 20, 30, 40])
    >>> run = run_method(stream, Method("plain", {"reg_lambda": 0.0}), eval_per_segment=2)
    >>> run["samples"], run["eval_samples"], len(run["final"])
    (40, [10, 20, 30, 40], 2)
    """

    name: str
    length: str
    kind: str  # "classification" | "reconstruction" | "anomaly"
    x: np.ndarray
    y: np.ndarray | None
    segments: list[tuple[int, int, int]]
    tests: list[tuple[np.ndarray, np.ndarray | None]]
    regime_names: list[str]
    n_classes: int = 0
    returning: int | None = None  # index of the segment where a regime returns after a long absence
    meta: dict = field(default_factory=dict)
    evaluate_at: list[int] | None = None

    @property
    def n_regimes(self) -> int:
        return len(self.tests)

    @property
    def boundaries(self) -> list[int]:
        """Sample indices where a new segment starts (the true regime boundaries, never shown to a learner)."""
        return [start for start, _, _ in self.segments[1:]]

    @property
    def regime(self) -> np.ndarray:
        """The regime of each sample."""
        out = np.empty(len(self.x), dtype=np.int64)
        for start, end, r in self.segments:
            out[start:end] = r
        return out

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def held_out(self) -> bool:
        """Whether the stream is one of the held-out ones (:data:`HELDOUT`), not one the defaults were tuned on."""
        return self.name in HELDOUT

    @property
    def group(self) -> str:
        """``"tuning"``, ``"held-out"`` or ``"stress"`` (:func:`group_of`)."""
        return group_of(self.name)

    @functools.cached_property
    def scale(self) -> np.ndarray:
        """Per-feature standard deviation of the stream's samples, 1 where a feature is constant: the unit of the
        standardised reconstruction error, the same for every method (float64, the sample's shape).

        A feature that is almost constant (a pixel inked in one sample of thousands) gets a tiny unit, and its
        errors weigh accordingly: the streams leave such features out."""
        std = self.x.reshape(len(self.x), -1).std(axis=0, dtype=np.float64)
        std[~(std > 0)] = 1.0
        return std.reshape(self.sample_shape)

    def eval_points(self, per_segment: int = 4) -> list[int]:
        """Sample counts at which a learner is evaluated: ``per_segment`` points in each segment, its end included
        (or :attr:`evaluate_at` where the stream sets it)."""
        if self.evaluate_at is not None:
            return sorted({int(p) for p in self.evaluate_at})
        points: list[int] = []
        for start, end, _ in self.segments:
            points += [int(round(start + (end - start) * (i + 1) / per_segment)) for i in range(per_segment)]
        return sorted(set(points))


# -- the benchmarks ------------------------------------------------------------------------------------------
def permuted_digits(passes: int, seed: int, n_regimes: int = 5) -> dict:
    rng = np.random.default_rng([seed, 1])
    xtr, ytr, xte, yte = _digits(rng)
    return _permuted_classes(xtr, ytr, xte, yte, rng, passes, n_regimes, n_classes=10)


def recurring_digits(passes: int, seed: int, order: Sequence[int] = (0, 1, 2, 0, 1, 2)) -> dict:
    rng = np.random.default_rng([seed, 2])
    xtr, ytr, xte, yte = _digits(rng)
    perms = _permutations(rng, len(DIGIT_GROUPS), xtr.shape[1])
    train = [xtr[np.isin(ytr, g)][:, p] for g, p in zip(DIGIT_GROUPS, perms)]
    tests = [(xte[np.isin(yte, g)][:, p], None) for g, p in zip(DIGIT_GROUPS, perms)]
    parts = [(train[r][_passes(len(train[r]), passes, rng)], None, r) for r in order]
    x, _, segments = _assemble(parts)
    names = [f"digits {''.join(map(str, g))}" + ("" if i == 0 else f", permutation {i}")
             for i, g in enumerate(DIGIT_GROUPS)]
    return dict(kind="reconstruction", x=x, y=None, segments=segments, tests=tests, regime_names=names)


SEGMENT_GROUPS = (("grass", "sky"), ("brickface", "cement", "path"), ("foliage", "window"))


def anomaly_segments(passes: int, seed: int, order: Sequence[int] = (0, 1, 2), returning: int = 0) -> dict:
    rng = np.random.default_rng([seed, 3])
    xtr, ytr, xte, yte, names = _image_segments(rng)
    groups = [[names.index(n) for n in g] for g in SEGMENT_GROUPS]
    train = [xtr[np.isin(ytr, g)] for g in groups]
    parts = []
    # The returning regime comes back for one pass, whatever the length: a detector must know it at once.
    for r, n_passes in [*((r, passes) for r in order), (returning, 1)]:
        x = train[r][_passes(len(train[r]), n_passes, rng)]
        flags = rng.random(len(x)) < ANOMALY_RATE
        x = x.copy()
        x[flags] = _scramble(x[flags], rng, SCRAMBLE)
        parts.append((x, flags.astype(np.int64), r))
    x, y, segments = _assemble(parts)
    tests = []
    for g in groups:
        normal = xte[np.isin(yte, g)]
        n_anomalies = max(1, int(round(len(normal) * 2 * ANOMALY_RATE)))
        anomalies = _scramble(normal[rng.choice(len(normal), n_anomalies, replace=False)], rng, SCRAMBLE)
        tests.append((np.concatenate([normal, anomalies]),
                      np.concatenate([np.zeros(len(normal)), np.ones(n_anomalies)]).astype(np.int64)))
    return dict(kind="anomaly", x=x, y=y, segments=segments, tests=tests, returning=len(segments) - 1,
                regime_names=["+".join(g) for g in SEGMENT_GROUPS])


def anomaly_digits(passes: int, seed: int, order: Sequence[int] = (0, 1, 2), returning: int = 0) -> dict:
    rng = np.random.default_rng([seed, 4])
    xtr, ytr, xte, yte = _digits(rng)
    perms = _permutations(rng, 3, xtr.shape[1])
    parts = []
    for r, n_passes in [*((r, passes) for r in order), (returning, 1)]:
        x = xtr[_passes(len(xtr), n_passes, rng)][:, perms[r]]
        flags = rng.random(len(x)) < ANOMALY_RATE
        x[flags] = _scramble(x[flags], rng, SCRAMBLE)
        parts.append((x, flags.astype(np.int64), r))
    x, y, segments = _assemble(parts)
    tests = []
    for perm in perms:
        normal = xte[:, perm]
        n_anomalies = max(1, int(round(len(normal) * 2 * ANOMALY_RATE)))
        anomalies = _scramble(normal[rng.choice(len(normal), n_anomalies, replace=False)], rng, SCRAMBLE)
        tests.append((np.concatenate([normal, anomalies]),
                      np.concatenate([np.zeros(len(normal)), np.ones(n_anomalies)]).astype(np.int64)))
    return dict(kind="anomaly", x=x, y=y, segments=segments, tests=tests, returning=len(segments) - 1,
                regime_names=["identity", "permutation 1", "permutation 2"])


def recurring_segments(passes: int, seed: int, order: Sequence[int] = (0, 1, 2, 0, 1, 2)) -> dict:
    rng = np.random.default_rng([seed, 5])
    xtr, ytr, xte, yte, names = _image_segments(rng)
    groups = [[names.index(n) for n in g] for g in SEGMENT_GROUPS]
    train = [xtr[np.isin(ytr, g)] for g in groups]
    tests = [(xte[np.isin(yte, g)], None) for g in groups]
    parts = [(train[r][_passes(len(train[r]), passes, rng)], None, r) for r in order]
    x, _, segments = _assemble(parts)
    return dict(kind="reconstruction", x=x, y=None, segments=segments, tests=tests,
                regime_names=["+".join(g) for g in SEGMENT_GROUPS])


def recurring_prototypes(passes: int, seed: int, order: Sequence[int] = (0, 1, 2, 0, 1, 2),
                         features: int = 32, per_regime: int = 600) -> dict:
    """Generated, not bundled: each regime is 4 binary prototypes of its own (30% of the features on) plus
    Gaussian noise (std 0.05); regimes share nothing, so whatever one teaches the next overwrites."""
    rng = np.random.default_rng([seed, 6])
    protos = [(rng.random((4, features)) < 0.3).astype(np.float32) for _ in range(3)]

    def draw(p: np.ndarray, n: int) -> np.ndarray:
        return (p[rng.integers(0, len(p), n)] + 0.05 * rng.standard_normal((n, features))).astype(np.float32)

    train = [draw(p, per_regime) for p in protos]
    tests = [(draw(p, per_regime // 3), None) for p in protos]
    parts = [(train[r][_passes(len(train[r]), passes, rng)], None, r) for r in order]
    x, _, segments = _assemble(parts)
    return dict(kind="reconstruction", x=x, y=None, segments=segments, tests=tests,
                regime_names=[f"prototypes {'ABC'[r]}" for r in range(3)])


#: Every benchmark ``make_stream`` knows (the held-out ones are added below); ``streammas evaluate`` runs them all
#: by default.
BENCHMARKS: dict[str, Callable[..., dict]] = {
    "permuted-digits": permuted_digits,
    "recurring-digits": recurring_digits,
    "anomaly-digits": anomaly_digits,
    "recurring-segments": recurring_segments,
    "anomaly-segments": anomaly_segments,
    "recurring-prototypes": recurring_prototypes,
}
#: The six streams the defaults were tuned on.
TUNING = tuple(BENCHMARKS)


def stream_passes(benchmark: str, length: str) -> int:
    """Passes per segment of a benchmark at a length: :data:`LENGTHS`, unless the benchmark sets its own (a
    stress stream: 1 at either length, its regimes shown once)."""
    if benchmark in STRESS:
        return 1
    if length == "long" and benchmark in LONG_PASSES:
        return LONG_PASSES[benchmark]
    return LENGTHS[length]


def make_stream(benchmark: str, length: str = "long", seed: int = 0, passes: int | None = None) -> Stream:
    """Build a benchmark stream; the same ``(benchmark, length, seed, passes)`` always gives the same stream.

    ``passes`` overrides the passes per segment of ``length`` (``--quick`` uses fewer).
    """
    if benchmark not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
    if length not in LENGTHS:
        raise ValueError(f"unknown length {length!r}; choose from {', '.join(LENGTHS)}")
    if benchmark in STRESS:
        passes = None  # one size: --quick's passes per long regime would only lengthen it
    n_passes = stream_passes(benchmark, length) if passes is None else int(passes)
    spec = BENCHMARKS[benchmark](n_passes, seed)
    meta = {"passes": n_passes, "seed": seed, **spec.pop("meta", {})}
    return Stream(name=benchmark, length=length, meta=meta, **spec)


def shuffled(stream: Stream, seed: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """The same samples in one random order (the i.i.d. upper bound); returns x, y and the order used."""
    order = np.random.default_rng([seed, 99]).permutation(len(stream.x))
    return stream.x[order], None if stream.y is None else stream.y[order], order


def group_of(benchmark: str) -> str:
    """The group a benchmark belongs to: ``"tuning"``, ``"held-out"`` or ``"stress"``.

    >>> group_of("permuted-digits"), group_of("wine-raw"), group_of("stress-drift")
    ('tuning', 'held-out', 'stress')
    """
    return "held-out" if benchmark in HELDOUT else "stress" if benchmark in STRESS else "tuning"


# The held-out and stress streams are built with the helpers above, so they are registered last.
from streammas.tools.evaluation.heldout import HELDOUT_BENCHMARKS, LONG_PASSES  # noqa: E402
from streammas.tools.evaluation.stress import STRESS_BENCHMARKS  # noqa: E402

BENCHMARKS.update(HELDOUT_BENCHMARKS)
#: The held-out streams (:mod:`~streammas.tools.evaluation.heldout`): unlike the six in the ways that broke the
#: defaults.
HELDOUT = tuple(HELDOUT_BENCHMARKS)
#: What ``streammas evaluate`` runs unless told otherwise: the tuning and held-out streams.
DEFAULT_BENCHMARKS = tuple(BENCHMARKS)
BENCHMARKS.update(STRESS_BENCHMARKS)
#: The stress streams (:mod:`~streammas.tools.evaluation.stress`), run only when asked for.
STRESS = tuple(STRESS_BENCHMARKS)
#: Names ``--benchmarks`` accepts for a group of streams.
GROUPS = {"tuning": TUNING, "held-out": HELDOUT, "stress": STRESS}
