"""torch's fused Adam kernel, called without ``Optimizer.step``'s Python around it.

On a small model the kernel itself takes some 30 us and ``Adam(fused=True).step()`` some 65 us on a CPU: the rest
is the optimizer's generic machinery (hooks, its profiler label, gathering and grouping the tensors by device and
dtype on every call). :class:`OptimizerStep` calls the same kernel with the same arguments, on the optimizer's own
state tensors, wherever that gives the very same numbers; anywhere else (a hook, a parameter not stepped yet, a
setting the kernel call below does not cover) it calls ``optimizer.step()``. The optimizer keeps its state and its
``state_dict``; nothing changes for a checkpoint.

>>> from torch import nn
>>> model = nn.Linear(3, 2)
>>> adam = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
>>> step = OptimizerStep(adam)
>>> step.direct
True
>>> model(torch.ones(1, 3)).sum().backward()
>>> step()  # the first step makes Adam's state: optimizer.step()
>>> int(adam.state[model.bias]["step"])
1
>>> step()  # from now on the kernel alone
>>> int(adam.state[model.bias]["step"])
2
"""

from __future__ import annotations

import torch
import torch.optim.optimizer as torch_optimizer

__all__ = ["OptimizerStep"]

# Settings under which the kernel call below is what torch's Adam would make.
_PLAIN = {"fused": True, "amsgrad": False, "differentiable": False, "decoupled_weight_decay": False}


class OptimizerStep:
    """Step ``optimizer``: torch's fused Adam kernel called directly where that is the optimizer's own step, else
    ``optimizer.step()``.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Any optimizer. The kernel is called directly for a :class:`torch.optim.Adam` with ``fused=True``, one
        parameter group, no AMSGrad, every parameter on one device in one dtype, and only while the step would run
        no hook, nothing wraps the optimizer's ``step`` (an LR scheduler does), and every parameter has a
        gradient and its state.

    Examples
    --------
    >>> from torch import nn
    >>> model = nn.Linear(2, 1)
    >>> sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> OptimizerStep(sgd).direct  # any other optimizer steps itself
    False
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.direct = _kernel_applies(optimizer)
        # the group's own list: a parameter added to it later is stepped too
        self._params = optimizer.param_groups[0]["params"] if self.direct else []

    def __call__(self, found_inf: torch.Tensor | None = None) -> None:
        """One step; with ``found_inf`` (a 0-d float tensor on the parameters' device, 1 where the gradients are
        not finite), a step the kernel skips on the device, the step count included (no host sync)."""
        tensors = self._tensors() if self.direct else None
        if tensors is None:
            if found_inf is not None:  # torch's fused optimizers read the flag from these attributes
                self.optimizer.found_inf = found_inf
                self.optimizer.grad_scale = None
            self.optimizer.step()
            return
        group = self.optimizer.param_groups[0]
        grads, exp_avgs, exp_avg_sqs, steps = tensors
        beta1, beta2 = group["betas"]
        with torch.no_grad():
            torch._foreach_add_(steps, 1)
            torch._fused_adam_(self._params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=group["lr"],
                               beta1=float(beta1), beta2=float(beta2), weight_decay=group["weight_decay"],
                               eps=group["eps"], maximize=group["maximize"], grad_scale=None, found_inf=found_inf)
            if found_inf is not None:  # a skipped step is not counted
                torch._foreach_sub_(steps, [found_inf] * len(steps))

    def _tensors(self) -> tuple[list[torch.Tensor], ...] | None:
        """The kernel's gradients, moments and step counts, or ``None`` where ``optimizer.step()`` must run."""
        optimizer = self.optimizer
        if ("step" in vars(optimizer)  # the instance's step wrapped (an LR scheduler counts the calls)
                or optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
                or torch_optimizer._global_optimizer_pre_hooks or torch_optimizer._global_optimizer_post_hooks):
            return None
        groups = optimizer.param_groups
        if len(groups) != 1 or groups[0]["params"] is not self._params:  # a group added since (add_param_group)
            return None
        group = groups[0]
        if isinstance(group["lr"], torch.Tensor) or any(group.get(k, v) != v for k, v in _PLAIN.items()):
            return None
        grads, exp_avgs, exp_avg_sqs, steps = [], [], [], []
        state = optimizer.state
        for p in self._params:
            s = state.get(p)
            if p.grad is None or not s:  # Adam skips a parameter with no gradient; its first step makes its state
                return None
            grads.append(p.grad)
            exp_avgs.append(s["exp_avg"])
            exp_avg_sqs.append(s["exp_avg_sq"])
            steps.append(s["step"])
        return grads, exp_avgs, exp_avg_sqs, steps


def _kernel_applies(optimizer: torch.optim.Optimizer) -> bool:
    """Whether :class:`OptimizerStep` may call the fused kernel for ``optimizer`` (checked again at each step for
    what can change: the groups, hooks, settings, gradients and state)."""
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    if not hasattr(torch, "_fused_adam_") or not all(
            hasattr(torch_optimizer, name) for name in ("_global_optimizer_pre_hooks", "_global_optimizer_post_hooks")):
        return False  # a torch without them: its own step
    group = optimizer.param_groups[0]
    params = group["params"]
    if not params or any(group.get(k, v) != v for k, v in _PLAIN.items()):
        return False
    first = params[0]
    return all(p.device == first.device and p.dtype == first.dtype for p in params)
