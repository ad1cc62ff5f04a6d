"""Output-sensitivity importance (Memory Aware Synapses), measured without labels.

For a model F and samples x_k, the importance of a parameter is the mean over samples of the absolute
per-sample gradient ``|d ||F(x_k)||^2 / d theta|``, measured with the model in eval mode so that samples do
not interact. The absolute value is taken per sample: ``|mean_k d/d theta|`` is a different (smaller)
quantity and is only offered as the explicit approximation ``method="approx"``.

Exact methods, all giving the same numbers:

* ``"fast"``: one forward and one backward pass of ``sum_k ||F(x_k)||^2`` with each layer's input captured;
  a rule per layer type (see :data:`RULES`) turns a layer's input and output gradient into the per-sample
  mean. For a linear layer this is ``|Delta|^T |A| / B``: one matrix product, the price of the ordinary
  weight gradient. A convolution's per-sample weight gradients come from the convolution library's own
  weight-gradient kernel with the batch folded into the groups (1-d, 2-d, 3-d, transposed or not, any
  stride, padding, dilation, groups or padding mode); the normalisation layers (LayerNorm, RMSNorm,
  GroupNorm, BatchNorm with running statistics) and embeddings have closed forms.
* ``"vmap"``: ``torch.func`` per-sample gradients; works for any model made of pure functions.
* ``"loop"``: one backward per sample; the slow reference.

``"auto"`` (the default) takes ``"fast"`` when every layer that owns parameters has a rule, runs once per
forward pass and keeps the batch in its first dimension, ``"vmap"`` otherwise.

:class:`SensitivityProbe` is the same computation for a learner's hot path: the layers and rules are found
once, and the training step's own forward pass can be reused (:meth:`SensitivityProbe.capture`), with the
forward hooks registered only for that pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

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

METHODS = ("auto", "fast", "vmap", "loop", "approx")


def register_into(table: dict, types: tuple[type[nn.Module], ...]) -> Callable:
    """A decorator that registers the function it decorates in ``table`` under each of ``types``."""

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


def _rule_for(module: nn.Module, table: dict) -> Callable | None:
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
    return None


# -- linear --------------------------------------------------------------------------------------------------
@register_rule(nn.Linear)
def _linear_rule(layer: nn.Linear, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    batch = a.shape[0]
    if a.dim() == 2:
        # mean_k |delta_k a_k^T| = |Delta|^T |A| / B, because |u v^T| = |u| |v|^T elementwise. The 1/B goes on
        # the small factor, not on the [out, in] product.
        d_abs = delta.abs()
        out = {"weight": d_abs.t().mul(1.0 / batch).mm(a.abs())}
        if layer.bias is not None:
            out["bias"] = d_abs.mean(0)
        return out
    # A sequence dimension sums several outer products per sample: materialise each sample's gradient.
    a3, d3 = a.reshape(batch, -1, a.shape[-1]), delta.reshape(batch, -1, delta.shape[-1])
    out = {"weight": torch.einsum("bto,bti->boi", d3, a3).abs_().mean(0)}
    if layer.bias is not None:
        out["bias"] = d3.sum(1).abs_().mean(0)
    return out


def _linear_accumulate(layer: nn.Linear, a: torch.Tensor, delta: torch.Tensor, targets: dict[str, torch.Tensor],
                       weight: float) -> None:
    if a.dim() != 2:
        _lerp_into(targets, _linear_rule(layer, a, delta), weight)
        return
    d_abs = delta.abs()
    # target <- (1 - w) target + (w / B) |Delta|^T |A|: the rule and the running average in one BLAS call.
    targets["weight"].addmm_(d_abs.t(), a.abs(), beta=1.0 - weight, alpha=weight / a.shape[0])
    if "bias" in targets:
        targets["bias"].lerp_(d_abs.mean(0), weight)


ACCUMULATORS[_linear_rule] = _linear_accumulate


@register_hebbian_rule(nn.Linear)
def _linear_hebbian(layer: nn.Linear, a: torch.Tensor, out: torch.Tensor) -> dict[str, torch.Tensor]:
    a2, o2 = a.reshape(-1, a.shape[-1]), out.reshape(-1, out.shape[-1])
    result = {"weight": o2.abs().t().mm(a2.abs()).div_(a2.shape[0])}
    if layer.bias is not None:
        result["bias"] = o2.abs().mean(0)
    return result


# -- convolutions -------------------------------------------------------------------------------------------
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _conv_weight_grad(layer: nn.Module, a: torch.Tensor, grad_out: torch.Tensor, per_sample: bool) -> torch.Tensor:
    """The weight gradient of a convolution for input ``a`` and output gradient ``grad_out``: summed over the
    batch, or one per sample, ``[B, *weight.shape]``.

    Per sample, the batch becomes groups: the samples stacked as the channels of a single one, convolved with
    ``B * groups`` groups, give each sample's gradient as one group's (what ``torch.func`` does for a
    convolution). The work is that of the ordinary weight gradient, in the convolution library's own kernel.
    """
    transposed = isinstance(layer, nn.modules.conv._ConvTransposeNd)
    dims = len(layer.kernel_size)
    padding = layer.padding
    if not transposed and (layer.padding_mode != "zeros" or isinstance(padding, str)):
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


def _bias_of(delta: torch.Tensor) -> torch.Tensor:
    """Per-sample gradient of a per-channel bias (channel dim 1), summed over every other dimension."""
    return delta.reshape(delta.shape[0], delta.shape[1], -1).sum(-1)


@register_rule(*_CONVS)
def _conv_rule(layer: nn.Module, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if layer.weight.requires_grad:
        out["weight"] = _conv_weight_grad(layer, a, delta, per_sample=True).abs_().mean(0)
    if layer.bias is not None and layer.bias.requires_grad:
        out["bias"] = _bias_of(delta).abs_().mean(0)
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


# -- normalisation layers ------------------------------------------------------------------------------------
def _affine(layer: nn.Module, normalized: torch.Tensor, delta: torch.Tensor, per_channel: bool) -> dict:
    """Per-sample means for ``y = x_hat * weight + bias``: weight's gradient is ``delta * x_hat``, bias's is
    ``delta``, each summed over the dimensions the parameter is shared across."""

    def reduce(t: torch.Tensor) -> torch.Tensor:
        if per_channel:
            return _bias_of(t)
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


if hasattr(nn, "RMSNorm"):

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


# -- embeddings ----------------------------------------------------------------------------------------------
@register_rule(nn.Embedding)
def _embedding_rule(layer: nn.Embedding, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Row ``j``'s per-sample gradient is the sum of the output gradients at the sample's positions holding
    index ``j``. Grouping the (sample, index) pairs by sorting keeps memory at ``O(B T D)`` and needs no host
    synchronisation (no ``unique``)."""
    batch = a.shape[0]
    rows, dim = layer.weight.shape
    index = a.reshape(batch, -1)
    grads = delta.reshape(-1, dim)
    keys = (torch.arange(batch, device=a.device).unsqueeze(1) * rows + index).reshape(-1)
    keys, order = torch.sort(keys)
    starts = torch.ones_like(keys, dtype=torch.bool)
    starts[1:] = keys[1:] != keys[:-1]
    segment = starts.cumsum(0) - 1  # one segment per distinct (sample, index) pair
    sums = torch.zeros_like(grads).index_add_(0, segment, grads.index_select(0, order))
    if layer.scale_grad_by_freq:  # the gradient is divided by the index's count within the sample
        counts = torch.zeros(keys.shape[0], dtype=grads.dtype, device=grads.device)
        counts.index_add_(0, segment, torch.ones_like(counts))
        sums /= counts.clamp_(min=1).unsqueeze(1)
    target_row = torch.zeros_like(keys).scatter_(0, segment, keys % rows)  # unused segments: zero rows to row 0
    weight = torch.zeros_like(layer.weight, memory_format=torch.contiguous_format)
    weight.index_add_(0, target_row, sums.abs_()).div_(batch)
    if layer.padding_idx is not None:
        weight[layer.padding_idx] = 0.0
    return {"weight": weight}


# -- mode-free modules ---------------------------------------------------------------------------------------
def _register_builtin_mode_free() -> None:
    from streammas import models

    names = (
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
    register_mode_free(*(getattr(nn, n) for n in names if hasattr(nn, n)))
    register_mode_free(models.MLPAutoencoder, models.ConvAutoencoder, models.MLPClassifier)


_register_builtin_mode_free()


def is_mode_free(model: nn.Module) -> bool:
    """Whether the model's training-mode forward equals its eval-mode forward, as far as can be known: every
    module is of a type registered with :func:`register_mode_free`, or every module is in eval mode anyway.

    >>> is_mode_free(nn.Sequential(nn.Linear(2, 2), nn.ReLU())), is_mode_free(nn.Sequential(nn.Dropout()))
    (True, False)
    """
    modules = list(model.modules())
    return all(type(m) in MODE_FREE for m in modules) or not any(m.training for m in modules)


# -- shared helpers ------------------------------------------------------------------------------------------
@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode for the duration, then restore each one's own flag."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _lerp_into(targets: dict[str, torch.Tensor], means: dict[str, torch.Tensor], weight: float) -> None:
    for local, target in targets.items():
        target.lerp_(means[local], weight)


def measured_output(model: nn.Module, x: torch.Tensor, output: str | None = None) -> torch.Tensor:
    """The output whose sensitivity is measured: the model's, or that of the submodule named ``output``."""
    if output is None:
        return model(x)
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(output).register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    if not captured:
        raise ValueError(f"submodule {output!r} did not run in the model's forward pass")
    return captured[-1]


def _squared_norm(out: torch.Tensor) -> torch.Tensor:
    return out.pow(2).sum()


# -- the fast path -------------------------------------------------------------------------------------------
class SensitivityProbe:
    """Exact per-sample importance of a model's parameters from one forward and one backward pass.

    The modules that own trainable parameters and the rule of each are found once, at construction. A forward
    pass run inside :meth:`capture` records each such module's input and output (the hooks exist only for that
    pass); :meth:`importance` or :meth:`fold` then take one ``autograd.grad`` of ``sum_k ||F(x_k)||^2`` over
    the first ``batch`` rows with respect to those outputs and apply the rules. The forward can be the
    training step's own (the rows after ``batch``, a hard buffer say, are then left out), when the model is
    mode-free (:func:`is_mode_free`), or a separate eval-mode one (:meth:`measure`).

    ``hebbian=True`` applies the Hebbian rules to the captured activations instead (no backward pass).

    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> probe = SensitivityProbe(model)
    >>> x = torch.randn(6, 4)
    >>> with probe.capture():
    ...     y = model(x)
    >>> fast = probe.importance(6)
    >>> loop = output_sensitivity(model, x, method="loop")
    >>> all(torch.allclose(fast[n], loop[n], atol=1e-6) for n in loop)
    True
    """

    def __init__(self, model: nn.Module, *, output: str | None = None, hebbian: bool = False) -> None:
        self.model = model
        self.output = output
        self.hebbian = hebbian
        table = HEBBIAN_RULES if hebbian else RULES
        params = _trainable(model)
        self.names = list(params)
        self._index = {name: i for i, name in enumerate(self.names)}
        full_name = {id(p): n for n, p in params.items()}
        owners: list[tuple[str, nn.Module, Callable | None, list[tuple[str, str]]]] = []
        seen: dict[int, int] = {}
        for name, module in model.named_modules():
            own = [(local, full_name[id(p)]) for local, p in module.named_parameters(recurse=False)
                   if p.requires_grad]
            for local, _ in own:
                p = getattr(module, local)
                seen[id(p)] = seen.get(id(p), 0) + 1
            if own:
                owners.append((name, module, _rule_for(module, table), own))
        self._owners = owners
        #: whether the rules cover the model: every parameter-owning module has a rule and no parameter is
        #: shared between modules (a tied weight's per-sample gradient is a sum over its uses)
        self.covered = all(rule is not None for _, _, rule, _ in owners) and all(v == 1 for v in seen.values())
        self.mode_free_types = all(type(m) in MODE_FREE for m in model.modules())
        self._clone = False  # set once an in-place operation was seen modifying a captured tensor
        self._records: dict[str, list] = {}
        self._measured: list[torch.Tensor] = []

    def shares_forward(self) -> bool:
        """Whether a training-mode forward pass can serve the importance (which is defined in eval mode)."""
        return self.covered and (self.mode_free_types or not any(m.training for m in self.model.modules()))

    # -- capture ---------------------------------------------------------------------------------------------
    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record the inputs and outputs of the parameter-owning modules during the forward pass run inside."""
        self._records = {name: [] for name, *_ in self._owners}
        self._measured = []
        handles = [module.register_forward_hook(self._hook(name)) for name, module, *_ in self._owners]
        measured = self.model if self.output is None else self.model.get_submodule(self.output)
        handles.append(measured.register_forward_hook(self._measure_hook))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _hook(self, name: str):
        records = self._records[name]

        def hook(module, args, out):
            a = args[0] if args else None
            if not (isinstance(a, torch.Tensor) and isinstance(out, torch.Tensor)):
                records.append(None)
                return None
            records.append((a.detach(), out, a._version, out._version))
            # An in-place operation downstream (ReLU(inplace=True)) would rewrite the captured output and its
            # history; once that has been seen, hand the rest of the network a copy instead.
            return out.clone() if self._clone else None

        return hook

    def _measure_hook(self, module, args, out):
        self._measured.append(out)

    def ready(self, rows: int) -> bool:
        """Whether the captured pass can be used: every owner ran once on ``rows`` samples (batch first) and
        nothing captured was modified in place afterwards."""
        if not self.covered or not self._measured or not isinstance(self._measured[-1], torch.Tensor):
            return False
        if self._measured[-1].dim() == 0 or self._measured[-1].shape[0] != rows:
            return False
        for records in self._records.values():
            if len(records) != 1 or records[0] is None:
                return False
            a, out, a_version, out_version = records[0]
            if a.dim() == 0 or out.dim() == 0 or a.shape[0] != rows or out.shape[0] != rows:
                return False
            if a._version != a_version or out._version != out_version:
                self._clone = True
                return False
        return True

    # -- rules -----------------------------------------------------------------------------------------------
    def _deltas(self, batch: int, retain_graph: bool) -> dict[str, torch.Tensor | None]:
        measured = self._measured[-1]
        target = _squared_norm(measured if measured.shape[0] == batch else measured[:batch])
        live = [name for name, *_ in self._owners if self._records[name][0][1].requires_grad]
        if not live or not target.requires_grad:
            return {}
        grads = torch.autograd.grad(target, [self._records[n][0][1] for n in live], allow_unused=True,
                                    retain_graph=retain_graph)
        return dict(zip(live, grads))

    def _plan(self, batch: int, retain_graph: bool) -> list:
        """Per owner: (module, rule, input rows, delta rows or output rows, [(local, full name)])."""
        if self.hebbian:
            deltas = {name: self._records[name][0][1].detach() for name, *_ in self._owners}
        else:
            deltas = {n: (None if d is None else d.detach()) for n, d in self._deltas(batch, retain_graph).items()}
        plan = []
        for name, module, rule, params in self._owners:
            a = self._records[name][0][0]
            d = deltas.get(name)
            if a.shape[0] != batch:
                a = a[:batch]
                d = None if d is None else d[:batch]
            plan.append((module, rule, a, d, params))
        return plan

    def importance(self, batch: int, *, retain_graph: bool = False) -> Importance | None:
        """The mean importance over the first ``batch`` rows of the captured pass (``None``: not applicable)."""
        plan = self._plan(batch, retain_graph)
        result: Importance = {}
        with torch.no_grad():
            for module, rule, a, d, params in plan:
                if d is None:
                    for local, full in params:
                        result[full] = torch.zeros_like(getattr(module, local))
                    continue
                means = rule(module, a, d)
                if means is None:
                    return None
                for local, full in params:
                    result[full] = means[local]
        return {name: result[name] for name in self.names}

    def fold(self, batch: int, running: list[torch.Tensor], weight: Callable[[], float], *,
             retain_graph: bool = False) -> bool:
        """Fold the first ``batch`` rows' mean importance into ``running`` (aligned with :attr:`names`):
        ``running += (mean - running) * weight()``, fused where a rule has an accumulator.

        ``weight`` is called only once the fold is certain to happen. Returns ``False`` (``running``
        untouched) when a rule does not apply.
        """
        plan = self._plan(batch, retain_graph)
        index = self._index
        with torch.no_grad():
            staged = []
            for module, rule, a, d, params in plan:
                fused = None if (d is None or self.hebbian) else ACCUMULATORS.get(rule)
                means = None if (d is None or fused is not None) else rule(module, a, d)
                if d is not None and fused is None and means is None:
                    return False
                staged.append((module, fused, a, d, params, means))
            w = float(weight())
            for module, fused, a, d, params, means in staged:
                targets = {local: running[index[full]] for local, full in params}
                if d is None:  # the measured output does not depend on this layer: its importance is 0
                    for t in targets.values():
                        t.mul_(1.0 - w)
                elif fused is not None:
                    fused(module, a, d, targets, w)
                else:
                    _lerp_into(targets, means, w)
        return True

    # -- standalone ----------------------------------------------------------------------------------------------
    @contextmanager
    def _measuring(self, x: torch.Tensor) -> Iterator[bool]:
        grad_mode = torch.no_grad() if self.hebbian else torch.enable_grad()
        with eval_mode(self.model), grad_mode:
            for _ in range(2):  # a second try hands copies downstream if an in-place op was detected
                clone_before = self._clone
                with self.capture():
                    self.model(x)
                if self.ready(x.shape[0]) or self._clone == clone_before:
                    break
            yield self.ready(x.shape[0])
        self._records, self._measured = {}, []

    def measure(self, x: torch.Tensor) -> Importance | None:
        """Mean importance over the samples of ``x``, in a separate eval-mode pass (``None``: not applicable)."""
        if not self.covered:
            return None
        with self._measuring(x) as ok:
            return self.importance(x.shape[0]) if ok else None

    def measure_into(self, x: torch.Tensor, running: list[torch.Tensor], weight: Callable[[], float]) -> bool:
        """:meth:`fold` on a separate eval-mode pass over ``x``."""
        if not self.covered:
            return False
        with self._measuring(x) as ok:
            return ok and self.fold(x.shape[0], running, weight)

    def release(self) -> None:
        """Drop the tensors of the last captured pass."""
        self._records, self._measured = {}, []


def _fast(model: nn.Module, x: torch.Tensor, output: str | None) -> Importance | None:
    if output is None:  # a chain of linear layers and activations: the hand-derived backward pass, no autograd
        from streammas.fused import chain_importance

        result = chain_importance(model, x)
        if result is not None:
            return result
    return SensitivityProbe(model, output=output).measure(x)


# -- reference paths -----------------------------------------------------------------------------------------
def _vmap(model: nn.Module, x: torch.Tensor, output: str | None, chunk_size: int | None) -> Importance:
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
    captured: list[torch.Tensor] = []
    handle = model.get_submodule(output).register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        functional_call(model, (params, buffers), (xk.unsqueeze(0),))
    finally:
        handle.remove()
    return captured[-1]


def _loop(model: nn.Module, x: torch.Tensor, output: str | None) -> Importance:
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
    params = _trainable(model)
    target = _squared_norm(measured_output(model, x, output)) / x.shape[0]
    grads = torch.autograd.grad(target, list(params.values()), allow_unused=True)
    return {n: (torch.zeros_like(p) if g is None else g.abs()) for (n, p), g in zip(params.items(), grads)}


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
