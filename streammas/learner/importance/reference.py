"""The reference implementations of output sensitivity, which the per-layer rules are checked against.

``"vmap"`` takes ``torch.func`` per-sample gradients and works for any model made of pure functions (the
fallback when a layer has no rule); ``"loop"`` runs one backward pass per sample, the slow and obvious
definition; ``"approx"`` is not exact: it takes ``|mean_k d/d theta|`` from one backward pass, which is smaller
than the mean of absolute values whenever the samples' gradients disagree in sign.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from streammas.learner.importance.probe import _squared_norm, _trainable, measured_output
from streammas.learner.importance.registry import Importance


def _vmap(model: nn.Module, x: torch.Tensor, output: str | None, chunk_size: int | None) -> Importance:
    """Exact: every sample's gradient from ``vmap(grad(...))``, ``chunk_size`` samples at a time."""
    params = {n: p.detach() for n, p in _trainable(model).items()}
    buffers = dict(model.named_buffers())

    def sample_norm(p: dict[str, torch.Tensor], xk: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xk.unsqueeze(0),))
        return _squared_norm(out if output is None else _captured(model, p, buffers, xk, output))

    # functional_call leaves its stand-ins behind in a module that appears twice in the model (torch 2.13):
    # put every original parameter back afterwards.
    originals = [(m, local, p) for m in model.modules() for local, p in m._parameters.items()]
    try:
        per_sample = vmap(grad(sample_norm), in_dims=(None, 0), chunk_size=chunk_size)(params, x)
    finally:
        for m, local, p in originals:
            m._parameters[local] = p
    return {n: g.abs().mean(0) for n, g in per_sample.items()}


def _captured(model, params, buffers, xk, output):
    """The output of submodule ``output`` in a functional call of the model on one sample."""
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(output).register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        functional_call(model, (params, buffers), (xk.unsqueeze(0),))
    finally:
        handle.remove()
    return captured[-1]


def _loop(model: nn.Module, x: torch.Tensor, output: str | None) -> Importance:
    """Exact, by definition: one forward and one backward pass per sample."""
    params = _trainable(model)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for k in range(x.shape[0]):
        target = _squared_norm(measured_output(model, x[k : k + 1], output))
        grads = torch.autograd.grad(target, list(params.values()), allow_unused=True)
        for (n, _), g in zip(params.items(), grads):
            if g is not None:
                total[n] += g.abs()
    return {n: t / x.shape[0] for n, t in total.items()}


def _approx(model: nn.Module, x: torch.Tensor, output: str | None) -> Importance:
    """Not exact: the absolute value of the batch's mean gradient, from one backward pass."""
    params = _trainable(model)
    target = _squared_norm(measured_output(model, x, output)) / x.shape[0]
    grads = torch.autograd.grad(target, list(params.values()), allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g.abs()) for (n, p), g in zip(params.items(), grads)}

