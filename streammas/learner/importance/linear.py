"""The importance of a linear layer: ``|Delta|^T |A| / B``, the price of one ordinary weight gradient.

Sample k's weight gradient is the outer product ``delta_k a_k^T`` of the output gradient and the input, and
``|u v^T| = |u| |v|^T`` elementwise, so the mean over samples of its absolute value is one matrix product of
the absolute values. :func:`linear_importance` and :func:`fold_linear_importance` are the single place that
formula is written: the rule registered here and the hand-derived chain step (:mod:`streammas.learner.fused`) both
call them.
"""

from __future__ import annotations

import torch
from torch import nn

from streammas.learner.importance.registry import ACCUMULATORS, lerp_into, register_hebbian_rule, register_rule


def linear_importance(delta: torch.Tensor, a: torch.Tensor, bias: bool) -> dict[str, torch.Tensor]:
    """Mean over the samples (rows) of ``|d ||F||^2 / d theta|`` of a linear layer: ``|Delta|^T |A| / B`` for
    the weight and ``mean_k |delta_k|`` for the bias (when ``bias``), from the output gradient ``delta``
    ``[B, out]`` and the input ``a`` ``[B, in]``.

    >>> delta, a = torch.tensor([[1.0, -2.0], [3.0, 0.0]]), torch.tensor([[-1.0, 1.0, 2.0], [1.0, 0.0, 1.0]])
    >>> means = linear_importance(delta, a, bias=True)
    >>> means["weight"]
    tensor([[2.0000, 0.5000, 2.5000],
            [1.0000, 1.0000, 2.0000]])
    >>> means["bias"]
    tensor([2., 1.])
    """
    d_abs = delta.abs()
    # The 1/B goes on the small factor, not on the [out, in] product.
    out = {"weight": d_abs.t().mul(1.0 / a.shape[0]).mm(a.abs())}
    if bias:
        out["bias"] = d_abs.mean(0)
    return out


def fold_linear_importance(delta: torch.Tensor, a: torch.Tensor, targets: dict[str, torch.Tensor],
                           weight: float) -> None:
    """:func:`linear_importance` folded into running means in place, ``target += (mean - target) * weight``,
    without materialising the mean. ``targets`` holds ``"weight"`` and, if the layer has one, ``"bias"``.

    >>> delta, a = torch.tensor([[1.0, -2.0], [3.0, 0.0]]), torch.tensor([[-1.0, 1.0, 2.0], [1.0, 0.0, 1.0]])
    >>> targets = {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}
    >>> fold_linear_importance(delta, a, targets, weight=0.5)
    >>> torch.equal(targets["weight"], linear_importance(delta, a, bias=False)["weight"] * 0.5)
    True
    """
    d_abs = delta.abs()
    # target <- (1 - w) target + (w / B) |Delta|^T |A|: the rule and the running average in one BLAS call.
    targets["weight"].addmm_(d_abs.t(), a.abs(), beta=1.0 - weight, alpha=weight / a.shape[0])
    if "bias" in targets:
        targets["bias"].lerp_(d_abs.mean(0), weight)


@register_rule(nn.Linear)
def _linear_rule(layer: nn.Linear, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    if a.dim() == 2:
        return linear_importance(delta, a, layer.bias is not None)
    # A sequence dimension sums several outer products per sample, and the absolute value of a sum does not
    # factor: materialise each sample's gradient.
    batch = a.shape[0]
    a3, d3 = a.reshape(batch, -1, a.shape[-1]), delta.reshape(batch, -1, delta.shape[-1])
    out = {"weight": torch.einsum("bto,bti->boi", d3, a3).abs_().mean(0)}
    if layer.bias is not None:
        out["bias"] = d3.sum(1).abs_().mean(0)
    return out


def _linear_accumulate(layer: nn.Linear, a: torch.Tensor, delta: torch.Tensor, targets: dict[str, torch.Tensor],
                       weight: float) -> None:
    if a.dim() != 2:
        lerp_into(targets, _linear_rule(layer, a, delta), weight)
        return
    fold_linear_importance(delta, a, targets, weight)


ACCUMULATORS[_linear_rule] = _linear_accumulate


@register_hebbian_rule(nn.Linear)
def _linear_hebbian(layer: nn.Linear, a: torch.Tensor, out: torch.Tensor) -> dict[str, torch.Tensor]:
    """``Omega_ij = mean_k |out_i a_j|``: every position of a sequence counts as a sample."""
    a2, o2 = a.reshape(-1, a.shape[-1]), out.reshape(-1, out.shape[-1])
    result = {"weight": o2.abs().t().mm(a2.abs()).div_(a2.shape[0])}
    if layer.bias is not None:
        result["bias"] = o2.abs().mean(0)
    return result
