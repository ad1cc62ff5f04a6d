"""The evaluation harness: streams, metrics, methods, a quick end-to-end run, determinism."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from streammas.learner.plateau import PlateauDetector
from streammas.tools.evaluation import metrics
from streammas.tools.evaluation.harness import EvalConfig, evaluate, run_method, summarise
from streammas.tools.evaluation.methods import METHODS, default_methods, no_memory, parse_overrides
from streammas.tools.evaluation.streams import BENCHMARKS, HELDOUT, TUNING, make_stream, shuffled, stream_passes


# -- streams ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_streams_are_seeded_and_well_formed(name):
    a, b, c = make_stream(name, "short", 0), make_stream(name, "short", 0), make_stream(name, "short", 1)
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x[:200], c.x[:200])
    # pixels arrive as bytes (the stress streams), every other stream as float32
    assert a.x.dtype == (np.uint8 if name.startswith("stress-") else np.float32) and np.isfinite(a.x).all()
    # segments tile the stream; every regime has a test set of the same width
    assert a.segments[0][0] == 0 and a.segments[-1][1] == len(a.x)
    assert all(e == s for (_, e, _), (s, _, _) in zip(a.segments[:-1], a.segments[1:]))
    assert {r for _, _, r in a.segments} == set(range(a.n_regimes))
    assert all(t[0].shape[1] == a.x.shape[1] for t in a.tests)
    long = make_stream(name, "long", 0)
    first_short = a.segments[0][1] - a.segments[0][0]
    assert long.segments[0][1] - long.segments[0][0] == stream_passes(name, "long") * first_short
    assert long.meta["passes"] == stream_passes(name, "long") and a.meta["passes"] == 1
    assert a.held_out == (name in HELDOUT)


def test_permuted_regimes_are_permutations_of_the_same_samples():
    s = make_stream("permuted-digits", "short", 0)
    x0, y0 = s.tests[0]
    x1, y1 = s.tests[1]
    np.testing.assert_array_equal(y0, y1)
    assert not np.array_equal(x0, x1)
    np.testing.assert_allclose(np.sort(x0, axis=1), np.sort(x1, axis=1))


def test_anomaly_stream_plants_anomalies_and_a_returning_regime():
    s = make_stream("anomaly-digits", "long", 0)
    regimes = [r for _, _, r in s.segments]
    assert regimes[-1] == regimes[0] and s.returning == len(s.segments) - 1
    start, end, _ = s.segments[-1]
    assert end - start == s.segments[0][1] / 10  # one pass when it returns
    assert 0.03 < s.y.mean() < 0.07
    for _, y in s.tests:
        assert set(np.unique(y)) == {0, 1}


def test_shuffled_keeps_the_samples():
    s = make_stream("recurring-digits", "short", 0)
    x, _, order = shuffled(s, 0)
    np.testing.assert_array_equal(x, s.x[order])
    assert sorted(order) == list(range(len(s.x)))


# -- metrics ------------------------------------------------------------------------------------------------
def test_roc_auc_matches_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.2
    s = rng.normal(size=300) + y + np.round(rng.random(300), 1)  # with ties
    assert metrics.roc_auc(y, s) == pytest.approx(roc_auc_score(y, s))
    assert math.isnan(metrics.roc_auc([0, 0], [1.0, 2.0]))


def test_forgetting_and_gap():
    m = [[0.9, 0.0], [0.5, 0.8], [0.4, 0.9]]
    assert metrics.forgetting(m, [0, 1]) == pytest.approx([0.5, 0.0])
    errors = [[0.1, 0.5], [0.3, 0.2]]
    assert metrics.forgetting(errors, [0, 1], higher_is_better=False) == pytest.approx([0.2, 0.0])
    assert metrics.gap_closed(0.2, plain=0.4, iid=0.0, higher_is_better=False) == pytest.approx(0.5)
    assert math.isnan(metrics.gap_closed(0.5, 0.5, 0.5))


def test_overrides():
    assert parse_overrides(["plateau.peak_rise=0.3", "importance_output=encoder"]) == {
        "plateau": {"peak_rise": 0.3}, "importance_output": "encoder"}
    with pytest.raises(ValueError):
        parse_overrides(["reg_lambda"])
    methods = {m.name: m for m in default_methods({"reg_lambda": 5.0, "lr": 0.2, "hard_buffer": 4})}
    assert methods["plain"].learner == {"lr": 0.2, **no_memory()}
    assert no_memory()["reg_lambda"] == 0.0 and no_memory()["hard_buffer"] == 0
    assert methods["no-mas"].learner == {"reg_lambda": 0.0, "lr": 0.2, "hard_buffer": 4}
    assert methods["baseline"].learner == {} and methods["baseline"].factory is not None
    assert methods["buffer"].learner["hard_buffer"] == 4
    assert methods["oracle"].oracle and methods["iid"].iid
    assert methods["streammas-buffer"].learner["importance_source"] == "buffer"
    # defaults without a buffer still leave the buffer methods a buffer
    methods = {m.name: m for m in default_methods({"hard_buffer": 0})}
    assert methods["streammas"].learner["hard_buffer"] == 0
    assert methods["buffer"].learner["hard_buffer"] == methods["streammas-buffer"].learner["hard_buffer"] == 16


# -- runs ---------------------------------------------------------------------------------------------------
def _small(name="recurring-digits"):
    return make_stream(name, "short", 0)


def test_run_is_deterministic():
    stream = _small("permuted-digits")
    method = {m.name: m for m in default_methods()}["streammas"]
    a = run_method(stream, method, seed=3, eval_per_segment=2)
    b = run_method(stream, method, seed=3, eval_per_segment=2)
    for key in ("matrix", "segment_loss", "online_accuracy", "events"):
        assert a[key] == b[key]


def test_oracle_consolidates_exactly_at_the_boundaries():
    stream = _small()
    oracle = {m.name: m for m in default_methods()}["oracle"]
    run = run_method(stream, oracle, seed=0, eval_per_segment=1)
    assert run["events"]["consolidation_samples"] == stream.boundaries
    assert run["events"]["plateaus"] == 0
    assert run["events"]["consolidation_distance"]["mean_abs"] == 0


def test_anomaly_run_reports_auc_per_segment():
    stream = make_stream("anomaly-digits", "short", 0)
    plain = {m.name: m for m in default_methods()}["plain"]
    run = run_method(stream, plain, seed=0, eval_per_segment=1)
    assert len(run["segment_auc"]) == len(stream.segments)
    assert 0.0 <= run["returning_auc"] <= 1.0 and 0.0 <= run["auc_at_return"] <= 1.0
    # the primary metric: the returning regime's test set, scored by the model as it was when it returned
    assert run["primary"] == run["auc_at_return"]
    returning_row = run["eval_samples"].index(stream.segments[-1][0])
    assert run["auc_at_return"] == run["matrix"][returning_row][0]
    assert all(0.0 <= v <= 1.0 for v in run["final"])


# -- the command, end to end (--quick) ----------------------------------------------------------------------
#: The quick run of the slow tests: the six tuning streams and two held-out ones (raw units; an anomaly stream).
QUICK_BENCHMARKS = (*TUNING, "shuttle-raw", "waterflow-anomaly")


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from streammas.cli import main

    out = tmp_path_factory.mktemp("evaluate")
    # two worker processes: the runs are seeded one by one, so the numbers are those of one process (and CI's
    # two cores halve the suite's longest wait)
    assert main(["evaluate", "--quick", "--jobs", "2", "--benchmarks", ",".join(QUICK_BENCHMARKS),
                 "--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_quick_writes_table_json_and_plots(quick):
    out, results = quick
    markdown = (out / "results.md").read_text()
    assert "| permuted-digits | long |" in markdown and "## Targets" in markdown
    assert "streammas evaluate --quick" in markdown
    assert "### Held-out streams" in markdown and "## Does streammas help?" in markdown
    assert "## Skipped updates" in markdown and "standardised reconstruction error" in markdown
    for bench in QUICK_BENCHMARKS:
        for length in ("long", "short"):
            png = out / f"{bench}-{length}.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(results["runs"]) == len(QUICK_BENCHMARKS) * 2 * len(METHODS)
    assert {t["benchmark"] for t in results["targets"]} == set(QUICK_BENCHMARKS)


@pytest.mark.slow
def test_quick_numbers_are_sane(quick):
    _, results = quick
    for run in results["runs"]:
        finals = np.asarray(run["final"], dtype=float)  # None (not finite) reads as NaN
        assert len(run["matrix"]) == len(run["eval_samples"])
        if run["method"] == "baseline":  # standardises its inputs: finite everywhere, nothing skipped
            assert np.all(np.isfinite(finals)) and run["skipped_share"] == 0
        if run["benchmark"] in HELDOUT:
            continue  # raw units: a learner with the old defaults may diverge there (the point of these streams)
        if run["kind"] == "reconstruction":
            # the standardised error: 0 is perfect, ~1 the stream's mean; a forgotten regime can be worse.
            # Online SGD with a hard buffer can diverge on the heavy-tailed segments streams (the reason the
            # default has none), and the other methods must not
            assert np.all(finals[np.isfinite(finals)] > 0) and np.all(finals[np.isfinite(finals)] < 5)
            assert run["method"] in ("buffer", "streammas-buffer") or np.all(np.isfinite(finals))
        else:
            assert np.all(finals >= 0) and np.all(finals <= 1)
    summary = results["summary"]
    long = summary["permuted-digits"]["long"]
    # The i.i.d. learner sees the same samples shuffled: it must beat plain SGD on long regimes, and plain
    # SGD must have forgotten the first regime.
    assert long["iid"]["primary"]["mean"] > long["plain"]["primary"]["mean"] + 0.05
    assert long["plain"]["forgetting_per_regime"][0] > 0.2
    assert long["plain"]["final_per_regime"][0] < long["plain"]["final_per_regime"][-1]
    # Everyone learned something: above chance (10%) on the newest regime, far above without a regulariser.
    for name, row in long.items():
        assert row["final_per_regime"][-1] > (0.3 if name in ("plain", "buffer", "iid") else 0.12), name
    assert results["summary"]["recurring-digits"]["long"]["oracle"]["consolidations"] == 5


@pytest.mark.slow
def test_summary_gap_closed_is_relative_to_plain_and_iid(quick):
    _, results = quick
    rows = summarise(results["runs"])["permuted-digits"]["long"]
    assert rows["plain"]["gap_closed"] == pytest.approx(0.0)
    assert rows["iid"]["gap_closed"] == pytest.approx(1.0)


def test_bad_setting_is_reported(tmp_path, capsys):
    from streammas.cli import main

    code = main(["evaluate", "--quick", "--benchmarks", "recurring-digits", "--lengths", "short", "--methods",
                 "streammas", "--set", "consolidation=sometimes", "--no-plots", "--out", str(tmp_path)])
    assert code == 2
    assert "consolidation" in capsys.readouterr().err


def test_evaluate_api_subset():
    cfg = EvalConfig(benchmarks=("recurring-digits",), lengths=("short",), seeds=(0,), methods=("plain", "iid"),
                     eval_per_segment=1)
    results = evaluate(cfg)
    assert set(results["summary"]["recurring-digits"]["short"]) == {"plain", "iid"}


def test_a_report_without_plain_sgd_renders():
    from streammas.tools.evaluation.report import render_markdown

    cfg = EvalConfig(benchmarks=("anomaly-digits",), lengths=("short",), seeds=(0,), methods=("streammas",),
                     passes={"short": 1}, eval_per_segment=1)
    text = render_markdown(evaluate(cfg))
    assert "Prequential ROC AUC per segment" in text and "| **streammas** |" in text


def test_detector_replay_records_curves_and_scores_variants(tmp_path, capsys):
    from streammas.cli import main
    from streammas.tools.evaluation.detector import record_curves, replay

    curves = record_curves(["anomaly-segments"], ["long"], [0])
    (curve,) = curves
    assert curve.regimes == 4 and len(curve.values) == curve.regime_batches[-1][1]
    counts = replay(curves, PlateauDetector)
    # each long regime (the returning one is short) is learned to a plateau, none half-learned; changes are seen
    assert counts["long_regimes"] == 3 and counts["long_learned"] == 3 and counts["premature"] == 0
    assert counts["peaks_at_change"] >= 2
    never = replay(curves, lambda: PlateauDetector(min_drop=0.99, floor_drop=0.99))
    assert never["plateaus"] == 0 and never["long_learned"] == 0
    assert main(["evaluate", "--detector", "--benchmarks", "wine-raw", "--lengths", "short", "--seeds", "1",
                 "--out", str(tmp_path)]) == 0
    assert "| defaults |" in (tmp_path / "detector.md").read_text()
