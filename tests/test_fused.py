"""The hand-derived step (streammas.learner.fused) against autograd: same updates, same importance, same skipped steps,
and the autograd step wherever the hand-derived one does not apply."""

import copy

import pytest
import torch
from torch import nn

from streammas import OnlineMAS
from streammas.learner.fused import FusedChain
from streammas.learner.importance import output_sensitivity
from streammas.learner.objectives import reconstruction
from streammas.learner.update import FusedUpdate
from streammas.models import ConvAutoencoder, MLPAutoencoder

#: The settings these comparisons were written against (the learner's defaults before Adam, input scaling and
#: replay): plain SGD, which the hand-derived step takes itself, on the raw input, nothing replayed.
CLASSIC = dict(optimizer="sgd", lr=0.05, reg_lambda=0.15, scale_inputs="none", replay=0)


def _chains():
    return {
        "mlp-autoencoder": lambda: MLPAutoencoder(12, hidden=(24,), latent=4),
        "tanh-sigmoid": lambda: nn.Sequential(nn.Linear(12, 16), nn.Tanh(), nn.Sequential(nn.Linear(16, 6),
                                              nn.Sigmoid()), nn.Linear(6, 12, bias=False)),
        "leaky-identity": lambda: nn.Sequential(nn.Linear(12, 10), nn.LeakyReLU(0.1), nn.Identity(),
                                                nn.Linear(10, 12)),
    }


def _pair(make, **settings):
    torch.manual_seed(0)
    model = make()
    fused = OnlineMAS(copy.deepcopy(model), fused_step=True, **CLASSIC, **settings)
    reference = OnlineMAS(copy.deepcopy(model), fused_step=False, **CLASSIC, **settings)
    assert isinstance(fused.update, FusedUpdate) and not isinstance(reference.update, FusedUpdate)
    return fused, reference


def _close(a, b, tol=2e-5):
    return all(torch.allclose(p, q, rtol=tol, atol=tol) for p, q in zip(a, b))


@pytest.mark.parametrize("settings", [
    {"importance_every": 1, "prox_every": 1},
    {"hard_buffer": 6},
    {"steps_per_batch": 2, "importance_every": 3},
    {},
], ids=["every-batch", "buffer", "two-steps", "defaults"])
@pytest.mark.parametrize("name", list(_chains()))
def test_it_follows_the_autograd_step(name, settings):
    fused, reference = _pair(_chains()[name], **settings)
    data = torch.rand(400, 12, generator=torch.Generator().manual_seed(1))
    for i in range(150):
        x = data[(i * 8) % 400:][:8]
        assert torch.allclose(fused.learn_many(x), reference.learn_many(x), rtol=1e-5, atol=1e-6)
        if i == 60:  # the regulariser (the proximal step) runs from here on
            fused.consolidate()
            reference.consolidate()
    assert fused.synapses.running_count == reference.synapses.running_count > 0
    assert _close(fused.model.parameters(), reference.model.parameters())
    assert _close(fused.synapses.running, reference.synapses.running)
    assert _close(fused.synapses.omega, reference.synapses.omega)
    moved = [not torch.equal(p, q) for p, q in zip(fused.model.parameters(), fused.synapses.anchor)]
    assert any(moved)  # it did learn after the consolidation


@pytest.mark.parametrize("name", list(_chains()))
def test_its_importance_is_the_exact_per_sample_importance(name):
    torch.manual_seed(3)
    model = _chains()[name]()
    step = FusedChain.build(model, reconstruction, torch.optim.SGD(model.parameters(), lr=0.1))
    x = torch.randn(7, 12)
    expected = output_sensitivity(model, x, method="loop")  # measured before the step's update
    running = [torch.full_like(p, 5.0) for p in step.parameters()]
    result = step.step(torch.cat([x, torch.rand(3, 12)]), 7, (running, lambda: 1.0))  # 3 more rows: a buffer
    assert result.measured
    names = {id(p): n for n, p in model.named_parameters()}
    for p, got in zip(step.parameters(), running):
        assert torch.allclose(got, expected[names[id(p)]], atol=1e-6), names[id(p)]


def test_a_non_finite_loss_leaves_the_model_and_the_importance_as_they_were():
    torch.manual_seed(4)
    learner = OnlineMAS(MLPAutoencoder(12, hidden=(24,), latent=4), importance_every=1, sync_every=1, **CLASSIC)
    data = torch.rand(64, 12)
    for i in range(20):
        learner.learn_many(data[i:i + 4])
    learner.consolidate()
    learner.learn_many(data[:4])
    before = copy.deepcopy(learner.model.state_dict())
    huge = data[:4] * 1e30  # finite samples whose squared error overflows
    scores = learner.learn_many(huge)
    assert not torch.isfinite(scores).all()
    for name, value in learner.model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(torch.isfinite(r).all() for r in learner.synapses.running)
    assert learner.counters["skipped_updates"] == 1
    learner.learn_many(data[:4])  # and it goes on learning
    assert any(not torch.equal(v, before[n]) for n, v in learner.model.state_dict().items())


class _Scaled(nn.Linear):
    def forward(self, x):
        return 2.0 * super().forward(x)


@pytest.mark.parametrize("case", ["conv", "amsgrad", "momentum", "custom-objective", "frozen", "unknown-module",
                                  "module-run-twice", "linear-subclass"])
def test_it_applies_only_where_it_computes_the_same_thing(case):
    model = MLPAutoencoder(12, hidden=(24,), latent=4)
    settings = {}
    if case == "conv":
        model = ConvAutoencoder(1, channels=(4, 8))
    elif case == "amsgrad":  # plain Adam takes the hand-derived gradients (below); AMSGrad keeps autograd
        settings["optimizer"] = lambda params: torch.optim.Adam(params, amsgrad=True)
    elif case == "momentum":
        settings["optimizer"] = lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)
    elif case == "custom-objective":
        settings["objective"] = lambda out, x, y: (out - x).abs().mean(dim=1)
    elif case == "frozen":
        model.encoder[0].bias.requires_grad_(False)
    elif case == "unknown-module":
        model = nn.Sequential(nn.Linear(12, 8), nn.GELU(), nn.Linear(8, 12))
    elif case == "module-run-twice":
        layer = nn.Linear(12, 12)
        model = nn.Sequential(layer, nn.Tanh(), layer)
    elif case == "linear-subclass":
        model = nn.Sequential(nn.Linear(12, 8), nn.ReLU(), _Scaled(8, 12))
    assert not isinstance(OnlineMAS(model, **settings).update, FusedUpdate)


def test_a_hook_on_the_model_sends_the_step_through_autograd():
    torch.manual_seed(5)
    learner = OnlineMAS(MLPAutoencoder(12, hidden=(24,), latent=4))
    assert isinstance(learner.update, FusedUpdate)
    seen = []
    handle = learner.model.encoder[0].register_forward_hook(lambda m, i, o: seen.append(o.shape[0]))
    learner.learn_many(torch.rand(5, 12))
    assert seen == [5]  # the model's own forward ran, with its hook
    handle.remove()
    learner.learn_many(torch.rand(5, 12))
    assert seen == [5]


def test_a_bare_sequential_takes_only_flat_batches():
    model = nn.Sequential(nn.Linear(4, 4))
    step = FusedChain.build(model, reconstruction, torch.optim.SGD(model.parameters(), lr=0.1))
    assert step.applicable(torch.rand(3, 4))
    assert not step.applicable(torch.rand(3, 2, 4))  # nn.Linear would act on the last dimension only


def test_a_global_module_hook_sends_the_step_through_autograd():
    learner = OnlineMAS(MLPAutoencoder(12, hidden=(24,), latent=4))
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: seen.append(type(m).__name__))
    try:
        learner.learn_many(torch.rand(5, 12))
    finally:
        handle.remove()
    assert "Linear" in seen


@pytest.mark.parametrize("settings", [{}, {"reg_lambda": 1.0, "importance_every": 1, "prox_every": 1}])
def test_adam_takes_the_hand_derived_gradients_with_autograds_numbers(settings):
    torch.manual_seed(0)
    base = MLPAutoencoder(20, hidden=(16,), latent=4)
    x = torch.rand(400, 20)
    fused = OnlineMAS(copy.deepcopy(base), optimizer="adam", lr=1e-2, **settings)
    reference = OnlineMAS(copy.deepcopy(base), optimizer="adam", lr=1e-2, fused_step=False, **settings)
    assert isinstance(fused.update, FusedUpdate) and fused.update.chain.writes_grads
    for i in range(200):
        xb = x[(i * 10) % 400:][:10]
        torch.testing.assert_close(fused.learn_many(xb), reference.learn_many(xb), atol=1e-6, rtol=1e-5)
        if i == 100:
            fused.consolidate()
            reference.consolidate()
    for p, q in zip(fused.model.parameters(), reference.model.parameters()):
        torch.testing.assert_close(p.detach(), q.detach(), atol=1e-6, rtol=1e-5)
    for a, b in zip(fused.synapses.running, reference.synapses.running):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_adam_skips_a_non_finite_step_on_the_hand_derived_path():
    torch.manual_seed(0)
    learner = OnlineMAS(MLPAutoencoder(8, hidden=(8,), latent=2), optimizer="adam", lr=1e-2, recover_after=0,
                        scale_inputs="none", replay=0)
    learner.learn_many(torch.rand(10, 8))
    before = [p.detach().clone() for p in learner.model.parameters()]
    moments = [s["exp_avg"].clone() for s in learner.optimizer.state.values()]
    learner.learn_many(torch.full((10, 8), 1e30))  # finite input whose squared error overflows
    learner.flush()
    assert learner.counters["skipped_updates"] == 1
    assert all(torch.equal(p.detach(), b) for p, b in zip(learner.model.parameters(), before))
    assert all(torch.equal(s["exp_avg"], m) for s, m in zip(learner.optimizer.state.values(), moments))
