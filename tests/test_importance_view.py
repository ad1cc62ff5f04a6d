"""What the importance shown to an operator is: measured by default, and "not measured" or "not consolidated yet"
told apart from "nothing is important" in inspect, its plot's status and /metrics."""

from __future__ import annotations

import torch

from streammas import OnlineMAS
from streammas.models import MLPAutoencoder
from streammas.service.checkpoint import CheckpointStore
from streammas.service.metrics import ServiceMetrics, Snapshot
from streammas.service.telemetry import importance_summary
from streammas.tools.inspect import render, summarize


def _learner(**settings) -> OnlineMAS:
    torch.manual_seed(0)
    return OnlineMAS(MLPAutoencoder(in_features=8, hidden=(16,), latent=4), **settings)


def _saved(learner: OnlineMAS, path) -> dict:
    CheckpointStore(path).save(learner.state_dict(), {"model": {"kind": "mlp-autoencoder"}})
    return summarize(path)


def test_the_defaults_measure_the_importance_without_the_regulariser():
    learner = _learner()
    assert learner.reg_lambda == 0
    for _ in range(40):
        learner.learn_many(torch.rand(10, 8))
    # every importance_every-th batch (16): batches 0, 16 and 32
    assert learner.synapses.running_count == 30
    assert all(bool((t > 0).any()) for t in learner.synapses.running)


def test_inspect_tells_not_measured_from_not_consolidated_from_measured(tmp_path):
    none = _learner(importance_source="buffer", hard_buffer=8)
    none.learn_many(torch.rand(10, 8))
    summary = _saved(none, tmp_path / "none")
    assert summary["importance"] == {} and summary["importance_status"].startswith("not measured")
    assert "not measured" in render(summary)

    running = _learner()
    running.learn_many(torch.rand(10, 8))
    summary = _saved(running, tmp_path / "running")
    assert summary["importance"] == {}
    assert summary["importance_status"] == "measured on 10 samples, not consolidated yet (no plateau so far)"
    # and what the memory is: the default, 4 MiB of float32 samples of 8 features, 2 replayed per new one
    assert summary["memory"] == "a reservoir of 10 samples of the 10 seen (room for 131,072; 4.0 MiB of float32)"
    assert running.replay.describe() == summary["memory"] + ", 2 replayed per new sample"
    assert "replay memory  a reservoir of 10 samples" in render(summary)

    running.consolidate()
    summary = _saved(running, tmp_path / "consolidated")
    assert summary["importance_status"].startswith("consolidated over 1 regimes")
    weight = summary["importance"]["encoder.0.weight"]
    assert weight["shape"] == [16, 8] and weight["max"] > 0
    assert "encoder.0.weight" in render(summary)


def test_metrics_show_omega_only_once_consolidated_and_always_what_was_measured():
    learner = _learner()
    learner.learn_many(torch.rand(10, 8))
    assert importance_summary(learner) == {}  # zeros, not a measurement
    metrics = ServiceMetrics()
    metrics.publish(Snapshot(samples=10, batches=1, importance=importance_summary(learner),
                             importance_samples=learner.synapses.running_count))
    text = metrics.render()
    assert "streammas_importance_samples 10.0" in text and "streammas_importance{" not in text

    learner.consolidate()
    metrics.publish(Snapshot(samples=10, batches=1, consolidations=1, importance=importance_summary(learner),
                             importance_samples=learner.synapses.running_count))
    text = metrics.render()
    assert 'streammas_importance{param="encoder.0.weight",stat="max"}' in text
    assert "streammas_importance_samples 0.0" in text  # the running importance restarts after a consolidation
