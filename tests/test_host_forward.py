"""Scoring one sample in NumPy (the chain's host forward) gives what torch gives, on live weights."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

from streammas import OnlineMAS
from streammas.models import MLPAutoencoder

ACTIVATIONS = [nn.ReLU(), nn.LeakyReLU(0.1), nn.Tanh(), nn.Sigmoid(), nn.Identity()]


def _trained(model: nn.Module, steps: int = 30, **settings) -> tuple[OnlineMAS, torch.Tensor]:
    torch.manual_seed(0)
    learner = OnlineMAS(model, **settings)
    x = torch.randn(steps * 10 + 20, model[0].in_features if isinstance(model, nn.Sequential) else 12) * 3 + 1
    for start in range(0, steps * 10, 10):
        learner.learn_many(x[start:start + 10])
    return learner, x[-20:]


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("scale_inputs", ["running", "none"])
def test_one_sample_scores_as_the_batch_does(activation, scale_inputs):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 24), activation, nn.Linear(24, 5), activation, nn.Linear(5, 12))
    learner, held = _trained(model, scale_inputs=scale_inputs, optimizer="sgd", lr=0.01)
    assert learner.update.host is not None  # the host path is the one tested
    batch = learner.score_many(held)
    one = torch.tensor([learner.score_one(row) for row in held])
    torch.testing.assert_close(one, batch, rtol=1e-5, atol=1e-6)


def test_the_host_forward_sees_every_update_and_a_replaced_weight():
    learner, held = _trained(MLPAutoencoder(in_features=12, hidden=(16,), latent=4))
    before = learner.score_one(held[0])
    learner.learn_many(held[:10] * 5)  # Adam updates the weights in place
    after = learner.score_one(held[0])
    assert after != before
    assert math.isclose(after, float(learner.score_many(held[:1])[0]), rel_tol=1e-5)
    # a state loaded by assignment gives the parameters new storage: the host forward follows it
    fresh = {k: torch.zeros_like(v) for k, v in learner.model.state_dict().items()}
    learner.model.load_state_dict(fresh, assign=True)
    assert math.isclose(learner.score_one(held[0]), float(learner.score_many(held[:1])[0]), rel_tol=1e-6)


def test_a_hook_on_the_model_is_honoured_by_scoring_one_sample():
    learner, held = _trained(MLPAutoencoder(in_features=12, hidden=(16,), latent=4))
    calls = []
    learner.model.decoder.register_forward_hook(lambda *_: calls.append(1))
    learner.score_one(held[0])
    assert calls == [1]  # torch scored it, hooks and all


def test_a_bad_sample_is_refused_or_skipped_as_in_a_batch():
    learner, held = _trained(MLPAutoencoder(in_features=12, hidden=(16,), latent=4))
    bad = held[0].clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        learner.score_one(bad)
    skipping, _ = _trained(MLPAutoencoder(in_features=12, hidden=(16,), latent=4), on_bad_input="skip")
    assert math.isnan(skipping.score_one(bad)) and skipping.guard.rejected == 1  # counted once
    with pytest.raises(ValueError, match="shape"):
        learner.score_one(torch.zeros(7))


def test_an_activation_without_a_numpy_rule_is_scored_by_torch():
    model = nn.Sequential(nn.Linear(12, 8), nn.GELU(), nn.Linear(8, 12))
    learner, held = _trained(model)
    assert getattr(learner.update, "host", None) is None
    assert math.isclose(learner.score_one(held[0]), float(learner.score_many(held[:1])[0]), rel_tol=1e-6)


def test_a_saturated_sigmoid_scores_without_a_warning():
    model = nn.Sequential(nn.Linear(12, 8), nn.Sigmoid(), nn.Linear(8, 12))
    learner, held = _trained(model, optimizer="sgd", lr=0.01)
    with torch.no_grad():
        model[0].weight.mul_(1000.0)  # pre-activations far below -88: exp(-a) overflows in float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = learner.score_one(held[0])
    assert math.isclose(one, float(learner.score_many(held[:1])[0]), rel_tol=1e-5)


def test_a_model_torch_scores_checks_a_bad_row_once():
    model = nn.Sequential(nn.Linear(12, 8), nn.GELU(), nn.Linear(8, 12))
    learner, held = _trained(model, on_bad_input="skip")
    bad = held[0].clone()
    bad[0] = float("inf")
    assert math.isnan(learner.score_one(bad)) and learner.guard.rejected == 1


def test_a_float32_row_is_scaled_and_scored_in_numpy_with_the_torch_scalings_numbers():
    learner, held = _trained(MLPAutoencoder(in_features=12, hidden=(16,), latent=4))
    rows = held.clone()
    rows[0, 2] = 1e4  # standardised far beyond the clip
    for row in [*rows, *rows.numpy()]:
        assert learner.guard.host_row(row) is not None  # the NumPy path is the one taken
        z = learner.scaler.transform(torch.as_tensor(row)[None])
        assert learner.score_one(row) == learner.update.score_row(z)  # scaled in torch: the same bits
    assert learner.guard.host_row(held[0].double()) is None  # converted by the general path
    assert math.isclose(learner.score_one(held[0].double()), learner.score_one(held[0]), rel_tol=1e-6)
