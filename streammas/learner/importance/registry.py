"""The registry of importance rules: which function measures the importance of which layer type.

Rules live in tables keyed by module type, so that a new layer type is supported by registering a function,
without touching the code that applies them (:class:`~streammas.learner.importance.probe.SensitivityProbe`). A lookup
follows the module's method resolution order, so a subclass inherits its base's rule unless it has its own.
The same module holds the other facts about module types the importance relies on (which ones are mode-free)
and the hook through which a faster whole-model path (the hand-derived chain of :mod:`streammas.learner.fused`) offers
itself without this package importing it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

#: Importance of each parameter, keyed by its name in ``model.named_parameters()``.
Importance = dict[str, torch.Tensor]
#: A rule maps (layer, its input, the gradient of sum_k ||F(x_k)||^2 w.r.t. its output) to the per-sample
#: mean of |gradient| of each of the layer's own parameters, keyed by the parameter's local name. The batch is
#: the first dimension of both tensors. A rule may return ``None`` when it does not apply to the layer as it is
#: configured (a batch norm using batch statistics); the generic ``torch.func`` path is then taken.
Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor], "dict[str, torch.Tensor] | None"]
RULES: dict[type[nn.Module], Rule] = {}
#: Local (Hebbian) rules: (layer, its input, its output) -> importance of its parameters, no backward pass.
HEBBIAN_RULES: dict[type[nn.Module], Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]] = {}
#: Optional fused forms of a rule, keyed by the rule: ``(layer, input, output gradient, targets, weight)`` folds
#: the batch's mean into each target in place, ``target += (mean - target) * weight``, without materialising
#: the mean (for a linear layer: one ``addmm_``).
ACCUMULATORS: dict[Callable, Callable[..., None]] = {}
#: Module types whose forward pass does not depend on ``module.training``: a training-mode forward of a model
#: made only of these equals its eval-mode forward, so the training step's forward can serve the importance.
MODE_FREE: set[type[nn.Module]] = set()
#: Whole-model providers ``(model, x) -> Importance | None`` tried, in order, before the per-layer rules when
#: the model's own output is measured; ``None`` means the provider does not handle that model.
CHAIN_IMPORTANCE: list[Callable[[nn.Module, torch.Tensor], Importance | None]] = []


def register_into(table: dict, types: tuple[type[nn.Module], ...]) -> Callable:
    """A decorator that registers the function it decorates in ``table`` under each of ``types``.

    >>> table = {}
    >>> @register_into(table, (nn.Tanh, nn.Sigmoid))
    ... def saturating(module):
    ...     return True
    >>> sorted(t.__name__ for t in table)
    ['Sigmoid', 'Tanh']
    """

    def decorate(rule):
        for module_type in types:
            table[module_type] = rule
        return rule

    return decorate


def register_rule(*layer_types: type[nn.Module]) -> Callable[[Rule], Rule]:
    """Register an exact per-sample importance rule for the given layer types."""
    return register_into(RULES, layer_types)


def register_hebbian_rule(*layer_types: type[nn.Module]) -> Callable:
    """Register a local (Hebbian) importance rule for the given layer types."""
    return register_into(HEBBIAN_RULES, layer_types)


def register_mode_free(*module_types: type[nn.Module]) -> None:
    """Declare module types whose forward ignores ``module.training`` (no dropout, no batch statistics).

    A learner reuses its training forward for the importance pass only when every module of the model is of
    such a type (or the whole model is in eval mode), since importance is defined in eval mode.
    """
    MODE_FREE.update(module_types)


def register_chain_importance(provider: Callable[[nn.Module, torch.Tensor], Importance | None]) -> Callable:
    """Offer a whole-model importance path, tried before the per-layer rules; returns ``provider``.

    Registering the same provider twice (a module reloaded) keeps one entry.
    """
    if provider not in CHAIN_IMPORTANCE:
        CHAIN_IMPORTANCE.append(provider)
    return provider


def first_chain_importance(model: nn.Module, x: torch.Tensor) -> Importance | None:
    """The first registered whole-model provider's importance of ``model`` over ``x`` (``None``: none applies)."""
    for provider in CHAIN_IMPORTANCE:
        result = provider(model, x)
        if result is not None:
            return result
    return None


def rule_for(module: nn.Module, table: dict) -> Callable | None:
    """The rule registered for the module's type or its nearest base class in ``table``, or ``None``."""
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
    return None


_rule_for = rule_for  # the name it had before the registry was a module of its own


def is_mode_free(model: nn.Module) -> bool:
    """Whether the model's training-mode forward equals its eval-mode forward, as far as can be known: every
    module is of a type registered with :func:`register_mode_free`, or every module is in eval mode anyway.

    >>> is_mode_free(nn.Sequential(nn.Linear(2, 2), nn.ReLU())), is_mode_free(nn.Sequential(nn.Dropout()))
    (True, False)
    """
    modules = list(model.modules())
    return all(type(m) in MODE_FREE for m in modules) or not any(m.training for m in modules)


def lerp_into(targets: dict[str, torch.Tensor], means: dict[str, torch.Tensor], weight: float) -> None:
    """The unfused accumulation: ``target += (mean - target) * weight`` for each parameter's target."""
    for local, target in targets.items():
        target.lerp_(means[local], weight)


# torch's own layers with no dropout and no batch statistics. Names looked up one by one: older torch versions
# lack some (RMSNorm, CircularPad). Model types elsewhere in the package register themselves where defined.
_TORCH_MODE_FREE = (
    "Identity", "Linear", "Bilinear", "Flatten", "Unflatten", "Conv1d", "Conv2d", "Conv3d",
    "ConvTranspose1d", "ConvTranspose2d", "ConvTranspose3d", "LayerNorm", "GroupNorm", "RMSNorm",
    "LocalResponseNorm", "Embedding", "EmbeddingBag", "Sequential", "ModuleList", "ModuleDict",
    "ReLU", "ReLU6", "LeakyReLU", "PReLU", "ELU", "SELU", "CELU", "GELU", "SiLU", "Mish",
    "Sigmoid", "Tanh", "Hardtanh", "Hardsigmoid", "Hardswish", "Hardshrink", "Softshrink",
    "Tanhshrink", "Softplus", "Softsign", "LogSigmoid", "Threshold", "GLU", "Softmax",
    "LogSoftmax", "Softmin", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AvgPool1d", "AvgPool2d",
    "AvgPool3d", "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d",
    "AdaptiveMaxPool1d", "AdaptiveMaxPool2d", "AdaptiveMaxPool3d", "Upsample",
    "UpsamplingNearest2d", "UpsamplingBilinear2d", "PixelShuffle", "PixelUnshuffle", "ZeroPad1d",
    "ZeroPad2d", "ConstantPad1d", "ConstantPad2d", "ReflectionPad1d", "ReflectionPad2d",
    "ReplicationPad1d", "ReplicationPad2d", "CircularPad1d", "CircularPad2d",
)
register_mode_free(*(getattr(nn, n) for n in _TORCH_MODE_FREE if hasattr(nn, n)))
