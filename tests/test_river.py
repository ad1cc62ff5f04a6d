"""streammas.river: river's own estimator checks, pipelines, mini-batches, pickling."""

from __future__ import annotations

import functools
import math
import pickle

import numpy as np
import pytest
import torch
from river import checks, compose, datasets, preprocessing

from streammas.river import MASAutoencoder, MASClassifier


def _anomaly_stream(n: int = 1000, seed: int = 0):
    """Standardised normal points on a low-dimensional manifold, 5% of them far off it (label 1)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = rng.normal(size=2)
        x = np.array([t[0], t[1], t[0] + t[1], t[0] - t[1], 0.5 * t[0]]) + 0.05 * rng.normal(size=5)
        anomaly = rng.random() < 0.05
        if anomaly:
            x = rng.normal(size=5) * 3
        out.append(({f"f{i}": float(v) for i, v in enumerate(x)}, int(anomaly)))
    return out


def _river_checks(model):
    """river's checks for ``model``; the anomaly checks' dataset (CreditCard) is downloaded by river, so a
    local stream stands in for it."""
    for check in checks.yield_checks(model):
        if isinstance(check, functools.partial) and "dataset" in check.keywords and isinstance(
                model, MASAutoencoder):
            n = 10_000 if check.func.__name__ == "check_bounded_memory_growth" else 1000
            check = functools.partial(check.func, dataset=_anomaly_stream(n))
            check.__name__ = check.func.__name__
        yield check


def _run_checks(model):
    ran = []
    for check in _river_checks(model):
        if check.__name__ in model._unit_test_skips():
            continue
        check(model.clone())
        ran.append(check.__name__)
    return ran


@pytest.mark.slow
def test_river_checks_autoencoder():
    ran = _run_checks(MASAutoencoder(seed=0))
    assert "check_roc_auc" in ran and "check_shuffle_features_no_impact" in ran and "check_pickling" in ran


@pytest.mark.slow
def test_river_checks_classifier():
    ran = _run_checks(MASClassifier(seed=0))
    assert "check_predict_proba_one" in ran and "check_classifier_tracks_seen_labels" in ran


def test_pipeline_detects_anomalies_and_consolidates():
    from sklearn.metrics import roc_auc_score

    model = preprocessing.StandardScaler() | MASAutoencoder(seed=0)
    scores, labels = [], []
    for x, y in _anomaly_stream(3000, seed=1):
        scores.append(model.score_one(x))
        model.learn_one(x)
        labels.append(y)
    assert roc_auc_score(labels[1000:], scores[1000:]) > 0.9
    assert model["MASAutoencoder"].learner_.samples_seen >= 2990


def test_learn_many_matches_feature_order_and_lists():
    rows = [x for x, _ in _anomaly_stream(200)]
    a, b = MASAutoencoder(seed=3), MASAutoencoder(seed=3)
    a.learn_many(rows)
    # the same samples with columns in another order, as an array after the first batch fixed the names
    shuffled = [{k: r[k] for k in reversed(list(r))} for r in rows]
    b.learn_many(shuffled)
    probe = rows[:20]
    np.testing.assert_allclose(a.score_many(probe), b.score_many(probe), rtol=1e-6)
    np.testing.assert_allclose(a.score_many(probe), [a.score_one(x) for x in probe], rtol=1e-5)


def test_dataframes():
    pd = pytest.importorskip("pandas")
    rows = [x for x, _ in _anomaly_stream(100)]
    frame = pd.DataFrame(rows)
    det = MASAutoencoder(seed=0)
    det.learn_many(frame)
    scores = det.score_many(frame)
    assert scores.shape == (100,) and np.isfinite(scores).all()
    clf = MASClassifier(seed=0)
    y = pd.Series([int(r["f0"] > 0) for r in rows])
    clf.learn_many(frame, y)
    proba = clf.predict_proba_many(frame)
    assert list(proba.columns) == clf.classes_
    assert np.allclose(proba.sum(axis=1), 1.0)
    assert len(clf.predict_many(frame)) == 100


def test_a_dataframe_in_another_column_order_and_missing_a_column_learns_what_its_dicts_teach():
    pd = pytest.importorskip("pandas")
    rows = [x for x, _ in _anomaly_stream(60)]
    a, b = MASAutoencoder(seed=4), MASAutoencoder(seed=4)
    a.learn_many(rows[:30])
    b.learn_many(pd.DataFrame(rows[:30]))
    shuffled = pd.DataFrame(rows[30:])[["f3", "f0", "f4", "f1"]]  # f2 absent: 0, river's sparse convention
    a.learn_many([{k: v for k, v in r.items() if k != "f2"} for r in rows[30:]])
    b.learn_many(shuffled)
    np.testing.assert_array_equal(a.score_many(shuffled), b.score_many(shuffled))
    assert b.features_ == ["f0", "f1", "f2", "f3", "f4"]
    # the column order is remembered to reorder the next frame, and left out of the pickle (river compares them)
    assert b._columns is not None and pickle.loads(pickle.dumps(b))._columns is None


def test_a_samples_keys_in_any_order_missing_or_bad_give_the_features_vector():
    det = MASAutoencoder()
    det.learn_one({"b": 1.0, "a": 2.0})  # the features: a, b
    assert det._vector({"b": 1.0, "a": 2.0}).tolist() == [2.0, 1.0]
    assert det._vector({"b": 5, "a": True, "z": 9.0}).tolist() == [1.0, 5.0]  # z: not a feature of this model
    assert det._vector({"a": 3.0}).tolist() == [3.0, 0.0]  # b absent: 0
    with pytest.raises(ValueError, match="non-numeric"):
        det._vector({"b": None, "a": 1.0})
    with pytest.raises(ValueError, match="non-numeric"):
        det._vector({"b": "red", "a": 1.0})


@pytest.mark.parametrize("estimator", [MASAutoencoder, MASClassifier])
def test_the_estimators_scaling_and_replay_are_their_own_parameters(estimator):
    # behind a pipeline's scaler the learner scales nothing a second time; the memory is the learner's by default
    default = estimator(seed=0)
    default.learn_one({"a": 1.0, "b": 2.0}, *(("x",) if estimator is MASClassifier else ()))
    settings = default.learner_.settings
    assert settings.scale_inputs == "none" and not default.learner_.scaler.enabled
    assert (settings.replay_max_bytes, settings.replay_ratio) == (4 << 20, 1)  # the ratio the river examples chose
    chosen = estimator(scale_inputs="running", replay=50, replay_max_bytes=4096, replay_ratio=3, seed=0)
    assert chosen.clone()._get_params()["replay_max_bytes"] == 4096  # river rebuilds it from its parameters
    chosen.learn_one({"a": 1.0, "b": 2.0}, *(("x",) if estimator is MASClassifier else ()))
    settings = chosen.learner_.settings
    assert (settings.scale_inputs, settings.replay, settings.replay_max_bytes, settings.replay_ratio) == (
        "running", 50, 4096, 3)
    with pytest.raises(ValueError, match="scale_inputs"):
        estimator(scale_inputs="sometimes")


def test_classifier_learns_and_pickles():
    from river import evaluate, metrics

    model = preprocessing.StandardScaler() | MASClassifier(seed=0)
    acc = evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy())
    assert acc.get() > 0.8
    x, _ = next(iter(datasets.Phishing()))
    restored = pickle.loads(pickle.dumps(model))
    assert restored.predict_proba_one(x) == pytest.approx(model.predict_proba_one(x))
    clf = model["MASClassifier"]
    assert set(clf.predict_proba_one(x)) == {True, False}
    assert math.isclose(sum(clf.predict_proba_one(x).values()), 1.0)


def test_bad_inputs_are_explained():
    det = MASAutoencoder()
    with pytest.raises(ValueError, match="non-numeric"):
        det.learn_one({"a": "red"})
    with pytest.raises(ValueError, match="batch_size"):
        MASAutoencoder(batch_size=0)
    clf = MASClassifier(max_classes=2)
    clf.learn_one({"a": 1.0}, "x")
    clf.learn_one({"a": 2.0}, "y")
    with pytest.raises(ValueError, match="max_classes"):
        clf.learn_one({"a": 3.0}, "z")


def test_pipeline_composes():
    """In a pipeline the detector scores the scaler's output, and it learns the stream: the normal rows' scores
    fall as it learns, and a row off their manifold scores above every one of them."""
    model = compose.Pipeline(preprocessing.StandardScaler(), MASAutoencoder(seed=0))
    normal = [x for x, y in _anomaly_stream(1600, seed=2) if not y]
    train, probe = normal[:-100], normal[-100:]  # probe: rows of the same stream it never learned

    def probe_scores() -> np.ndarray:
        return np.array([model.score_one(x) for x in probe])

    assert not probe_scores().any()  # nothing learned yet: every score is 0
    for x in train[:20]:  # two updates of 10
        model.learn_one(x)
    early = probe_scores()
    for x in train[20:]:
        model.learn_one(x)
    late = probe_scores()
    assert model["MASAutoencoder"].learner_.samples_seen >= len(train) - 10  # the last partial batch may wait
    assert late.mean() < 0.5 * early.mean(), (early.mean(), late.mean())
    # f2 = f0 + f1, f3 = f0 - f1 and f4 = f0 / 2 on the manifold: this row breaks all three, within their range
    outlier = {"f0": 2.0, "f1": 2.0, "f2": -4.0, "f3": 4.0, "f4": -1.0}
    assert model.score_one(outlier) > late.max()
    scaled = model["StandardScaler"].transform_one(probe[0])
    assert model.score_one(probe[0]) == model["MASAutoencoder"].score_one(scaled)


@pytest.mark.parametrize("estimator", [MASAutoencoder, MASClassifier])
def test_the_seed_decides_every_draw_whatever_torchs_own_seed(estimator):
    """Two runs of the same estimator and seed, in processes whose torch seeds differ (set here apart), learn the
    same model: the replay memory's draws come from the estimator's seed."""
    rng = np.random.default_rng(0)
    rows = [({"a": float(a), "b": float(b)}, int(a > b)) for a, b in rng.random((120, 2))]
    models = []
    for process_seed in (1, 2):
        torch.manual_seed(process_seed)
        model = estimator(seed=3, batch_size=4)
        for x, y in rows:
            model.learn_one(x, *((y,) if estimator is MASClassifier else ()))
        assert len(model.learner_.replay) > 0
        models.append(model)
    for p, q in zip(models[0].learner_.model.parameters(), models[1].learner_.model.parameters()):
        assert torch.equal(p, q)
