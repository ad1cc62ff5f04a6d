"""The stress streams of ``streammas evaluate``: their structure, their metrics, the equal-bytes baseline, and a
tiny run of the whole group through the command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from streammas.tools.evaluation import stress
from streammas.tools.evaluation.data import _digits_raw
from streammas.tools.evaluation.heldout import _wide_digits
from streammas.tools.evaluation.methods import STRESS_METHODS, default_methods, replay_nbytes
from streammas.tools.evaluation.streams import DEFAULT_BENCHMARKS, GROUPS, STRESS, make_stream
from streammas.tools.evaluation.stress_metrics import ROWS, add_samples_to_plain, run_metrics

MANY = [name for name in STRESS if "regimes" in name]


def _regimes(segments):
    return [r for _, _, r in segments]


def _sorted_rows(x):
    """Each row's values sorted: the same for a sample under any pixel permutation."""
    return {row.tobytes() for row in np.sort(np.round(x, 5), axis=1)}


# -- the group ------------------------------------------------------------------------------------------------
def test_the_group_is_registered_but_not_run_by_default(capsys):
    from streammas.cli import main
    from streammas.tools.evaluation.cli import defaults

    assert GROUPS["stress"] == STRESS and len(STRESS) == 9
    assert not set(STRESS) & set(DEFAULT_BENCHMARKS)
    assert defaults(STRESS) == (("long",), STRESS_METHODS)
    assert defaults(("stress-drift", "wine-raw"))[1] != STRESS_METHODS  # a mixed run keeps every method
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "`--benchmarks stress`" in " ".join(capsys.readouterr().out.split())


# -- the streams --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", MANY)
def test_many_regimes_are_permutations_shown_once(name):
    s = make_stream(name, "long", 0)
    n = int(name.rsplit("-", 1)[1])
    wide = "wide" in name
    assert s.x.dtype == np.uint8 and s.x.shape == (n * stress.PER_REGIME[n], 1024 if wide else 64)
    assert s.n_regimes == n and _regimes(s.segments) == list(range(n))  # each once, never again
    assert all(e - b == stress.PER_REGIME[n] for b, e, _ in s.segments)
    assert all(t.shape == (stress.TEST_ROWS["many"], s.x.shape[1]) and t.dtype == np.uint8 for t, _ in s.tests)
    digits = (_wide_digits() if wide else _digits_raw())[0]
    x = s.x.astype(np.float32) / 16.0  # the digits' own counts of inked cells, back in the scale data.py keeps
    start, end, _ = s.segments[0]  # the identity: the digits themselves
    assert {row.tobytes() for row in np.round(x[start:end], 5)} <= {row.tobytes() for row in np.round(digits, 5)}
    for r in (1, n - 1):  # a permutation of them: each row's values are a digit's
        start, end, _ = s.segments[r]
        assert _sorted_rows(x[start:end]) <= _sorted_rows(digits)
        assert not np.allclose(x[start:end].mean(0), x[:stress.PER_REGIME[n]].mean(0), atol=0.05)
    assert s.eval_points()[-1] == len(s.x) and len(s.eval_points()) == stress.EVALUATIONS
    assert s.meta["stress"]["rare"] == list(range(math.ceil(n / 4)))  # equal shares: the oldest quarter
    assert s.group == "stress" and s.meta["passes"] == 1


def test_skewed_shares_recur_in_shuffled_blocks():
    s, other = make_stream("stress-skewed", "long", 0), make_stream("stress-skewed", "long", 1)
    regimes = _regimes(s.segments)
    assert s.n_regimes == 12 and len(regimes) == 12 * stress.BLOCKS
    assert all(regimes.count(r) == stress.BLOCKS for r in range(12))
    assert all(a != b for a, b in zip(regimes, regimes[1:]))  # a block never follows one of its own regime
    assert regimes != sorted(regimes) and regimes != _regimes(other.segments)  # shuffled, per seed
    counts = np.bincount(s.regime, minlength=12)
    np.testing.assert_allclose(counts / len(s.x), stress.SKEWED_SHARES, atol=2e-4)
    assert stress.SKEWED_SHARES[0] == 0.35 and stress.SKEWED_SHARES[-1] == 0.015
    assert sum(stress.SKEWED_SHARES) == pytest.approx(1.0)
    info = s.meta["stress"]
    assert info["rare"] == [9, 10, 11]  # the three rarest
    # every return of a rare regime, and nothing else: its second and third blocks
    returns = [block for r in info["rare"] for block in [(b, e) for b, e, q in s.segments if q == r][1:]]
    assert sorted(info["rare_returns"]) == sorted(returns) and len(returns) == 6
    anomalies = info["anomalies"]
    assert anomalies.shape == (len(s.x),) and 0.03 < anomalies.mean() < 0.07
    assert anomalies[np.concatenate([np.arange(b, e) for b, e in returns])].sum() > 0


def test_drift_regimes_never_return_and_the_fault_recurs():
    s = make_stream("stress-drift", "long", 0)
    regimes = _regimes(s.segments)
    assert regimes == sorted(regimes) and set(regimes) == {0, 1, 2, 3}  # once gone, never back
    info = s.meta["stress"]
    starts = {r: min(b for b, _, q in s.segments if q == r) for r in range(4)}
    assert [(b, r) for b, _, r in info["permanent"]] == [(starts[r], r) for r in (1, 2, 3)]
    (f0, e0), (f1, e1) = info["faults"]
    assert e0 - f0 == e1 - f1 == stress.DRIFT_LAST[1] and f1 - e0 == stress.DRIFT_LAST[2]  # it recurs, later
    assert set(s.regime[f0:e1]) == {3} and info["permanent"][-1][1] == f0  # in the last regime, after a change
    stuck = np.asarray(info["stuck"])
    assert len(stuck) == round(stress.STUCK * 64)
    for b, e in info["faults"]:
        # the same sensors, stuck at the same value, every time
        np.testing.assert_array_equal(s.x[b:e, stuck], np.broadcast_to(s.x[f0, stuck], (e - b, len(stuck))))
    normal = np.ones(len(s.x), dtype=bool)
    normal[f0:e0] = normal[f1:e1] = False
    assert not (s.x[normal][:, stuck] == s.x[f0, stuck]).all(1).any()  # outside the faults no sample is stuck
    assert info["fault_onset"] == stress.FAULT_ONSET


def test_gradual_drift_is_gradual():
    s = make_stream("stress-gradual", "long", 0)
    share, source = s.meta["share"], s.meta["source"]
    assert share.shape == (len(s.x), stress.GRADUAL_REGIMES) and source.shape == (len(s.x),)
    np.testing.assert_allclose(share.sum(1), 1, atol=1e-6)
    # smooth: no step of the mixture moves by more than a half cosine over the ramp allows
    assert np.abs(np.diff(share, axis=0)).max() <= np.pi / 2 / (stress.GRADUAL_RAMP - 1) + 1e-6
    ramp = stress.GRADUAL_RAMP
    for start, _, new in s.meta["stress"]["permanent"]:
        window = source[start:start + ramp].reshape(10, -1)
        drawn = (window == new).mean(1)  # the new regime's share of each tenth of the drift, as drawn
        expected = share[start:start + ramp, new].reshape(10, -1).mean(1)
        assert np.abs(drawn - expected).max() < 0.12
        assert drawn[0] < 0.1 and drawn[-1] > 0.9 and (np.diff(drawn) > -0.08).all()
        assert set(source[start:start + ramp]) == {new - 1, new}  # two regimes mixed, no third
    # the segments change hands where the new regime becomes the majority
    for (_, end, r), (start, _, _) in zip(s.segments, s.meta["stress"]["permanent"]):
        assert end == start + ramp // 2 and share[end - 1, r] > 0.5 > share[end, r]
    assert _regimes(s.segments) == list(range(stress.GRADUAL_REGIMES))


def test_streams_are_deterministic_per_seed():
    for name in ("stress-skewed", "stress-drift", "stress-gradual", "stress-regimes-10"):
        a, b, c = (make_stream(name, "long", seed) for seed in (0, 0, 1))
        np.testing.assert_array_equal(a.x, b.x)
        assert not np.array_equal(a.x, c.x)


# -- the metrics and the equal-bytes baseline -----------------------------------------------------------------
def test_fault_and_rare_return_aucs_score_the_prequential_losses():
    s = make_stream("stress-drift", "long", 0)
    (f0, _), (f1, _) = s.meta["stress"]["faults"]
    onset = s.meta["stress"]["fault_onset"]
    losses = np.full(len(s.x), 0.5)
    losses[f0:f0 + onset] = 2.0  # the first fault stands out at its onset, the recurrence does not
    points = s.eval_points()
    result = {"final": [0.3, 0.4, 0.5, 0.2], "eval_samples": points, "matrix": [[1.0] * 4] * len(points)}
    out = run_metrics(s, result, losses)
    assert out["auc_fault_first"] == 1.0 and out["auc_fault_return"] == 0.5
    assert out["final_rare"] == 0.3 and len(out["recovery"]) == 3
    assert "recovery" not in run_metrics(s, result, losses, iid=True)  # shuffled: no change to recover from
    skewed = make_stream("stress-skewed", "long", 0)
    out = run_metrics(skewed, {"final": [0.1] * 12}, skewed.meta["stress"]["anomalies"].astype(float))
    assert out["auc_rare_return"] == 1.0 and "auc_fault_first" not in out


def test_samples_to_plain_needs_a_plain_run_of_the_same_seed():
    curve = {"start": 0, "end": 200, "samples": [100, 200], "error": [0.5, 0.4]}
    runs = [{"benchmark": "b", "length": "long", "seed": s, "method": m, "recovery": [curve]}
            for s, m in ((0, "plain"), (0, "streammas"), (1, "streammas"))]
    add_samples_to_plain(runs)
    assert runs[1]["samples_to_plain"] == 100.0 and "samples_to_plain" not in runs[2]


@pytest.mark.parametrize("features", [64, 1024])
def test_equal_bytes_baseline_holds_streammas_replay_bytes(features):
    from streammas.models import build_model
    from streammas.tools.evaluation.harness import _make_learner

    x = torch.rand(10, features)
    methods = {m.name: m for m in default_methods({"replay": 2000}, ("baseline", "baseline-bytes"))}
    default = {m.name: m for m in default_methods({}, ("baseline-bytes",))}["baseline-bytes"]
    sizes = {}
    for label, method in (("default", default), ("2000", methods["baseline-bytes"]), ("fixed", methods["baseline"])):
        learner = _make_learner(method, build_model("mlp-autoencoder", (features,)), "reconstruction")
        learner.learn_many(x)
        sizes[label] = learner.capacity, learner.memory_nbytes()
    model = build_model("mlp-autoencoder", (features,))
    budget = 4 << 20  # the default memory: 4 MiB of float32 samples
    assert sizes["default"] == (budget // (features * 4), replay_nbytes(model, {}, x)) == (
        budget // (features * 4), budget)
    capped = min(2000, budget // (features * 4))  # 2,000 samples, or fewer where 4 MiB binds first
    assert sizes["2000"] == (capped, replay_nbytes(model, {"replay": 2000}, x))  # follows streammas's memory
    assert sizes["fixed"][0] == 500  # the practitioner's baseline keeps its 500 samples


def test_equal_bytes_baseline_follows_a_learner_variant():
    from streammas import OnlineMAS

    class Variant(OnlineMAS):
        pass

    method = {m.name: m for m in default_methods({}, ("baseline-bytes",), factory=Variant)}["baseline-bytes"]
    assert method.learner["learner_factory"] is Variant


# -- the whole group, end to end --------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_tiny_run_of_the_group_reports_every_metric_and_peer(tmp_path, monkeypatch):
    from streammas.cli import main
    from streammas.tools.evaluation.report import LABELS

    # the whole group, each stream at 3% of its size and evaluated a few times
    monkeypatch.setattr(stress, "SCALE", 0.03)
    monkeypatch.setattr(stress, "EVALUATIONS", 2)
    monkeypatch.setattr(stress, "RECOVERY_EVERY", 1000)
    assert main(["evaluate", "--benchmarks", "stress", "--seeds", "1", "--no-plots", "--out", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["command"] == "streammas evaluate --seeds 1 --benchmarks stress"  # the defaults of the group
    assert len(results["runs"]) == len(STRESS) * len(STRESS_METHODS)
    assert {r["method"] for r in results["runs"]} == set(STRESS_METHODS)
    assert {r["group"] for r in results["runs"]} == {"stress"} and {r["length"] for r in results["runs"]} == {"long"}
    text = (tmp_path / "results.md").read_text()
    assert "### Stress streams" in text and "## Stress streams: memory against memory" in text
    for _, what, _ in ROWS:
        assert f"| {what} |" in text, what
    header = next(line for line in text.splitlines() if line.startswith("| stream | metric |"))
    assert all(f"| {LABELS[method]} |" in header + " |" for method in STRESS_METHODS)
    rows = results["summary"]["stress-drift"]["long"]
    for key in ("final_average", "final_rare", "samples_to_plain", "auc_fault_first", "auc_fault_return"):
        assert math.isfinite(rows["streammas"][key]["mean"]), key
    assert rows["baseline-bytes"]["memory_bytes"]["mean"] == rows["streammas"]["memory_bytes"]["mean"] > 0
    assert rows["plain"]["memory_bytes"]["mean"] == 0
    assert "samples_to_plain" not in rows["iid"]
    assert 0 <= results["summary"]["stress-skewed"]["long"]["streammas"]["auc_rare_return"]["mean"] <= 1
