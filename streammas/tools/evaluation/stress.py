"""Stress streams: where a better memory must beat a worse one (``streammas evaluate --benchmarks stress``).

On the sixteen tuning and held-out streams a 500-sample reservoir already matches the i.i.d. learner, so they no
longer tell one memory from another. These nine streams are built where a fixed reservoir falls short (too many
regimes for its slots, rare regimes that it barely holds) or where a memory does harm (regimes that never return,
a fault that must not become familiar). Every stream is reconstruction on the digits of scikit-learn (64 pixels,
or the 1,024 of the wide digits of :mod:`~streammas.tools.evaluation.heldout`) under pixel permutations; each
regime has its own held-out rows, and its stretch goes through its training rows before it repeats one. The
pixels arrive as the digits' own counts of inked cells (0 to 16, ``uint8``), as pixels come from a sensor. A
stress stream has one size (:data:`SCALE` times the sizes below), the same at either length: ``make_stream``
always builds it with one pass, whatever ``--passes`` or ``--quick`` say (the builders' ``passes`` repeats
each stretch, for use by hand).

* ``stress-regimes-{10,30,100}`` and ``stress-wide-regimes-{10,30,100}``: that many permutations one after
  another, each shown once and never again (1,000, 500 and 200 samples each); the narrow ones on the 64-pixel
  digits, the wide ones on the 1,024-pixel digits.
* ``stress-skewed``: 12 permutations with Zipf-like shares of the stream (:data:`SKEWED_SHARES`, 35% down to
  1.5%), each in 3 blocks, the 36 blocks shuffled (no block beside another of its regime); 5% of the samples
  are planted anomalies (a quarter of their pixels scrambled), so that the return of a rare regime tests a
  detector.
* ``stress-drift``: 4 permutations one after another that never return (remembering them is dead weight);
  during the last, a faulty period (a quarter of the sensors stuck at their maximum, for 750 samples) comes
  and, 1,500 samples later, recurs: its onset must still look anomalous then.
* ``stress-gradual``: 4 permutations, each drifting into the next: the next one's share of the mixture rises
  smoothly (a half cosine) from 0 to 1 over 3,000 samples. The segments split the stream where the majority
  changes; ``meta["source"]`` holds every sample's regime and ``meta["share"]`` the mixture's shares.

What the metrics of :mod:`~streammas.tools.evaluation.stress_metrics` need is in ``meta["stress"]``: the
rarest quarter of the regimes (fewest samples, then longest unseen), the permanent changes (``(start, end,
regime)``: the new regime's stretch), the planted anomalies and the returns of rare regimes, and the faulty
periods.

>>> s = stress_stream("stress-skewed", seed=0)
>>> s["kind"], s["x"].shape[1], len(s["tests"]), len(s["segments"])
('reconstruction', 64, 12, 36)
>>> d = stress_stream("stress-drift", seed=0)
>>> [r for _, _, r in d["segments"]], len(d["meta"]["stress"]["faults"])
([0, 1, 2, 3, 3, 3, 3, 3], 2)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np

from streammas.tools.evaluation.data import (
    ANOMALY_RATE,
    SCRAMBLE,
    _assemble,
    _digits_raw,
    _permutations,
    _scramble,
    _split,
)
from streammas.tools.evaluation.heldout import _wide_digits

#: Every size below is multiplied by this (tests shrink the whole group with it).
SCALE = 1.0
#: Samples per regime of the many-regimes streams, by number of regimes (narrow and wide alike).
PER_REGIME = {10: 1000, 30: 500, 100: 200}
#: Held-out rows per regime (many regimes; every other stream).
TEST_ROWS = {"many": 100, "few": 200}
#: The skewed stream: each regime's share of it, most to least frequent (sum 1), and its length.
SKEWED_SHARES = (0.35, 0.18, 0.11, 0.08, 0.065, 0.05, 0.045, 0.035, 0.03, 0.025, 0.015, 0.015)
SKEWED_SAMPLES = 24000
BLOCKS = 3
#: The drift stream: each regime's stretch; the last holds ``normal, fault, normal, fault, normal``.
DRIFT_STRETCH = 3000
DRIFT_LAST = (1500, 750, 1500, 750, 500)
#: Share of the sensors stuck in the faulty period, and the samples of its onset that the anomaly AUC judges.
STUCK = 0.25
FAULT_ONSET = 100
#: The gradual stream: regimes, pure stretch of each, and the drift from one to the next.
GRADUAL_REGIMES = 4
GRADUAL_PURE = 1500
GRADUAL_RAMP = 3000
#: Evaluations (every regime's held-out rows) per stream: evenly spread; every this many samples on the streams
#: where the time to recover from a change is measured.
EVALUATIONS = 8
RECOVERY_EVERY = 100


def _n(size: int, least: int = 2) -> int:
    return max(least, int(round(size * SCALE)))


def _source(wide: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Training and held-out rows of the narrow (64) or wide (1,024 pixels) digits, labels dropped."""
    xtr, _, xte, _ = _split(*(_wide_digits() if wide else _digits_raw()), rng)
    return xtr, xte


def _cycle(pool: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` row indices: passes over ``pool`` rows, each in a fresh order (the last one cut short)."""
    passes = -(-n // pool)
    return np.concatenate([rng.permutation(pool) for _ in range(passes)])[:n]


class _Rows:
    """Draws a regime's rows in turn, so that its blocks together go through its rows before repeating any."""

    def __init__(self, x: np.ndarray, perm: np.ndarray, rng: np.random.Generator) -> None:
        self.x, self.perm, self.rng, self.order = x, perm, rng, np.zeros(0, dtype=np.int64)

    def take(self, n: int) -> np.ndarray:
        while len(self.order) < n:
            self.order = np.concatenate([self.order, self.rng.permutation(len(self.x))])
        idx, self.order = self.order[:n], self.order[n:]
        return self.x[idx][:, self.perm]


def _tests(xte: np.ndarray, perms: Sequence[np.ndarray], rows: int, rng: np.random.Generator) -> list:
    rows = min(len(xte), _n(rows, 10))
    return [(xte[rng.permutation(len(xte))[:rows]][:, p].astype(np.float32), None) for p in perms]


def _evenly(n: int, k: int = EVALUATIONS) -> list[int]:
    return sorted({int(round(n * (i + 1) / k)) for i in range(k)})


def _every(n: int, step: int) -> list[int]:
    step = _n(step, 10)
    return [*range(step, n, step), n]


def rarest_quarter(segments: Sequence[tuple[int, int, int]], n_regimes: int) -> list[int]:
    """The quarter of the regimes (at least one) with the fewest samples in the stream, ties broken by the
    longest unseen at the end: the regimes a memory holds least of.

    >>> rarest_quarter([(0, 10, 0), (10, 15, 1), (15, 20, 2), (20, 30, 3)], 4)
    [1]
    """
    count, last = np.zeros(n_regimes), np.zeros(n_regimes)
    for start, end, r in segments:
        count[r] += end - start
        last[r] = max(last[r], end)
    order = sorted(range(n_regimes), key=lambda r: (count[r], last[r]))
    return sorted(order[: max(1, math.ceil(n_regimes / 4))])


def _pixels(x: np.ndarray) -> np.ndarray:
    """The digits' own values: counts of inked cells, 0 to 16, as a sensor delivers pixels (``uint8``)."""
    counts = np.rint(np.asarray(x, dtype=np.float64) * 16.0)
    return counts.astype(np.uint8)


def _spec(x, segments, tests, names, evaluate_at, **stress) -> dict:
    stress["rare"] = rarest_quarter(segments, len(tests))
    return dict(kind="reconstruction", x=_pixels(x), y=None, segments=segments,
                tests=[(_pixels(t), y) for t, y in tests], regime_names=names, evaluate_at=evaluate_at,
                meta={"stress": stress})


# -- the streams --------------------------------------------------------------------------------------------------
def many_regimes(passes: int, seed: int, n_regimes: int = 10, wide: bool = False) -> dict:
    """``n_regimes`` permutations, one after another, each for :data:`PER_REGIME` samples and never again."""
    rng = np.random.default_rng([seed, 30, n_regimes, int(wide)])
    xtr, xte = _source(wide, rng)
    perms = _permutations(rng, n_regimes, xtr.shape[1])
    per_regime = _n(PER_REGIME[n_regimes], 10)
    parts = []
    for r, perm in enumerate(perms):
        idx = _cycle(len(xtr), per_regime, rng)
        parts.append((xtr[np.tile(idx, passes)][:, perm], None, r))
    x, _, segments = _assemble(parts)
    return _spec(x, segments, _tests(xte, perms, TEST_ROWS["many"], rng), _names(n_regimes), _evenly(len(x)))


def _names(n: int) -> list[str]:
    return ["identity"] + [f"permutation {r}" for r in range(1, n)]


def _shuffle_blocks(regimes: Sequence[int], rng: np.random.Generator) -> list[int]:
    """The blocks in a random order where no block follows one of its own regime (else the two would be one)."""
    for _ in range(10000):
        order = [regimes[i] for i in rng.permutation(len(regimes))]
        if all(a != b for a, b in zip(order, order[1:])):
            return order
    raise ValueError("no order keeps the blocks of a regime apart")


def skewed(passes: int, seed: int) -> dict:
    """12 permutations with Zipf-like shares, 3 blocks each, shuffled; 5% planted anomalies."""
    rng = np.random.default_rng([seed, 31])
    xtr, xte = _source(False, rng)
    k = len(SKEWED_SHARES)
    perms = _permutations(rng, k, xtr.shape[1])
    rows = [_Rows(xtr, p, rng) for p in perms]
    block = [max(2, int(round(s * _n(SKEWED_SAMPLES) / BLOCKS))) for s in SKEWED_SHARES]
    parts, flags = [], []
    for r in _shuffle_blocks([r for r in range(k) for _ in range(BLOCKS)], rng):
        x = rows[r].take(block[r] * passes)
        planted = rng.random(len(x)) < ANOMALY_RATE
        x[planted] = _scramble(x[planted], rng, SCRAMBLE)
        parts.append((x, None, r))
        flags.append(planted)
    x, _, segments = _assemble(parts)
    anomalies = np.concatenate(flags).astype(np.int64)
    spec = _spec(x, segments, _tests(xte, perms, TEST_ROWS["few"], rng),
                 [f"{n} ({100 * s:g}%)" for n, s in zip(_names(k), SKEWED_SHARES)], _evenly(len(x), 2 * EVALUATIONS),
                 anomalies=anomalies)
    rare = set(spec["meta"]["stress"]["rare"])
    seen: set[int] = set()
    returns = []
    for start, end, r in segments:
        if r in rare and r in seen:
            returns.append((start, end))
        seen.add(r)
    spec["meta"]["stress"]["rare_returns"] = returns
    return spec


def drift(passes: int, seed: int) -> dict:
    """4 permutations that never return; a faulty period (stuck sensors) in the last, and again later."""
    rng = np.random.default_rng([seed, 32])
    xtr, xte = _source(False, rng)
    perms = _permutations(rng, 4, xtr.shape[1])
    rows = [_Rows(xtr, p, rng) for p in perms]
    # The same sensors fail each time, stuck at the highest value they ever read.
    stuck = np.sort(rng.choice(xtr.shape[1], max(1, int(round(STUCK * xtr.shape[1]))), replace=False))
    high = xtr.max(0)
    parts, faults, permanent, start = [], [], [], 0
    plan = [(r, _n(DRIFT_STRETCH), False) for r in range(3)]
    plan += [(3, _n(n), i % 2 == 1) for i, n in enumerate(DRIFT_LAST)]
    for i, (r, n, faulty) in enumerate(plan):
        x = rows[r].take(n * passes)
        if faulty:
            x[:, stuck] = high[stuck]
            faults.append((start, start + len(x)))
        elif r > 0 and plan[i - 1][0] != r:
            permanent.append((start, start + len(x), r))
        parts.append((x, None, r))
        start += len(x)
    x, _, segments = _assemble(parts)
    return _spec(x, segments, _tests(xte, perms, TEST_ROWS["few"], rng), _names(4), _every(len(x), RECOVERY_EVERY),
                 permanent=permanent, faults=faults, fault_onset=_n(FAULT_ONSET, 10), stuck=stuck.tolist())


def ramp_share(i: np.ndarray, length: int) -> np.ndarray:
    """The next regime's share at step ``i`` of a drift of ``length`` samples: a half cosine from 0 to 1.

    >>> ramp_share(np.array([0, 50, 99]), 100).round(3).tolist()
    [0.0, 0.5, 1.0]
    """
    return (1 - np.cos(np.pi * np.asarray(i, dtype=float) / max(length - 1, 1))) / 2


def gradual(passes: int, seed: int) -> dict:
    """4 permutations, each drifting smoothly into the next (the mixture's share moves as :func:`ramp_share`)."""
    rng = np.random.default_rng([seed, 33])
    xtr, xte = _source(False, rng)
    k = GRADUAL_REGIMES
    perms = _permutations(rng, k, xtr.shape[1])
    rows = [_Rows(xtr, p, rng) for p in perms]
    pure, ramp = _n(GRADUAL_PURE) * passes, _n(GRADUAL_RAMP) * passes
    shares, starts = [], []
    for r in range(k):
        share = np.zeros((pure, k))
        share[:, r] = 1
        shares.append(share)
        if r < k - 1:
            starts.append(sum(len(s) for s in shares))
            share = np.zeros((ramp, k))
            share[:, r + 1] = ramp_share(np.arange(ramp), ramp)
            share[:, r] = 1 - share[:, r + 1]
            shares.append(share)
    share = np.concatenate(shares)
    # Each sample of a drift is drawn from the next regime with the mixture's share of the moment.
    source = share.argmax(1)
    for r in range(k - 1):
        ramp_rows = slice(starts[r], starts[r] + ramp)
        source[ramp_rows] = np.where(rng.random(ramp) < share[ramp_rows, r + 1], r + 1, r)
    x = np.empty((len(source), xtr.shape[1]), dtype=np.float32)
    for r in range(k):
        where = np.flatnonzero(source == r)
        x[where] = rows[r].take(len(where))
    cuts = [0, *(s + ramp // 2 for s in starts), len(x)]
    segments = [(cuts[r], cuts[r + 1], r) for r in range(k)]
    permanent = [(s, starts[r + 1] if r + 1 < len(starts) else len(x), r + 1) for r, s in enumerate(starts)]
    spec = _spec(x, segments, _tests(xte, perms, TEST_ROWS["few"], rng), _names(k), _every(len(x), 4 * RECOVERY_EVERY),
                 permanent=permanent)
    spec["meta"].update(source=source, share=share.astype(np.float32))
    return spec


def _many(n_regimes: int, wide: bool) -> Callable[..., dict]:
    return functools.partial(many_regimes, n_regimes=n_regimes, wide=wide)


#: The stress streams, registered into :data:`streammas.tools.evaluation.streams.BENCHMARKS` (the group
#: ``stress``); not among the streams ``streammas evaluate`` runs by default.
STRESS_BENCHMARKS: dict[str, Callable[..., dict]] = {
    **{f"stress-regimes-{n}": _many(n, False) for n in PER_REGIME},
    **{f"stress-wide-regimes-{n}": _many(n, True) for n in PER_REGIME},
    "stress-skewed": skewed,
    "stress-drift": drift,
    "stress-gradual": gradual,
}


def stress_stream(name: str, passes: int = 1, seed: int = 0) -> dict:
    """The fields of a stress :class:`~streammas.tools.evaluation.streams.Stream` (``make_stream`` wraps them)."""
    return STRESS_BENCHMARKS[name](passes, seed)
