"""Every per-layer rule gives the exact per-sample importance: the same numbers as a loop over single samples
and as torch.func, in float64 so that a real error cannot hide in float32 noise."""

import pytest
import torch
from torch import nn

from streammas.learner.importance import (
    MODE_FREE,
    RULES,
    SensitivityProbe,
    hebbian_importance,
    is_mode_free,
    output_sensitivity,
    register_mode_free,
)
from streammas.models import ConvAutoencoder, MLPAutoencoder

TOL = 1e-6


def _assert_same(got, expected):
    assert list(got) == list(expected)
    for name in expected:
        assert got[name].shape == expected[name].shape, name
        assert (got[name] - expected[name]).abs().max().item() < TOL, name


def _check(model, x, references=("loop", "vmap"), output=None):
    model = model.double()
    x = x.double() if x.is_floating_point() else x
    fast = output_sensitivity(model, x, method="fast", output=output)
    assert any(v.abs().sum() > 0 for v in fast.values())
    for method in references:
        _assert_same(fast, output_sensitivity(model, x, method=method, output=output))
    return fast


def _image(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


LAYERS = {
    "linear": (lambda: nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3, bias=False)), (7, 5)),
    "linear-sequence": (lambda: nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)), (4, 3, 5)),
    "conv1d": (lambda: nn.Sequential(nn.Conv1d(2, 4, 3, stride=2, padding=1), nn.Tanh(),
                                     nn.Conv1d(4, 2, 2, dilation=2, bias=False)), (5, 2, 11)),
    "conv1d-groups-circular": (lambda: nn.Sequential(nn.Conv1d(4, 6, 3, groups=2, padding=2,
                                                               padding_mode="circular"), nn.Tanh()), (5, 4, 9)),
    "conv1d-same-reflect": (lambda: nn.Sequential(nn.Conv1d(2, 3, 4, padding="same", padding_mode="reflect"),
                                                  nn.Tanh(), nn.Conv1d(3, 2, 3, padding="same")), (4, 2, 10)),
    "conv2d": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3, stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
                                     nn.Tanh(), nn.Conv2d(4, 4, 3, groups=4), nn.Flatten(),
                                     nn.LazyLinear(2)), (5, 3, 9, 8)),
    "conv2d-groups-valid": (lambda: nn.Sequential(nn.Conv2d(4, 6, (2, 3), groups=2, padding="valid",
                                                            bias=False), nn.Tanh()), (5, 4, 7, 6)),
    "conv2d-replicate": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, padding_mode="replicate"),
                                               nn.Tanh()), (4, 2, 6, 6)),
    "conv-transpose1d": (lambda: nn.Sequential(nn.ConvTranspose1d(4, 2, 3, stride=2, padding=1, output_padding=1,
                                                                  groups=2), nn.Tanh()), (5, 4, 6)),
    "conv-transpose2d": (lambda: nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1, output_padding=1),
                                               nn.Tanh(), nn.ConvTranspose2d(4, 2, (2, 3), stride=(1, 2),
                                                                             dilation=2, bias=False)), (5, 3, 5, 4)),
    "conv-transpose2d-groups": (lambda: nn.Sequential(nn.ConvTranspose2d(4, 6, 3, stride=3, padding=2, groups=2,
                                                                         output_padding=2), nn.Tanh()), (4, 4, 4, 5)),
    "conv3d": (lambda: nn.Sequential(nn.Conv3d(2, 4, (2, 3, 3), stride=(1, 2, 1), padding=1, groups=2), nn.Tanh()),
               (3, 2, 4, 6, 5)),
    "conv-transpose3d": (lambda: nn.Sequential(nn.ConvTranspose3d(2, 3, 2, stride=2, padding=1), nn.Tanh()),
                         (3, 2, 3, 4, 3)),
    "layer-norm": (lambda: nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 2)), (7, 6)),
    "layer-norm-2d-sequence": (lambda: nn.Sequential(nn.LayerNorm((3, 4)), nn.Tanh()), (5, 2, 3, 4)),
    "layer-norm-no-bias": (lambda: nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5, bias=False), nn.Tanh()), (6, 4)),
    "rms-norm": (lambda: nn.Sequential(nn.Linear(4, 5), nn.RMSNorm(5), nn.Tanh()), (6, 4)),
    "group-norm": (lambda: nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.Tanh()), (5, 2, 6, 6)),
    "batch-norm1d": (lambda: nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh()), (6, 4)),
    "batch-norm1d-sequence": (lambda: nn.Sequential(nn.BatchNorm1d(3), nn.Tanh()), (6, 3, 5)),
    "batch-norm2d": (lambda: nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Tanh()), (5, 2, 6, 6)),
    "mlp-autoencoder": (lambda: MLPAutoencoder(12, hidden=(8,), latent=3), (6, 12)),
    "conv-autoencoder": (lambda: ConvAutoencoder(2, channels=(3, 4)), (4, 2, 9, 7)),
}


def _with_running_stats(model):
    """Batch norms with non-trivial running statistics, so that eval mode really differs from identity."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("name", list(LAYERS))
def test_rule_matches_loop_and_vmap(name):
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    model = make()
    x = _image(*shape)
    model(x)  # materialise lazy layers
    _check(_with_running_stats(model), x)


def test_rules_cover_the_built_in_models():
    for model in (MLPAutoencoder(8), ConvAutoencoder(1)):
        assert SensitivityProbe(model).covered


@pytest.mark.parametrize("settings", [{}, {"padding_idx": 0}, {"scale_grad_by_freq": True}])
def test_embedding_rule_with_repeated_indices(settings):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(7, 4, **settings), nn.Tanh(), nn.Linear(4, 3))
    x = torch.tensor([[1, 1, 2, 0], [3, 3, 3, 3], [0, 6, 5, 6], [2, 4, 1, 2], [0, 0, 0, 5]])
    imp = _check(model, x)
    if "padding_idx" in settings:
        assert imp["0.weight"][0].abs().sum() == 0


def test_measuring_the_encoder_uses_the_rules():
    torch.manual_seed(0)
    model = ConvAutoencoder(1, channels=(2, 3))
    imp = _check(model, _image(5, 1, 8, 8), references=("loop",), output="encoder")
    assert all(imp[n].abs().sum() == 0 for n in imp if n.startswith("decoder."))


def test_batch_norm_with_batch_statistics_falls_back_to_vmap():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3, track_running_stats=False), nn.Tanh()).double()
    x = _image(4, 2, 6, 6).double()
    with pytest.raises(ValueError, match="fast"):
        output_sensitivity(model, x, method="fast")
    _assert_same(output_sensitivity(model, x), output_sensitivity(model, x, method="loop"))


class Scale(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x):
        return x * self.scale


def test_a_layer_without_rule_takes_torch_func():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), Scale(5), nn.Tanh()).double()
    x = _image(6, 4).double()
    assert Scale not in RULES and not SensitivityProbe(model).covered
    _assert_same(output_sensitivity(model, x), output_sensitivity(model, x, method="loop"))


def test_tied_weights_take_torch_func():
    torch.manual_seed(0)
    layer = nn.Linear(4, 4)
    model = nn.Sequential(layer, nn.Tanh(), layer).double()  # one module run twice
    x = _image(6, 4).double()
    _assert_same(output_sensitivity(model, x), output_sensitivity(model, x, method="loop"))
    second = nn.Linear(4, 4)
    second.weight = layer.weight  # one parameter owned by two modules
    model = nn.Sequential(layer, nn.Tanh(), second).double()
    assert not SensitivityProbe(model).covered
    _assert_same(output_sensitivity(model, x), output_sensitivity(model, x, method="loop"))


def test_in_place_activations_do_not_corrupt_the_captured_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True), nn.Linear(6, 3), nn.ReLU(inplace=True)).double()
    x = _image(8, 4).double()
    _assert_same(output_sensitivity(model, x, method="fast"), output_sensitivity(model, x, method="loop"))


def test_a_shared_training_forward_gives_the_importance_of_its_first_rows():
    """The training step's forward over batch + hard buffer serves the importance of the batch alone."""
    torch.manual_seed(0)
    model = ConvAutoencoder(1, channels=(2, 3)).double()
    x_all = _image(9, 1, 8, 8).double()
    probe = SensitivityProbe(model)
    assert probe.shares_forward()
    with probe.capture():
        out = model(x_all)
    assert probe.ready(9)
    shared = probe.importance(5, retain_graph=True)
    out.pow(2).mean().backward()  # the training backward still works after the importance pass
    _assert_same(shared, output_sensitivity(model, x_all[:5], method="loop"))


@pytest.mark.parametrize("make", [lambda: MLPAutoencoder(6, hidden=(5,), latent=2),
                                  lambda: ConvAutoencoder(1, channels=(2, 3))], ids=["linear", "conv"])
def test_fold_is_the_running_average_update(make):
    torch.manual_seed(0)
    model = make().double()
    x = _image(7, 6).double() if isinstance(model, MLPAutoencoder) else _image(7, 1, 6, 6).double()
    probe = SensitivityProbe(model)
    means = output_sensitivity(model, x, method="loop")
    running = [torch.rand_like(p) for p in model.parameters()]
    expected = [r.lerp(means[n], 0.3) for r, n in zip(running, probe.names)]
    assert probe.measure_into(x, running, lambda: 0.3)
    for name, got, want in zip(probe.names, running, expected):
        assert (got - want).abs().max() < TOL, name


@pytest.fixture
def restore_mode_free():
    """Leave the global registry of mode-free types as the test found it."""
    saved = set(MODE_FREE)
    try:
        yield
    finally:
        MODE_FREE.clear()
        MODE_FREE.update(saved)


def test_mode_dependent_models_do_not_share_the_training_forward(restore_mode_free):
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5))
    assert not is_mode_free(model) and not SensitivityProbe(model).shares_forward()
    model.eval()
    assert SensitivityProbe(model).shares_forward()  # in eval mode the training forward is the eval forward

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Linear(3, 3)

        def forward(self, x):
            return self.layer(x)

    assert not is_mode_free(Custom())
    register_mode_free(Custom)
    assert is_mode_free(Custom()) and Custom in MODE_FREE


def test_hebbian_conv_is_the_mean_product_over_window_positions():
    torch.manual_seed(0)
    conv = nn.Conv1d(2, 3, 2, stride=2, bias=True)
    x = _image(4, 2, 6)
    imp = hebbian_importance(nn.Sequential(conv), x)
    out = conv(x).detach()  # [4, 3, 3]: output position p sees inputs 2p, 2p + 1
    expected = torch.zeros(3, 2, 2)
    for k in range(4):
        for p in range(3):
            for j in range(2):
                expected[:, :, j] += out[k, :, p].abs()[:, None] * x[k, :, 2 * p + j].abs()[None, :]
    assert torch.allclose(imp["0.weight"], expected / 12, atol=1e-6)
    assert torch.allclose(imp["0.bias"], out.abs().mean((0, 2)), atol=1e-6)


def test_hebbian_conv_transpose_pairs_each_input_with_the_outputs_it_reaches():
    torch.manual_seed(0)
    deconv = nn.ConvTranspose1d(2, 3, 2, stride=2)
    x = _image(4, 2, 3)
    imp = hebbian_importance(nn.Sequential(deconv), x)
    out = deconv(x).detach()  # [4, 3, 6]: input position p reaches outputs 2p, 2p + 1
    expected = torch.zeros(2, 3, 2)
    for k in range(4):
        for p in range(3):
            for j in range(2):
                expected[:, :, j] += x[k, :, p].abs()[:, None] * out[k, :, 2 * p + j].abs()[None, :]
    assert torch.allclose(imp["0.weight"], expected / 12, atol=1e-6)
    assert torch.allclose(imp["0.bias"], out.abs().mean((0, 2)), atol=1e-6)


def test_hebbian_covers_the_conv_autoencoder():
    imp = hebbian_importance(ConvAutoencoder(1, channels=(2, 3)), torch.rand(3, 1, 8, 8))
    assert all(v.min() >= 0 and v.sum() > 0 for v in imp.values())


@pytest.mark.parametrize("share", [True, False], ids=["shared-forward", "separate-forward"])
@pytest.mark.parametrize("make", [lambda: MLPAutoencoder(12, hidden=(8,), latent=3),
                                  lambda: ConvAutoencoder(1, channels=(2, 3))], ids=["mlp", "conv"])
def test_the_learners_running_importance_is_the_exact_running_mean(make, share):
    """With lr = 0 the weights stay put, so the learner's fused, buffer-mixed, shared-forward measurement must
    equal the definition: the sample-weighted mean of the loop's per-sample importance over every batch."""
    from streammas import OnlineMAS

    torch.manual_seed(0)
    model = make().double()
    # the raw input, and a regulariser so that the importance is measured
    learner = OnlineMAS(model, lr=0.0, hard_buffer=4, importance_every=1, scale_inputs="none", reg_lambda=0.15)
    learner.meter.share_forward = share
    shape = (12,) if isinstance(model, MLPAutoencoder) else (1, 6, 6)
    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(n, *shape, generator=g, dtype=torch.float64) for n in (5, 3, 7, 4)]
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    for x in batches:
        learner.learn_many(x)
        for n, v in output_sensitivity(model, x, method="loop").items():
            total[n] += v * x.shape[0]
    count = sum(x.shape[0] for x in batches)
    _assert_same(learner.running_importance, {n: t / count for n, t in total.items()})
