"""The importance of a convolution: per-sample weight gradients from the convolution library's own kernel.

Any convolution (1-d, 2-d, 3-d, transposed or not, any stride, padding, dilation, groups or padding mode)
has its weight gradient computed by ``convolution_backward``. Folding the batch into the groups makes the
same kernel return one gradient per sample, at the cost of the ordinary weight gradient, which is what the
exact rule needs; the Hebbian rule is the plain (summed) weight gradient of the absolute activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from streammas.learner.importance.registry import register_hebbian_rule, register_rule

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _conv_weight_grad(layer: nn.Module, a: torch.Tensor, grad_out: torch.Tensor, per_sample: bool) -> torch.Tensor:
    """The weight gradient of a convolution for input ``a`` and output gradient ``grad_out``: summed over the
    batch, or one per sample, ``[B, *weight.shape]``.

    Per sample, the batch becomes groups: the samples stacked as the channels of a single one, convolved with
    ``B * groups`` groups, give each sample's gradient as one group's (what ``torch.func`` does for a
    convolution). The work is that of the ordinary weight gradient, in the convolution library's own kernel.

    >>> torch.manual_seed(0) and None
    >>> conv = nn.Conv1d(2, 3, kernel_size=3, padding=1)
    >>> a, grad_out = torch.randn(4, 2, 5), torch.randn(4, 3, 5)
    >>> per_sample = _conv_weight_grad(conv, a, grad_out, per_sample=True)
    >>> per_sample.shape
    torch.Size([4, 3, 2, 3])
    >>> torch.allclose(per_sample.sum(0), _conv_weight_grad(conv, a, grad_out, per_sample=False), atol=1e-5)
    True
    """
    transposed = isinstance(layer, nn.modules.conv._ConvTransposeNd)
    dims = len(layer.kernel_size)
    padding = layer.padding
    if not transposed and (layer.padding_mode != "zeros" or isinstance(padding, str)):
        # The kernel knows only zero padding given as numbers: pad the input the way the layer's forward does.
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        a = F.pad(a, layer._reversed_padding_repeated_twice, mode=mode)
        padding = (0,) * dims
    weight_shape = tuple(layer.weight.shape)
    groups = layer.groups
    if per_sample:
        batch = a.shape[0]
        a = a.reshape(1, batch * a.shape[1], *a.shape[2:])
        grad_out = grad_out.reshape(1, batch * grad_out.shape[1], *grad_out.shape[2:])
        weight_shape = (batch * weight_shape[0], *weight_shape[1:])
        groups *= batch
    # Only the weight's shape is read: a stand-in with zero strides holds one element.
    stand_in = torch.empty_strided(weight_shape, (0,) * len(weight_shape), dtype=a.dtype, device=a.device)
    output_padding = layer.output_padding if transposed else (0,) * dims
    grad = torch.ops.aten.convolution_backward(
        grad_out, a, stand_in, None, layer.stride, padding, layer.dilation, transposed, output_padding, groups,
        [False, True, False])[1]
    return grad.reshape(-1, *layer.weight.shape) if per_sample else grad


def channel_sums(delta: torch.Tensor) -> torch.Tensor:
    """Per-sample gradient of a per-channel bias (channel dim 1), summed over every other dimension.

    >>> channel_sums(torch.ones(2, 3, 4, 5)).shape
    torch.Size([2, 3])
    """
    return delta.reshape(delta.shape[0], delta.shape[1], -1).sum(-1)


@register_rule(*_CONVS)
def _conv_rule(layer: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if layer.weight.requires_grad:
        out["weight"] = _conv_weight_grad(layer, a, delta, per_sample=True).abs_().mean(0)
    if layer.bias is not None and layer.bias.requires_grad:
        out["bias"] = channel_sums(delta).abs_().mean(0)
    return out


@register_hebbian_rule(*_CONVS)
def _conv_hebbian(layer: nn.Module, a: torch.Tensor, out: torch.Tensor) -> dict[str, torch.Tensor]:
    """``Omega = mean over samples and positions of |a_in| |a_out|`` for each pair of activations a weight
    connects: a linear layer's rule at every position of the sliding window. Summed over samples and positions,
    that is the weight gradient of the convolution for input ``|a|`` and output gradient ``|out|``."""
    transposed = isinstance(layer, nn.modules.conv._ConvTransposeNd)
    positions = (a if transposed else out)[0, 0].numel()  # where the window is applied
    weight = _conv_weight_grad(layer, a.abs(), out.abs(), per_sample=False).div_(a.shape[0] * positions)
    result = {"weight": weight}
    if layer.bias is not None:
        result["bias"] = out.abs().transpose(0, 1).reshape(out.shape[1], -1).mean(1)
    return result
