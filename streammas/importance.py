"""Output-sensitivity importance (Memory Aware Synapses), measured without labels.

For a model F and samples x_k, the importance of a parameter is the mean over samples of the absolute
per-sample gradient ``|d ||F(x_k)||^2 / d theta|``, measured with the model in eval mode so that samples do
not interact. The absolute value is taken per sample: ``|mean_k d/d theta|`` is a different (smaller)
quantity and is only offered as the explicit approximation ``method="approx"``.

Exact methods, all giving the same numbers:

* ``"fast"``: one backward pass of ``sum_k ||F(x_k)||^2`` with each layer's input captured; a rule per
  layer type (see :data:`RULES`) turns activations and output gradients into the per-sample mean. For a
  linear layer this is ``|Delta|^T |A| / B``: one matrix product, the price of the ordinary weight gradient.
* ``"vmap"``: ``torch.func`` per-sample gradients; works for any model made of pure functions.
* ``"loop"``: one backward per sample; the slow reference.

``"auto"`` (the default) takes ``"fast"`` when every layer that owns parameters has a rule and runs once
per forward pass, ``"vmap"`` otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

Importance = dict[str, torch.Tensor]
#: A rule maps (layer, its input, the gradient of sum_k ||F(x_k)||^2 w.r.t. its output) to the per-sample
#: mean of |gradient| of each of the layer's own parameters, keyed by the parameter's local name.
Rule = Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]
RULES: dict[type[nn.Module], Rule] = {}
#: Local (Hebbian) rules: (layer, its input, its output) -> importance of its parameters, no backward pass.
HEBBIAN_RULES: dict[type[nn.Module], Callable[[nn.Module, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]] = {}

METHODS = ("auto", "fast", "vmap", "loop", "approx")


def register_rule(*layer_types: type[nn.Module]) -> Callable[[Rule], Rule]:
    """Register an exact per-sample importance rule for the given layer types."""

    def decorate(rule: Rule) -> Rule:
        for layer_type in layer_types:
            RULES[layer_type] = rule
        return rule

    return decorate


def register_hebbian_rule(*layer_types: type[nn.Module]) -> Callable:
    """Register a local (Hebbian) importance rule for the given layer types."""

    def decorate(rule):
        for layer_type in layer_types:
            HEBBIAN_RULES[layer_type] = rule
        return rule

    return decorate


def _rule_for(module: nn.Module, table: dict) -> Callable | None:
    for cls in type(module).__mro__:
        if cls in table:
            return table[cls]
    return None


@register_rule(nn.Linear)
def _linear_rule(layer: nn.Linear, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    batch = a.shape[0]
    if a.dim() == 2:
        # mean_k |delta_k a_k^T| = |Delta|^T |A| / B, because |u v^T| = |u| |v|^T elementwise.
        out = {"weight": delta.abs().t().mm(a.abs()).div_(batch)}
        bias_grad = delta
    else:
        # A sequence dimension sums several outer products per sample: materialise each sample's gradient.
        a3, d3 = a.reshape(batch, -1, a.shape[-1]), delta.reshape(batch, -1, delta.shape[-1])
        out = {"weight": torch.einsum("bto,bti->boi", d3, a3).abs().mean(0)}
        bias_grad = d3.sum(1)
    if layer.bias is not None:
        out["bias"] = bias_grad.abs().mean(0)
    return out


@register_hebbian_rule(nn.Linear)
def _linear_hebbian(layer: nn.Linear, a: torch.Tensor, out: torch.Tensor) -> dict[str, torch.Tensor]:
    a2, o2 = a.reshape(-1, a.shape[-1]), out.reshape(-1, out.shape[-1])
    result = {"weight": o2.abs().t().mm(a2.abs()).div_(a2.shape[0])}
    if layer.bias is not None:
        result["bias"] = o2.abs().mean(0)
    return result


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


def _owners(model: nn.Module, params: dict[str, nn.Parameter]) -> list[tuple[str, nn.Module]]:
    """Modules that own trainable parameters directly, in registration order."""
    owners = []
    for name, module in model.named_modules():
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            owners.append((name, module))
    return owners


def _fast(model: nn.Module, x: torch.Tensor, output: str | None) -> Importance | None:
    params = _trainable(model)
    owners = _owners(model, params)
    if any(_rule_for(m, RULES) is None for _, m in owners):
        return None
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name, _ in owners}
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name, _ in owners}

    def capture(name: str):
        def hook(module, args, out):
            inputs[name].append(args[0].detach())
            outputs[name].append(out)

        return hook

    handles = [m.register_forward_hook(capture(name)) for name, m in owners]
    try:
        target = _squared_norm(measured_output(model, x, output))
    finally:
        for h in handles:
            h.remove()
    if any(len(v) != 1 for v in outputs.values()):
        return None  # a layer ran twice (weight sharing): its per-sample gradient is a sum, take vmap
    live = [name for name, _ in owners if outputs[name][0].requires_grad]
    grads = torch.autograd.grad(target, [outputs[n][0] for n in live], allow_unused=True) if live else []
    deltas = dict(zip(live, grads))
    result: Importance = {}
    for name, module in owners:
        delta = deltas.get(name)
        prefix = f"{name}." if name else ""
        for local, p in module.named_parameters(recurse=False):
            if p.requires_grad and delta is None:
                result[prefix + local] = torch.zeros_like(p)
        if delta is None:
            continue
        for local, value in _rule_for(module, RULES)(module, inputs[name][0], delta.detach()).items():
            result[prefix + local] = value
    return {name: result[name] for name in params}


def _vmap(model: nn.Module, x: torch.Tensor, output: str | None, chunk_size: int | None) -> Importance:
    params = {n: p.detach() for n, p in _trainable(model).items()}
    buffers = dict(model.named_buffers())

    def sample_norm(p: dict[str, torch.Tensor], xk: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (xk.unsqueeze(0),))
        return _squared_norm(out if output is None else _captured(model, p, buffers, xk, output))

    per_sample = vmap(grad(sample_norm), in_dims=(None, 0), chunk_size=chunk_size)(params, x)
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
                raise ValueError("method='fast' needs a rule for every layer that owns parameters; use 'auto'")
            method = "vmap"
        if method == "vmap":
            return _vmap(model, x, output, chunk_size)
        if method == "loop":
            return _loop(model, x, output)
        return _approx(model, x, output)


def hebbian_importance(model: nn.Module, x: torch.Tensor) -> Importance:
    """Local importance without a backward pass: ``Omega_ij = mean_k |a_i(x_k) a_j(x_k)|`` for the weight
    joining input activation ``a_j`` to output activation ``a_i`` of a layer (biases: ``mean_k |a_i|``).

    >>> model = nn.Sequential(nn.Linear(3, 2))
    >>> with torch.no_grad():
    ...     _ = model[0].weight.fill_(1.0), model[0].bias.zero_()
    >>> hebbian_importance(model, torch.tensor([[1.0, -1.0, 2.0]]))["0.weight"]
    tensor([[2., 2., 4.],
            [2., 2., 4.]])
    """
    params = _trainable(model)
    owners = _owners(model, params)
    missing = sorted({type(m).__name__ for _, m in owners if _rule_for(m, HEBBIAN_RULES) is None})
    if missing:
        raise ValueError(f"no Hebbian importance rule for layer types: {', '.join(missing)}")
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def capture(name: str):
        def hook(module, args, out):
            captured[name] = (args[0], out)

        return hook

    handles = [m.register_forward_hook(capture(name)) for name, m in owners]
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    result: Importance = {}
    for name, module in owners:
        prefix = f"{name}." if name else ""
        a, out = captured[name]
        for local, value in _rule_for(module, HEBBIAN_RULES)(module, a, out).items():
            result[prefix + local] = value
    return {name: result[name] for name in params}
