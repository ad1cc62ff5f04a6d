"""Capturing a forward pass and turning it into per-sample importance: the fast exact path.

A forward pass of the model, with each parameter-owning layer's input and output recorded, and one backward
pass of ``sum_k ||F(x_k)||^2`` to those outputs give every layer what its rule in the registry
(:mod:`streammas.learner.importance.registry`) needs. :class:`SensitivityProbe` finds the layers and their rules once,
so a learner can reuse its training step's own forward for that pass; :func:`eval_mode` and
:func:`measured_output` are the conventions every method shares (importance is defined in eval mode, on the
model's output or on a named submodule's).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from streammas.learner.importance.registry import (
    ACCUMULATORS,
    HEBBIAN_RULES,
    MODE_FREE,
    RULES,
    Importance,
    lerp_into,
    rule_for,
)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode for the duration, then restore each one's own flag.

    >>> model = nn.Sequential(nn.Dropout(), nn.Dropout())
    >>> _ = model[1].eval()
    >>> with eval_mode(model):
    ...     [m.training for m in model]
    [False, False]
    >>> [m.training for m in model]
    [True, False]
    """
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
    """The output whose sensitivity is measured: the model's, or that of the submodule named ``output``.

    >>> model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 5))
    >>> measured_output(model, torch.zeros(4, 3), output="0").shape
    torch.Size([4, 2])
    """
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


class SensitivityProbe:
    """Exact per-sample importance of a model's parameters from one forward and one backward pass.

    The modules that own trainable parameters and the rule of each are found once, at construction. A forward
    pass run inside :meth:`capture` records each such module's input and output (the hooks exist only for that
    pass); :meth:`importance` or :meth:`fold` then take one ``autograd.grad`` of ``sum_k ||F(x_k)||^2`` over
    the first ``batch`` rows with respect to those outputs and apply the rules. The forward can be the
    training step's own (the rows after ``batch``, a hard buffer say, are then left out), when the model is
    mode-free (:func:`~streammas.learner.importance.registry.is_mode_free`), or a separate eval-mode one
    (:meth:`measure`).

    Parameters
    ----------
    model : torch.nn.Module
        The model whose parameters' importance is measured.
    output : str or None, default None
        Name of the submodule whose output sensitivity is measured (``None``: the model's).
    hebbian : bool, default False
        ``True`` applies the Hebbian rules to the captured activations instead (no backward pass).

    Attributes
    ----------
    covered : bool
        Whether the rules cover the model: every parameter-owning module has a rule and no parameter is shared
        between modules (a tied weight's per-sample gradient is a sum over its uses).

    Examples
    --------
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
    >>> probe = SensitivityProbe(model)
    >>> x = torch.randn(6, 4)
    >>> with probe.capture():
    ...     y = model(x)
    >>> fast = probe.importance(6)
    >>> from streammas.learner.importance import output_sensitivity
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
                owners.append((name, module, rule_for(module, table), own))
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
                    lerp_into(targets, means, w)
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

