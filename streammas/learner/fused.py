"""A hand-derived training step for models that are a chain of linear layers and elementwise activations.

Autograd records a graph on every forward pass and replays it backwards, materialises every gradient, and
leaves the update to an optimizer that reads them back. For a chain of ``nn.Linear`` layers and elementwise
activations trained on the reconstruction error the backward pass is short enough to write out, and writing
it out lets one step (under plain SGD; under Adam the gradients it derives go to torch's fused Adam kernel)

- update each weight in place with one ``addmm_``: the gradient is never stored;
- carry the importance seed ``2 F(x)`` (docs/algorithm.md, step 3) through the same backward pass as the training
  seed, stacked under it, so that both share each product with ``W``;
- fold ``|Delta|^T |A| / B`` into the running importance with one more ``addmm_`` per layer (the linear layer's
  importance rule, :func:`streammas.learner.importance.linear.fold_linear_importance`).

The numbers are autograd's up to float rounding (``tests/test_fused.py`` compares them step by step). How a
model is read as a chain is a registry keyed by module type (:func:`register_chain`), and so is the
derivative of each activation (:func:`register_activation`); anything else keeps the autograd step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from streammas.backend.compat import global_module_hooks, hook_tables
from streammas.backend.hostsync import cpu_read
from streammas.learner.importance.linear import fold_linear_importance, linear_importance
from streammas.learner.importance.registry import register_into
from streammas.learner.objectives import reconstruction

#: activation type -> derivative from the activation's output (the forward's own tensor, no recomputation)
ACTIVATIONS: dict[type[nn.Module], Callable[[nn.Module, torch.Tensor], torch.Tensor | None]] = {}
#: container type -> (its modules in order, or None; whether it flattens each sample and restores its shape)
CHAINS: dict[type[nn.Module], Callable[[nn.Module], tuple[list[nn.Module], bool] | None]] = {}


def register_activation(*types: type[nn.Module]) -> Callable:
    """Register ``derivative(module, output) -> tensor | None`` (``None``: the identity) for activation types."""
    return register_into(ACTIVATIONS, types)


def register_chain(*types: type[nn.Module]) -> Callable:
    """Register ``chain(module) -> (modules, flattens) | None`` for container types."""
    return register_into(CHAINS, types)


@register_activation(nn.ReLU)
def _relu(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    return out > 0


@register_activation(nn.LeakyReLU)
def _leaky_relu(module: nn.LeakyReLU, out: torch.Tensor) -> torch.Tensor | None:
    if module.negative_slope < 0:  # the sign of the output no longer tells the side
        raise _Unsupported
    return torch.where(out > 0, 1.0, module.negative_slope).to(out.dtype)


@register_activation(nn.Tanh)
def _tanh(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    return 1.0 - out * out


@register_activation(nn.Sigmoid)
def _sigmoid(module: nn.Module, out: torch.Tensor) -> torch.Tensor:
    return out * (1.0 - out)


@register_activation(nn.Identity)
def _identity(module: nn.Module, out: torch.Tensor) -> None:
    return None


class _Unsupported(Exception):
    pass


def _modules_of(container: nn.Module) -> list[nn.Module]:
    out: list[nn.Module] = []
    for child in container._modules.values():  # as Sequential.forward runs them: a module used twice appears twice
        if type(child) is nn.Sequential:
            out += _modules_of(child)
        elif type(child) is nn.Linear or type(child) in ACTIVATIONS:  # a subclass may have its own forward
            out.append(child)
        else:
            raise _Unsupported
    return out


@register_chain(nn.Sequential)
def _sequential(model: nn.Sequential) -> tuple[list[nn.Module], bool]:
    return _modules_of(model), False


def encoder_decoder_chain(model: nn.Module) -> tuple[list[nn.Module], bool]:
    """The chain of a model whose forward runs ``encoder`` then ``decoder`` on flattened samples, both chains
    (register it for such a type with :func:`register_chain`, as :mod:`streammas.models` does)."""
    return _modules_of(model.encoder) + _modules_of(model.decoder), True


@dataclass
class FusedResult:
    """What one :meth:`FusedChain.step` did: the losses, whether the update was applied, whether importance was folded.

    Parameters
    ----------
    losses : torch.Tensor
        The per-sample losses of all rows (the batch and the hard buffer's), detached, ``[rows]``.
    total : torch.Tensor
        Their sum, a 0-d device tensor.
    mean : torch.Tensor
        The loss the step descended: their sum over the step's row count (their mean, alone), a 0-d device tensor.
    finite : torch.Tensor
        Whether that mean was finite, a 0-d boolean device tensor: the update was applied (combined on the device).
    measured : bool
        Whether the first rows' importance was folded into the running importance.

    Examples
    --------
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))
    >>> chain = FusedChain.build(model, reconstruction, torch.optim.SGD(model.parameters(), lr=0.1))
    >>> result = chain.step(torch.rand(6, 4), 6)
    >>> result.losses.shape, bool(result.finite), result.measured
    (torch.Size([6]), True, False)
    >>> bool(torch.isclose(result.mean, result.losses.mean()))
    True
    >>> running = [torch.zeros_like(p) for p in chain.parameters()]
    >>> chain.step(torch.rand(6, 4), 6, fold=(running, lambda: 1.0)).measured, bool(running[0].sum() > 0)
    (True, True)
    """

    losses: torch.Tensor
    total: torch.Tensor
    mean: torch.Tensor
    finite: torch.Tensor
    measured: bool


def read_chain(model: nn.Module) -> tuple[list[nn.Module], bool] | None:
    """The model as a chain: its modules in order and whether it flattens each sample (``None``: not a chain the
    :data:`CHAINS` registry knows, or one with parameters outside its linear layers or shared between them)."""
    rule = CHAINS.get(type(model))
    if rule is None:
        return None
    try:
        found = rule(model)
    except _Unsupported:
        found = None
    if found is None:
        return None
    modules, flattens = found
    linears = [m for m in modules if isinstance(m, nn.Linear)]
    if not linears or len({id(m) for m in linears}) != len(linears):
        return None
    chain_params = [p for m in linears for p in (m.weight, m.bias) if p is not None]
    if len({id(p) for p in chain_params}) != len(chain_params):
        return None
    if {id(p) for p in chain_params} != {id(p) for p in model.parameters()}:
        return None
    if any(p.is_sparse for p in chain_params):
        return None
    return modules, flattens


class FusedChain:
    """The hand-derived step of a chain model, or ``None`` from :meth:`build` where it does not apply.

    It applies to a model that the :data:`CHAINS` registry reads as linear layers and registered activations,
    whose parameters are all trained, with the built-in reconstruction objective and a plain SGD optimizer (no
    momentum, weight decay, Nesterov or maximisation). The update is skipped, without a host sync, when the
    loss is not finite.

    Parameters
    ----------
    model : torch.nn.Module
        The model the chain computes.
    modules : list of torch.nn.Module
        Its modules in forward order: linear layers and registered activations (see :func:`read_chain`).
    flattens : bool
        Whether the model flattens each sample and restores its shape.
    lr_of : list of callable or None, default None
        Per linear layer, the current learning rate of its optimizer group (:meth:`build` sets them).

    Examples
    --------
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> step = FusedChain.build(model, reconstruction, optimizer)
    >>> x = torch.rand(16, 4)
    >>> first = step.step(x, x.shape[0]).losses.mean()
    >>> for _ in range(100):
    ...     result = step.step(x, x.shape[0])
    >>> bool(result.losses.mean() < first), bool(result.finite)
    (True, True)
    """

    def __init__(self, model: nn.Module, modules: list[nn.Module], flattens: bool,
                 lr_of: list[Callable[[], float]] | None = None) -> None:
        self.model = model
        self.modules = modules
        self.flattens = flattens
        self._lr_of = lr_of  # per linear layer
        self.linears = [m for m in modules if isinstance(m, nn.Linear)]
        self._hook_tables = [t for m in model.modules() for t in hook_tables(m)]  # the model's and its parts' too

    @classmethod
    def build(cls, model: nn.Module, objective: Callable, optimizer: torch.optim.Optimizer, *,
              writes_grads: bool = False) -> FusedChain | None:
        """The chain of ``model`` where it applies (``None`` elsewhere); ``writes_grads``: leave the gradients to
        the optimizer with SGD too (a group of workers sums them before any step)."""
        adam = type(optimizer) in (torch.optim.Adam, torch.optim.AdamW)
        if objective is not reconstruction or not (adam or type(optimizer) is torch.optim.SGD):
            return None
        found = read_chain(model)
        if found is None:
            return None
        modules, flattens = found
        linears = [m for m in modules if isinstance(m, nn.Linear)]
        if not all(p.requires_grad for p in model.parameters()):
            return None
        group_of: dict[int, dict] = {}
        for group in optimizer.param_groups:
            if adam and (group.get("amsgrad") or group.get("maximize") or group.get("differentiable")
                         or group.get("capturable")):
                return None
            if not adam and (group.get("momentum", 0) or group.get("weight_decay", 0) or group.get("nesterov")
                             or group.get("maximize") or group.get("differentiable")):
                return None
            for p in group["params"]:
                group_of[id(p)] = group
        lr_of = []
        for m in linears:
            groups = {id(group_of.get(id(p))) for p in (m.weight, m.bias) if p is not None}
            group = group_of.get(id(m.weight))
            if group is None or len(groups) != 1:
                return None
            lr_of.append(lambda g=group: float(g["lr"]))
        # Adam keeps its own step (torch's fused kernel): the chain writes the gradients it derived by hand.
        return cls(model, modules, flattens, None if adam or writes_grads else lr_of)

    @property
    def writes_grads(self) -> bool:
        """Whether :meth:`step` leaves the gradients in ``.grad`` for the optimizer (Adam), not stepping (SGD)."""
        return self._lr_of is None

    def applicable(self, x: torch.Tensor) -> bool:
        """Whether this chain computes what ``model(x)`` would: no hook on any module, and a batch the chain takes
        as it is (a bare ``Sequential`` takes ``[B, features]`` only)."""
        return (self.flattens or x.dim() == 2) and not self.hooked()

    def hooked(self) -> bool:
        """Whether a hook is on a module of the model, or on every module (the chain calls none: it would skip it)."""
        return global_module_hooks() or any(self._hook_tables)  # register_module_forward_hook & co. too

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """The flat input, each linear layer's input, and each module's output (in forward order)."""
        a = flat = x.reshape(x.shape[0], -1) if self.flattens else x
        inputs: list[torch.Tensor] = []
        outputs: list[torch.Tensor] = []
        for m in self.modules:
            if isinstance(m, nn.Linear):
                inputs.append(a)
                a = F.linear(a, m.weight, m.bias)
            else:
                a = m.forward(a)  # no hooks to run (see applicable)
            outputs.append(a)
        return flat, inputs, outputs

    def _backward(self, seed: torch.Tensor, outputs: list[torch.Tensor], rows: int, batch: int,
                  stacked: bool, gated: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """Each linear layer's output gradient (in forward order) from the output gradient ``seed``."""
        deltas: list[torch.Tensor] = []
        d = seed
        linear_index = len(self.linears)
        for i in range(len(self.modules) - 1, -1, -1):
            m = self.modules[i]
            if isinstance(m, nn.Linear):
                linear_index -= 1
                deltas.append(d)
                if linear_index > 0:  # the network's input needs no gradient
                    d = d @ m.weight
            else:
                derivative = ACTIVATIONS[type(m)](m, gated(outputs[i]))
                if derivative is not None:
                    d = _times(d, derivative, rows, batch, stacked)
        deltas.reverse()
        return deltas

    @torch.no_grad()
    def step(self, x: torch.Tensor, batch: int, fold: tuple[Sequence[torch.Tensor], Callable[[], float]] | None = None,
             rows_total: int | None = None) -> FusedResult:
        """One SGD step on all rows of ``x`` (for Adam: the gradients, in ``.grad``); with ``fold = (running,
        weight)``, also fold the importance of the first ``batch`` rows, measured before the update, into ``running``
        (aligned with :meth:`parameters`) with ``running += (mean - running) * weight()``. ``rows_total``: the loss
        is the sum over these rows divided by that many (a group of workers' rows), not their mean."""
        rows = x.shape[0]
        flat, inputs, outputs = self._forward(x)
        out = outputs[-1]
        diff = out - flat
        losses = diff.pow(2).mean(dim=1)
        total = losses.sum()
        mean = total / (rows if rows_total is None else rows_total)
        finite = torch.isfinite(mean)
        # A non-finite loss must leave the model untouched: a zero seed and zeroed activations make every product
        # below exactly zero (0 * inf would be NaN). On a CPU reading the flag costs no sync: a finite loss, no gate.
        clean = flat.device.type == "cpu" and cpu_read(finite)
        elements = diff.numel() if rows_total is None else rows_total * diff.shape[1]
        seed = diff.mul_(2.0 / elements) if clean else torch.where(finite, diff.mul_(2.0 / elements), 0.0)
        measure = fold is not None
        if measure:
            seed = torch.cat([seed, out[:batch] * 2.0 if clean else torch.where(finite, out[:batch] * 2.0, 0.0)])
        safe: dict[int, torch.Tensor] = {id(flat): flat}  # the input was validated finite

        def gated(t: torch.Tensor) -> torch.Tensor:
            if not clean and id(t) not in safe:
                safe[id(t)] = torch.where(finite, t, 0.0)
            return t if clean else safe[id(t)]

        deltas = self._backward(seed, outputs, rows, batch, measure, gated)
        weight = float(fold[1]()) if measure else 0.0
        targets = iter(fold[0]) if measure else None
        for layer, a_in, d, lr_of in zip(self.linears, inputs, deltas, self._lr_of or [None] * len(self.linears)):
            a_in = gated(a_in)
            train = d[:rows]
            if measure:  # before the update: the importance is the one of the weights the batch was scored on
                fold_to = {"weight": next(targets)}
                if layer.bias is not None:
                    fold_to["bias"] = next(targets)
                fold_linear_importance(d[rows:], a_in[:batch], fold_to, weight)
            if lr_of is None:
                _store_grad(layer.weight, train, a_in)
                if layer.bias is not None:
                    _store_grad(layer.bias, train)
                continue
            lr = lr_of()
            layer.weight.addmm_(train.t(), a_in, alpha=-lr)
            if layer.bias is not None:
                layer.bias.add_(train.sum(dim=0), alpha=-lr)
        return FusedResult(losses, total, mean, finite, measure)

    def output(self, x: torch.Tensor) -> torch.Tensor:  # model(x) flat, with no module call per layer
        return self._forward(x)[2][-1]

    @torch.no_grad()
    def importance(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The mean exact per-sample importance over ``x``, aligned with :meth:`parameters`; no update."""
        _, inputs, outputs = self._forward(x)
        deltas = self._backward(outputs[-1] * 2.0, outputs, x.shape[0], x.shape[0], False, lambda t: t)
        result = []
        for layer, a_in, d in zip(self.linears, inputs, deltas):
            result += linear_importance(d, a_in, layer.bias is not None).values()  # weight, then bias
        return result

    def parameters(self) -> Iterable[nn.Parameter]:
        """The chain's parameters in the order :meth:`step` folds their importance: weight, then bias, by layer."""
        for m in self.linears:
            yield m.weight
            if m.bias is not None:
                yield m.bias


def chain_importance(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor] | None:
    """Exact per-sample importance (docs/algorithm.md, step 3) of a chain model's trained parameters by the hand-derived
    backward pass, or ``None`` where the model is not a chain (see :func:`read_chain`).

    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2))
    >>> sorted(chain_importance(model, torch.randn(4, 3)))
    ['0.bias', '0.weight', '2.bias', '2.weight']
    """
    found = read_chain(model)
    if found is None:
        return None
    chain = FusedChain(model, *found)
    if not chain.applicable(x):
        return None
    by_id = {id(p): t for p, t in zip(chain.parameters(), chain.importance(x))}
    return {n: by_id[id(p)] for n, p in model.named_parameters() if p.requires_grad}


def _store_grad(p: nn.Parameter, delta: torch.Tensor, a: torch.Tensor | None = None) -> None:
    """Put a linear layer's hand-derived gradient in ``p.grad`` (into its buffer when there is one): the weight's
    ``delta^T a``, or the bias's column sums of ``delta`` when ``a`` is ``None``."""
    p.grad = torch.sum(delta, dim=0, out=p.grad) if a is None else torch.mm(delta.t(), a, out=p.grad)


def _times(d: torch.Tensor, derivative: torch.Tensor, rows: int, batch: int, stacked: bool) -> torch.Tensor:
    """``d * derivative`` where ``d`` may be the training rows with the importance rows (the first ``batch``
    samples again) stacked under them."""
    if not stacked:
        return d * derivative
    out = torch.empty_like(d)
    torch.mul(d[:rows], derivative, out=out[:rows])
    torch.mul(d[rows:], derivative[:batch], out=out[rows:])
    return out
