"""The regulariser: right gradient, exact proximal step, and stable for any lambda."""

import math

import pytest
import torch

from streammas import OnlineMAS
from streammas.learner.synapses import Synapses
from streammas.models import MLPAutoencoder

#: Plain SGD's proximal step on the raw input, nothing replayed: what the learner's defaults were when these
#: tests were written (the Adam-preconditioned step: tests/test_scaling_replay.py).
SGD_RAW = dict(optimizer="sgd", scale_inputs="none", replay=0)


def _consolidated(seed: int = 0) -> tuple[list[torch.nn.Parameter], Synapses]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(4, 3, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]
    syn = Synapses([("a", params[0]), ("b", params[1])], normalization="none")
    syn.accumulate([torch.rand(4, 3, generator=g), torch.rand(5, generator=g)], batch_size=8)
    syn.consolidate()
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g))
    return params, syn


def test_penalty_gradient_matches_autograd():
    params, syn = _consolidated()
    lam = 3.7
    syn.penalty(lam).backward()
    for p, expected in zip(params, syn.penalty_grad(lam)):
        torch.testing.assert_close(p.grad, expected)


def test_proximal_step_is_the_closed_form_minimiser():
    params, syn = _consolidated(1)
    lam, lr = 2.5, 0.3
    v = [p.detach().clone() for p in params]
    syn.proximal_step(lam, lr)
    # At the minimiser of ||theta - v||^2 / (2 lr) + penalty(theta) the gradient vanishes.
    theta = [p.detach().clone().requires_grad_() for p in params]
    objective = sum(((t - vi) ** 2).sum() for t, vi in zip(theta, v)) / (2 * lr)
    objective = objective + lam * sum((o * (t - a) ** 2).sum() for o, t, a in zip(syn.omega, theta, syn.anchor))
    for g in torch.autograd.grad(objective, theta):
        assert g.abs().max().item() < 1e-5
    # and it is the formula of docs/algorithm.md
    for p, vi, o, a in zip(params, v, syn.omega, syn.anchor):
        c = 2 * lr * lam * o
        torch.testing.assert_close(p.detach(), (vi + c * a) / (1 + c))


def test_consolidation_modes():
    p = torch.nn.Parameter(torch.zeros(2))
    regimes = [torch.tensor([1.0, 0.0]), torch.tensor([0.0, 3.0]), torch.tensor([2.0, 0.0])]
    expected = {"mean": [1.0, 1.0], "sum": [3.0, 3.0], "ema": [1.25, 0.75]}
    for mode, want in expected.items():
        syn = Synapses([("p", p)], consolidation=mode, normalization="none", ema_alpha=0.5)
        for r in regimes:
            syn.accumulate([r], batch_size=1)
            syn.consolidate()
        assert syn.omega[0].tolist() == pytest.approx(want), mode


def test_running_average_weights_every_sample_equally():
    p = torch.nn.Parameter(torch.zeros(1))
    syn = Synapses([("p", p)], normalization="none")
    syn.accumulate([torch.tensor([1.0])], batch_size=1)
    syn.accumulate([torch.tensor([4.0])], batch_size=3)
    assert syn.running[0].item() == pytest.approx((1 * 1 + 4 * 3) / 4)


@pytest.mark.parametrize("normalization", ["mean", "max"])
def test_normalisation(normalization):
    p = torch.nn.Parameter(torch.zeros(4))
    syn = Synapses([("p", p)], normalization=normalization)
    syn.accumulate([torch.tensor([1.0, 2.0, 3.0, 6.0])], batch_size=1)
    syn.consolidate()
    reduce = torch.mean if normalization == "mean" else torch.max
    assert reduce(syn.omega[0]).item() == pytest.approx(1.0)


@pytest.mark.parametrize("reg_lambda", [1.0, 100.0, 1e4])
def test_large_lambda_never_diverges(reg_lambda):
    torch.manual_seed(0)
    learner = OnlineMAS(MLPAutoencoder(16, hidden=(16,), latent=4), lr=0.1, reg_lambda=reg_lambda,
                        omega_normalization="none", sync_every=1, **SGD_RAW)
    a = torch.rand(64, 16)
    b = a[:, torch.randperm(16)]
    start = learner.score_many(a).mean().item()
    for i in range(300):
        learner.learn_many(a[(i * 8) % 64:][:8])
        if i == 100:
            learner.consolidate()
    for i in range(300):
        losses = learner.learn_many(b[(i * 8) % 64:][:8])
    assert learner.consolidations >= 1
    assert all(torch.isfinite(p).all() for p in learner.model.parameters())
    assert math.isfinite(losses.mean().item())
    # no collapse: regime A is remembered at least as well as before any learning
    assert learner.score_many(a).mean().item() < start
