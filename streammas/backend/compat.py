"""The few torch internals the project relies on, in one place: when torch changes one, this is the file to read.

- a fused optimizer's device-side skip (the flags torch's AMP grad scaler sets: ``found_inf``, ``grad_scale``);
- Adam's second moment and step count, read by the regulariser's proximal step under Adam's metric;
- the global module hooks, which a hand-derived step must not bypass.

>>> import torch
>>> model = torch.nn.Linear(2, 1)
>>> adam = torch.optim.Adam(model.parameters(), lr=0.1)
>>> adam_second_moment(adam, model.weight) is None       # Adam has not stepped yet
True
>>> model(torch.ones(1, 2)).sum().backward()
>>> adam.step()
>>> v, step = adam_second_moment(adam, model.weight)
>>> v.shape, float(step)
(torch.Size([1, 2]), 1.0)
>>> global_module_hooks()
False
"""

from __future__ import annotations

import torch
from torch.nn.modules import module as _module

__all__ = ["adam_second_moment", "global_module_hooks", "hook_tables", "skips_on_device"]

_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks")


def skips_on_device(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer.step`` can skip itself on a device flag (torch's fused kernels can): a non-finite loss
    then needs no host sync."""
    return bool(getattr(optimizer, "_step_supports_amp_scaling", False))


def adam_second_moment(optimizer: torch.optim.Optimizer,
                       param: torch.nn.Parameter) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Adam's running second moment of ``param``'s gradient and its step count; ``None`` before its first step."""
    state = optimizer.state.get(param)
    if not state or "exp_avg_sq" not in state:
        return None
    return state["exp_avg_sq"], torch.as_tensor(state["step"], dtype=torch.float64)


def global_module_hooks() -> bool:
    """Whether a hook is registered for every module (``torch.nn.modules.module.register_module_forward_hook`` and
    the like), which a computation that does not call the modules would skip."""
    return any(getattr(_module, name, None) for name in _GLOBAL_HOOKS)


def hook_tables(module: torch.nn.Module) -> list[dict]:
    """The tables of ``module``'s forward, forward-pre and backward hooks: a module keeps them for its lifetime
    and registering a hook adds to them, so that a caller asking often can keep the list and test
    ``any(tables)``, a fraction of a microsecond per module."""
    return [module._forward_hooks, module._forward_pre_hooks, module._backward_hooks]
