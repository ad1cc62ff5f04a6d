"""The evaluation's held-out streams, the practitioner's baseline, the standardised reconstruction error, and
the comparisons and targets of the summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from streammas.models import MLPAutoencoder, MLPClassifier
from streammas.tools.evaluation.baseline import PractitionerBaseline, practitioner_baseline
from streammas.tools.evaluation.harness import _evaluate_tests, run_method, standardised_error
from streammas.tools.evaluation.heldout import LONG_PASSES
from streammas.tools.evaluation.methods import Method
from streammas.tools.evaluation.streams import HELDOUT, Stream, make_stream, stream_passes
from streammas.tools.evaluation.summary import BAND, relative_gain, summarise, targets, verdict

# -- the held-out streams ---------------------------------------------------------------------------------------
#: name: (kind, features, regimes, regime of each segment, passes of the long length) as documented
DOCUMENTED = {
    "shuttle-raw": ("reconstruction", 9, 3, [0, 1, 2, 0, 1, 2], 5),
    "wine-raw": ("reconstruction", 13, 3, [0, 1, 2, 0, 1, 2], 20),
    "cancer-permuted": ("classification", 30, 4, [0, 1, 2, 3], 10),
    "cancer-anomaly": ("anomaly", 30, 2, [0, 1, 0], 20),
    "wide-digits": ("reconstruction", 1024, 3, [0, 1, 2, 0, 1, 2], 10),
    "wide-permuted-digits": ("classification", 1024, 8, list(range(8)), 4),
    "noisy-digits": ("reconstruction", 512, 3, [0, 1, 2, 0, 1, 2], 10),
    "noisy-prototypes": ("reconstruction", 32, 4, [0, 1, 2, 3, 0, 1, 2, 3], 20),
    "waterflow-anomaly": ("anomaly", 24, 3, [0, 1, 2, 0], 20),
    "sp500-windows": ("reconstruction", 32, 4, [0, 1, 2, 3], 5),
}


def test_every_held_out_stream_is_documented():
    assert set(DOCUMENTED) == set(HELDOUT) and len(HELDOUT) >= 8
    assert {name: spec[4] for name, spec in DOCUMENTED.items()} == {n: stream_passes(n, "long") for n in HELDOUT}
    assert set(LONG_PASSES) <= set(HELDOUT) and 1 <= min(LONG_PASSES.values()) <= max(LONG_PASSES.values()) <= 20


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_held_out_stream_shapes_and_bookkeeping(name):
    kind, features, n_regimes, order, long_passes = DOCUMENTED[name]
    s = make_stream(name, "short", 0)
    assert (s.kind, s.x.shape[1], s.n_regimes, [r for _, _, r in s.segments]) == (kind, features, n_regimes, order)
    assert s.held_out and s.x.dtype == np.float32 and np.isfinite(s.x).all()
    # segments tile the stream in order; each regime is shown for whole passes over its training samples
    assert s.segments[0][0] == 0 and s.segments[-1][1] == len(s.x) and s.boundaries == [a for a, _, _ in s.segments[1:]]
    assert all(e == b for (_, e, _), (b, _, _) in zip(s.segments[:-1], s.segments[1:]))
    sizes = {}
    for start, end, r in s.segments[:-1] if kind == "anomaly" else s.segments:
        sizes.setdefault(r, set()).add(end - start)
    assert all(len(v) == 1 for v in sizes.values())
    for x, _ in s.tests:
        assert x.dtype == np.float32 and x.shape[1] == features and np.isfinite(x).all() and len(x) >= 10
    if kind == "classification":
        assert s.y.dtype == np.int64 and set(np.unique(s.y)) == set(range(s.n_classes))
        assert all(set(np.unique(y)) <= set(range(s.n_classes)) for _, y in s.tests)
    elif kind == "anomaly":
        assert s.returning == len(s.segments) - 1 and set(np.unique(s.y)) == {0, 1} and s.y.mean() < 0.1
        assert all(set(np.unique(y)) == {0, 1} and y.sum() >= 20 for _, y in s.tests)
    else:
        assert s.y is None and all(y is None for _, y in s.tests)
    long = make_stream(name, "long", 0)
    assert len(long.x) == long_passes * len(s.x) - (long_passes - 1) * (kind == "anomaly") * (
        s.segments[-1][1] - s.segments[-1][0])  # an anomaly stream's returning regime: one pass in both
    assert np.all(s.scale > 0) and s.scale.shape == s.sample_shape


@pytest.mark.parametrize("name", ["shuttle-raw", "wine-raw", "cancer-permuted", "waterflow-anomaly"])
def test_raw_unit_streams_are_in_raw_units(name):
    s = make_stream(name, "short", 0)
    assert np.abs(s.x).max() > 100  # not standardised, not in [0, 1]


@pytest.mark.parametrize("name", ["noisy-digits", "noisy-prototypes"])
def test_noise_is_drawn_afresh_each_time_a_sample_is_shown(name):
    s = make_stream(name, "long", 0)
    start, end, _ = s.segments[0]
    assert len(np.unique(s.x[start:end], axis=0)) == end - start  # 10 or 20 passes, no row twice
    if name == "noisy-digits":
        assert 0.25 < s.x[:, 64:].std() < 0.35  # 448 features of noise alone


# -- the practitioner's baseline --------------------------------------------------------------------------------
def test_baseline_learns_raw_units_without_overflow():
    s = make_stream("shuttle-raw", "short", 0)  # values in the hundreds, heavy tails
    start, end, regime = s.segments[0]
    torch.manual_seed(0)
    baseline = practitioner_baseline(MLPAutoencoder(9, hidden=(18,), latent=2), seed=0)
    losses = np.concatenate([baseline.learn_many(torch.from_numpy(s.x[b:b + 10])).numpy()
                             for b in range(start, end, 10)])
    assert np.isfinite(losses).all() and baseline.counters["skipped_updates"] == 0
    assert losses[-400:].mean() < 0.5 * losses[:200].mean()
    # the reconstruction comes back in the input's units (standardised, it would sit around 0) and beats the mean
    test = s.tests[regime][0]
    prediction = baseline.predict_many(torch.from_numpy(test)).numpy()
    assert np.all(np.abs(prediction.mean(0) - test.mean(0)) < 0.5 * test.std(0) + 1e-3)
    assert np.abs(prediction.mean(0)).max() > 50
    assert standardised_error(prediction, test, s.scale) < 0.9
    # its own score is in standardised units, not the input's (hundreds squared)
    assert baseline.score_many(torch.from_numpy(test)).mean() < 5


def test_baseline_running_statistics_are_exact():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(73, 3)) * [1, 100, 1e4]).astype(np.float32)
    baseline = PractitionerBaseline(MLPAutoencoder(3, hidden=(4,), latent=1), seed=0)
    for b in range(0, 73, 10):
        baseline.learn_many(x[b:b + 10])
    np.testing.assert_allclose(baseline.mean.numpy(), x.astype(np.float64).mean(0), rtol=1e-9)
    np.testing.assert_allclose(baseline.var.numpy(), x.astype(np.float64).var(0), rtol=1e-9)


def test_baseline_reservoir_is_uniform():
    n, capacity, seeds = 5000, 500, 12
    x = torch.arange(n, dtype=torch.float32)[:, None]
    counts = np.zeros(10)
    for seed in range(seeds):
        baseline = PractitionerBaseline(MLPAutoencoder(1, hidden=(2,), latent=1), reservoir=capacity, seed=seed)
        for b in range(0, n, 100):
            baseline.learn_many(x[b:b + 100])
        held = baseline._x[:, 0].numpy().astype(int)
        assert baseline.held == capacity and len(np.unique(held)) == capacity  # no sample twice
        counts += np.bincount(held // (n // 10), minlength=10)
    # every tenth of the stream is held 1 time in 10: chi-square with 9 degrees of freedom, p > 0.001
    expected = seeds * capacity / 10
    assert ((counts - expected) ** 2 / expected).sum() < 27.9


def test_baseline_replays_and_is_deterministic():
    s = make_stream("cancer-permuted", "short", 0)

    def run():
        torch.manual_seed(1)
        b = practitioner_baseline(MLPClassifier(30, 2, hidden=(16,)), objective="classification", seed=3)
        out = [b.learn_many(torch.from_numpy(s.x[i:i + 10]), torch.from_numpy(s.y[i:i + 10]))
               for i in range(0, 600, 10)]
        return torch.cat(out), b

    (a, first), (b, _) = run(), run()
    assert torch.equal(a, b) and torch.isfinite(a).all()
    assert first.held == 500 and first.counters["updates"] == 60 and first.events == []
    assert set(first._y[:500].tolist()) == {0, 1}  # labels kept with the inputs
    assert first.predict_many(torch.from_numpy(s.tests[0][0])).shape == (len(s.tests[0][0]), 2)


def test_baseline_skips_a_non_finite_loss():
    baseline = PractitionerBaseline(MLPAutoencoder(2, hidden=(4,), latent=1), seed=0)
    baseline.learn_many(torch.ones(10, 2))
    before = [p.clone() for p in baseline.model.parameters()]
    baseline.learn_many(torch.full((10, 2), float("inf")))
    assert baseline.counters["skipped_updates"] == 1 and baseline.counters["updates"] == 2
    assert all(torch.equal(p, q) for p, q in zip(before, baseline.model.parameters()))


def test_baseline_runs_in_the_harness():
    s = make_stream("wine-raw", "short", 0)
    run = run_method(s, Method("baseline", factory=practitioner_baseline), seed=0, eval_per_segment=1)
    assert run["skipped_share"] == 0 and run["updates"] == sum(math.ceil((e - b) / 10) for b, e, _ in s.segments)
    assert all(0 < v < 5 for v in run["final"])


# -- the standardised reconstruction error ---------------------------------------------------------------------
class _Fixed:
    """A learner that predicts what it is told, and scores in units of its own."""

    def __init__(self, predict, units=1.0):
        self.predict, self.units = predict, units

    def predict_many(self, x):
        return torch.as_tensor(self.predict(x.numpy()), dtype=torch.float32)

    def score_many(self, x, y=None):
        return self.units * ((self.predict_many(x) - x) ** 2).mean(1)


def test_standardised_error_is_the_same_whatever_the_learners_units():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(4000, 3)) * [1.0, 100.0, 0.01] + [0.0, 1000.0, 5.0]).astype(np.float32)
    x[:, 0] = 7.0  # a constant feature: unit 1
    stream = Stream("units", "short", "reconstruction", x[:3000], None, segments=[(0, 3000, 0)],
                    tests=[(x[3000:], None)], regime_names=["all"])
    mean = x[:3000].mean(0)
    perfect = _evaluate_tests(_Fixed(lambda v: v), stream)
    constant = _evaluate_tests(_Fixed(lambda v: np.tile(mean, (len(v), 1))), stream)
    other_units = _evaluate_tests(_Fixed(lambda v: np.tile(mean, (len(v), 1)), units=1e6), stream)
    assert perfect == [0.0] and constant == other_units
    assert constant[0] == pytest.approx(2 / 3, abs=0.05)  # two features at ~1, the constant one at 0


@pytest.mark.parametrize("name", [n for n in DOCUMENTED if DOCUMENTED[n][0] == "reconstruction"])
def test_no_reconstruction_stream_has_an_almost_constant_feature(name):
    # in the standardised error such a feature would outweigh all the others
    scale = make_stream(name, "short", 0).scale
    assert scale.min() > 0.05 * np.median(scale)


# -- comparisons and targets ----------------------------------------------------------------------------------
def _run(method, primary, bench="wine-raw", length="long", kind="reconstruction", skipped=0, forgetting=0.0):
    return {"benchmark": bench, "length": length, "method": method, "seed": 0, "kind": kind,
            "group": "held-out", "primary": primary, "final_average": primary, "final": [primary],
            "forgetting": [forgetting], "seconds": 1.0, "updates": 1000,
            "events": {"plateaus": 0, "peaks": 0, "consolidations": 0, "skipped_updates": skipped}}


def test_verdicts_against_plain_baseline_and_no_mas():
    assert relative_gain(0.5, 1.0, higher_is_better=False) == 0.5 and verdict(BAND / 2) == "neutral"
    runs = [_run("plain", 1.0, skipped=20), _run("baseline", 0.5), _run("no-mas", 0.8, forgetting=0.2),
            _run("streammas", 0.79), _run("iid", 0.4)]
    rows = summarise(runs)["wine-raw"]["long"]
    assert rows["streammas"]["verdict"] == {"plain": "better", "baseline": "worse", "no-mas": "neutral"}
    assert rows["plain"]["skipped_share"] == 0.02 and rows["streammas"]["skipped_share"] == 0
    met = {t["target"]: t["met"] for t in targets(summarise(runs))}
    assert met["at least as good as the baseline (within 2%)"] is False
    assert met["better than no-mas by > 2% (no-mas forgets here)"] is False
    assert met["skipped updates <= 1% of updates"] is True
    assert not any("0.8 x plain" in t for t in met)  # the tuning streams' targets are not the held-out ones'


def test_a_method_that_diverges_is_worse():
    rows = summarise([_run("plain", float("nan")), _run("streammas", 3.0), _run("baseline", 0.5)])["wine-raw"]["long"]
    assert rows["streammas"]["verdict"]["plain"] == "better" and rows["plain"]["diverged"] == 1
    assert rows["plain"]["verdict"]["baseline"] == "worse"


def test_report_groups_and_compares():
    from streammas.tools.evaluation.report import render_markdown

    runs = [_run(m, v, bench=b) for b in ("wine-raw", "shuttle-raw") for m, v in
            (("plain", 1.0), ("streammas", 0.9), ("baseline", 0.5), ("no-mas", 0.9))]
    runs += [dict(_run(m, v, bench="permuted-digits", kind="classification"), group="tuning")
             for m, v in (("plain", 0.5), ("streammas", 0.6), ("baseline", 0.9), ("no-mas", 0.55))]
    summary = summarise(runs)
    results = {"summary": summary, "targets": targets(summary), "config": {"seeds": [0], "batch_size": 10},
               "methods": [{"name": m} for m in ("plain", "no-mas", "streammas", "baseline")]}
    text = render_markdown(results)
    assert text.index("### The six tuning streams") < text.index("| permuted-digits | long |") < text.index(
        "### Held-out streams") < text.index("| wine-raw | long |")
    assert "| wine-raw | long | better (10.0%) | worse (-80.0%) | neutral (0.0%) |" in text
    assert "## Skipped updates" in text and "standardised reconstruction error" in text


def test_benchmarks_accepts_groups():
    from streammas.tools.evaluation.cli import _csv
    from streammas.tools.evaluation.streams import BENCHMARKS, GROUPS, TUNING

    parse = _csv(tuple(BENCHMARKS), GROUPS)
    assert parse("held-out") == HELDOUT and parse("tuning,wine-raw") == (*TUNING, "wine-raw")
    assert parse("wine-raw,held-out")[0] == "wine-raw" and len(parse("wine-raw,held-out")) == len(HELDOUT)
