"""output_sensitivity is exact per sample: every method agrees with a Python loop over single samples."""

import pytest
import torch
from torch import nn

from streammas.learner.importance import hebbian_importance, output_sensitivity
from streammas.models import ConvAutoencoder, MLPAutoencoder


def _loop_reference(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The definition, written out: mean over samples of |d ||F(x_k)||^2 / d theta| in eval mode."""
    model.eval()
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for k in range(x.shape[0]):
        model.zero_grad()
        model(x[k : k + 1]).pow(2).sum().backward()
        for n, p in params.items():
            total[n] += p.grad.abs()
    return {n: t / x.shape[0] for n, t in total.items()}


def _small_conv_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2), nn.Flatten(),
                         nn.Linear(2 * 3 * 3, 3))


@pytest.mark.parametrize("method", ["auto", "vmap", "loop"])
@pytest.mark.parametrize("make", [lambda: MLPAutoencoder(12, hidden=(16,), latent=4), _small_conv_net,
                                  lambda: ConvAutoencoder(1, channels=(3, 4))], ids=["mlp", "conv", "conv-ae"])
def test_matches_a_loop_over_single_samples(make, method):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(9, 12) if isinstance(model, MLPAutoencoder) else torch.randn(9, 1, 8, 8)
    expected = _loop_reference(model, x)
    got = output_sensitivity(model, x, method=method)
    assert set(got) == set(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape
        assert (got[name] - expected[name]).abs().max().item() < 1e-6, name


def test_per_sample_absolute_value_is_not_the_batch_gradient():
    torch.manual_seed(1)
    model = MLPAutoencoder(12, hidden=(16,), latent=4)
    x = torch.randn(32, 12)
    exact = output_sensitivity(model, x)
    batch_abs = output_sensitivity(model, x, method="approx")
    for name in exact:
        # mean_k |g_k| >= |mean_k g_k| (triangle inequality), and strictly larger where signs disagree
        assert torch.all(exact[name] >= batch_abs[name] - 1e-7)
    gap = sum((exact[n] - batch_abs[n]).sum().item() for n in exact)
    assert gap > 0.05 * sum(exact[n].sum().item() for n in exact)


def test_measuring_a_submodule_leaves_the_rest_unimportant():
    torch.manual_seed(2)
    model = MLPAutoencoder(12, hidden=(16,), latent=4)
    x = torch.randn(8, 12)
    imp = output_sensitivity(model, x, output="encoder")
    reference = _loop_reference(model.encoder, x)
    for name, value in imp.items():
        if name.startswith("decoder."):
            assert torch.count_nonzero(value) == 0
        else:
            assert (value - reference[name.removeprefix("encoder.")]).abs().max() < 1e-6


def test_model_mode_is_restored():
    model = MLPAutoencoder(4, hidden=(8,), latent=2).train()
    output_sensitivity(model, torch.randn(3, 4))
    assert all(m.training for m in model.modules())


def test_hebbian_is_the_mean_product_of_connected_activations():
    torch.manual_seed(3)
    layer = nn.Linear(5, 3)
    model = nn.Sequential(layer)
    x = torch.randn(7, 5)
    imp = hebbian_importance(model, x)
    out = layer(x).detach()
    expected = torch.stack([(out[k].abs()[:, None] * x[k].abs()[None, :]) for k in range(7)]).mean(0)
    assert torch.allclose(imp["0.weight"], expected, atol=1e-6)
    assert torch.allclose(imp["0.bias"], out.abs().mean(0), atol=1e-6)
