"""Output-sensitivity importance (Memory Aware Synapses), measured without labels.

For a model F and samples x_k, the importance of a parameter is the mean over samples of the absolute
per-sample gradient ``|d ||F(x_k)||^2 / d theta|``, measured with the model in eval mode so that samples do
not interact. The absolute value is taken per sample: ``|mean_k d/d theta|`` is a different (smaller)
quantity and is only offered as the explicit approximation ``method="approx"``.

Exact methods, all giving the same numbers:

* ``"fast"``: one forward and one backward pass of ``sum_k ||F(x_k)||^2`` with each layer's input captured
  (:mod:`~streammas.learner.importance.probe`); a rule per layer type (see :data:`RULES`, filled by
  :mod:`~streammas.learner.importance.linear`, :mod:`~streammas.learner.importance.conv`,
  :mod:`~streammas.learner.importance.norms` and :mod:`~streammas.learner.importance.embedding`) turns a layer's
  input and output gradient into the per-sample
  mean. For a linear layer this is ``|Delta|^T |A| / B``: one matrix product, the price of the ordinary
  weight gradient. A model that a registered whole-model provider handles (a chain of linear layers and
  activations, once :mod:`streammas.learner.fused` is imported) skips autograd altogether.
* ``"vmap"``: ``torch.func`` per-sample gradients; works for any model made of pure functions.
* ``"loop"``: one backward per sample; the slow reference (:mod:`~streammas.learner.importance.reference`).

``"auto"`` (the default) takes ``"fast"`` when every layer that owns parameters has a rule, runs once per
forward pass and keeps the batch in its first dimension, ``"vmap"`` otherwise.

:class:`SensitivityProbe` is the same computation for a learner's hot path: the layers and rules are found
once, and the training step's own forward pass can be reused (:meth:`SensitivityProbe.capture`), with the
forward hooks registered only for that pass.
"""

from __future__ import annotations

import torch
from torch import nn

# The layer families register their rules on import; the order does not matter (one table entry per type).
from streammas.learner.importance import conv, embedding, linear, norms  # noqa: F401
from streammas.learner.importance.linear import fold_linear_importance, linear_importance
from streammas.learner.importance.probe import SensitivityProbe, eval_mode, measured_output
from streammas.learner.importance.reference import _approx, _loop, _vmap
from streammas.learner.importance.registry import (
    ACCUMULATORS,
    CHAIN_IMPORTANCE,
    HEBBIAN_RULES,
    MODE_FREE,
    RULES,
    Importance,
    Rule,
    first_chain_importance,
    is_mode_free,
    register_chain_importance,
    register_hebbian_rule,
    register_into,
    register_mode_free,
    register_rule,
)

__all__ = [
    "ACCUMULATORS",
    "CHAIN_IMPORTANCE",
    "HEBBIAN_RULES",
    "METHODS",
    "MODE_FREE",
    "RULES",
    "Importance",
    "Rule",
    "SensitivityProbe",
    "eval_mode",
    "fold_linear_importance",
    "hebbian_importance",
    "is_mode_free",
    "linear_importance",
    "measured_output",
    "output_sensitivity",
    "register_chain_importance",
    "register_hebbian_rule",
    "register_into",
    "register_mode_free",
    "register_rule",
]

METHODS = ("auto", "fast", "vmap", "loop", "approx")


def _fast(model: nn.Module, x: torch.Tensor, output: str | None) -> Importance | None:
    if output is None:  # a whole-model provider (the hand-derived chain) measures the model's own output only
        result = first_chain_importance(model, x)
        if result is not None:
            return result
    return SensitivityProbe(model, output=output).measure(x)


def output_sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    *,
    output: str | None = None,
    method: str = "auto",
    chunk_size: int | None = None,
) -> Importance:
    """Mean over samples of ``|d ||F(x_k)||^2 / d theta|`` for every trainable parameter, exact per sample.

    ``output`` names a submodule whose output is measured instead of the model's (``"encoder"`` measures
    an autoencoder's code layer). The model is in eval mode while it is measured; its own mode is restored.

    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    >>> x = torch.randn(16, 4)
    >>> fast, loop = output_sensitivity(model, x), output_sensitivity(model, x, method="loop")
    >>> sorted(fast) == sorted(dict(model.named_parameters()))
    True
    >>> all(torch.allclose(fast[n], loop[n], atol=1e-6) for n in fast)
    True
    """
    if method not in METHODS:
        raise ValueError(f"unknown importance method {method!r}; choose one of {', '.join(METHODS)}")
    with eval_mode(model), torch.enable_grad():
        if method in ("auto", "fast"):
            result = _fast(model, x, output)
            if result is not None:
                return result
            if method == "fast":
                raise ValueError("method='fast' needs a rule for every layer that owns parameters, each run once "
                                 "per forward pass with the batch first; use 'auto'")
            method = "vmap"
        if method == "vmap":
            return _vmap(model, x, output, chunk_size)
        if method == "loop":
            return _loop(model, x, output)
        return _approx(model, x, output)


def hebbian_importance(model: nn.Module, x: torch.Tensor) -> Importance:
    """Local importance without a backward pass: ``Omega_ij = mean_k |a_i(x_k) a_j(x_k)|`` for the weight
    joining input activation ``a_j`` to output activation ``a_i`` of a layer (biases: ``mean_k |a_i|``).
    Convolutions average the same product over the positions of the sliding window.

    >>> model = nn.Sequential(nn.Linear(3, 2))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.fill_(1.0), model[0].bias.zero_()
    >>> hebbian_importance(model, torch.tensor([[1.0, -1.0, 2.0]]))["0.weight"]
    tensor([[2., 2., 4.],
            [2., 2., 4.]])
    """
    probe = SensitivityProbe(model, hebbian=True)
    missing = sorted({type(m).__name__ for _, m, rule, _ in probe._owners if rule is None})
    if missing:
        raise ValueError(f"no Hebbian importance rule for layer types: {', '.join(missing)}")
    with eval_mode(model), torch.no_grad():
        with probe.capture():
            model(x)
        result = probe.importance(x.shape[0]) if probe.ready(x.shape[0]) else None
        probe.release()
    if result is None:
        raise ValueError("Hebbian importance needs every layer with parameters to run once per forward pass, "
                         "batch first")
    return result
