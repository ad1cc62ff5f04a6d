"""The importance of a normalisation layer's affine parameters, in closed form.

Every normalisation layer ends in ``y = x_hat * weight + bias``. When ``x_hat`` depends on the sample alone
(LayerNorm, RMSNorm, GroupNorm, and BatchNorm with its running statistics), sample k's gradients are
``delta_k * x_hat_k`` for the weight and ``delta_k`` for the bias, each summed over the dimensions the
parameter is shared across: recompute ``x_hat`` from the captured input, multiply, reduce. A batch norm that
uses the batch's own statistics mixes the samples and has no such form; its rule declines.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from streammas.learner.importance.conv import channel_sums
from streammas.learner.importance.registry import register_rule


def _affine(layer: nn.Module, normalized: torch.Tensor, delta: torch.Tensor, per_channel: bool) -> dict:
    """Per-sample means for ``y = x_hat * weight + bias``: weight's gradient is ``delta * x_hat``, bias's is
    ``delta``, each summed over the dimensions the parameter is shared across (every one but the channels when
    ``per_channel``, else the leading ones the trailing-shaped parameter is broadcast over).

    >>> layer = nn.LayerNorm(3)
    >>> x_hat, delta = torch.tensor([[1.0, -1.0, 0.0]]), torch.tensor([[2.0, 2.0, 2.0]])
    >>> _affine(layer, x_hat, delta, per_channel=False)["weight"]
    tensor([2., 2., 0.])
    """

    def reduce(t: torch.Tensor) -> torch.Tensor:
        if per_channel:
            return channel_sums(t)
        shared = tuple(range(1, t.dim() - layer.weight.dim()))
        return t.sum(shared) if shared else t

    out = {}
    if layer.weight is not None and layer.weight.requires_grad:
        out["weight"] = reduce(delta * normalized).abs_().mean(0)
    bias = getattr(layer, "bias", None)
    if bias is not None and bias.requires_grad:
        out["bias"] = reduce(delta).abs_().mean(0)
    return out


@register_rule(nn.LayerNorm)
def _layer_norm_rule(layer: nn.LayerNorm, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    normalized = F.layer_norm(a, layer.normalized_shape, None, None, layer.eps)
    return _affine(layer, normalized, delta, per_channel=False)


if hasattr(nn, "RMSNorm"):  # torch >= 2.4

    @register_rule(nn.RMSNorm)
    def _rms_norm_rule(layer: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
        normalized = F.rms_norm(a, layer.normalized_shape, None, layer.eps)
        return _affine(layer, normalized, delta, per_channel=False)


@register_rule(nn.GroupNorm)
def _group_norm_rule(layer: nn.GroupNorm, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    normalized = F.group_norm(a, layer.num_groups, None, None, layer.eps)
    return _affine(layer, normalized, delta, per_channel=True)


@register_rule(nn.modules.batchnorm._BatchNorm)
def _batch_norm_rule(layer: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor] | None:
    if layer.training or layer.running_mean is None or layer.running_var is None:
        return None  # batch statistics: the samples interact and no per-sample closed form exists
    shape = (1, -1) + (1,) * (a.dim() - 2)
    normalized = (a - layer.running_mean.reshape(shape)) * torch.rsqrt(layer.running_var.reshape(shape) + layer.eps)
    return _affine(layer, normalized, delta, per_channel=True)
