"""Scoring one sample on the CPU without torch's per-operation overhead: the chain's forward pass in NumPy.

One sample through a small MLP is a handful of vector-matrix products of a few microseconds each; in torch each
operation also pays its dispatch (several microseconds), so that scoring one row costs several times the
arithmetic. Where the model is a chain (:class:`~streammas.learner.fused.FusedChain`) on the CPU, its forward pass
runs here in NumPy on views of the live parameters (no copy: each call sees the weights as they are now). Each
activation has its NumPy rule in a registry (:data:`HOST_ACTIVATIONS`); a chain with an activation that has none
is scored by torch as before. The numbers are torch's up to float rounding (``tests/test_host_forward.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from streammas.backend.hostsync import cpu_view
from streammas.learner.importance.registry import register_into

#: activation type -> its forward in NumPy (``None``: the identity)
HOST_ACTIVATIONS: dict[type[nn.Module], Callable[[nn.Module, np.ndarray], np.ndarray] | None] = {}


def register_host_activation(*types: type[nn.Module]) -> Callable:
    """Register ``forward(module, a) -> array`` for activation types, in NumPy."""
    return register_into(HOST_ACTIVATIONS, types)


@register_host_activation(nn.ReLU)
def _relu(module: nn.Module, a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0)


@register_host_activation(nn.LeakyReLU)
def _leaky_relu(module: nn.LeakyReLU, a: np.ndarray) -> np.ndarray:
    return np.where(a > 0, a, a * np.float32(module.negative_slope)).astype(a.dtype, copy=False)


@register_host_activation(nn.Tanh)
def _tanh(module: nn.Module, a: np.ndarray) -> np.ndarray:
    return np.tanh(a)


@register_host_activation(nn.Sigmoid)
def _sigmoid(module: nn.Module, a: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):  # exp(-a) overflows to inf for a < -88: the sigmoid is 0 there, as torch's
        return 1.0 / (1.0 + np.exp(-a))


HOST_ACTIVATIONS[nn.Identity] = None


class HostForward:
    """A chain's forward pass and reconstruction error in NumPy, for samples in CPU memory.

    Parameters
    ----------
    modules : list of torch.nn.Module
        The chain's modules in forward order (linear layers and activations), their parameters on the CPU.

    Examples
    --------
    >>> torch.manual_seed(0) and None
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 4))
    >>> host = HostForward.build(list(model))
    >>> z = torch.rand(1, 4)
    >>> expected = (model(z) - z).pow(2).mean().item()
    >>> abs(host.reconstruction_error(z) - expected) < 1e-6
    True
    >>> HostForward.build([nn.Linear(4, 4), nn.GELU()]) is None   # no NumPy rule for GELU: torch scores it
    True
    """

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        # where each parameter lives, read again on every call: a state loaded with ``assign=True`` puts new
        # parameters on the same modules
        self._homes = [(m._parameters, name) for m in modules if isinstance(m, nn.Linear)
                       for name in ("weight", "bias") if m._parameters.get(name) is not None]
        self._key: list[int] = []
        self._plan: list[tuple] = []

    @classmethod
    def build(cls, modules: list[nn.Module]) -> HostForward | None:
        """The host forward of these modules, or ``None`` where one has no NumPy rule or a parameter is not a
        float32 tensor in CPU memory."""
        for m in modules:
            if isinstance(m, nn.Linear):
                if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in m.parameters()):
                    return None
            elif type(m) not in HOST_ACTIVATIONS:
                return None
        return cls(modules)

    def _layers(self) -> list[tuple]:
        """Per linear layer: its weight and bias as NumPy views of the live parameters, and the activations that
        follow it (their rules). The views are made again when a parameter or its storage was replaced (an
        optimizer updates in place, and the views see that)."""
        key = [home[name].data_ptr() for home, name in self._homes]
        if key != self._key:
            plan: list[tuple] = []
            for m in self.modules:
                if isinstance(m, nn.Linear):
                    plan.append((cpu_view(m.weight), None if m.bias is None else cpu_view(m.bias), []))
                elif HOST_ACTIVATIONS[type(m)] is not None:
                    if not plan:  # an activation before the first layer
                        plan.append((None, None, []))
                    plan[-1][2].append((HOST_ACTIVATIONS[type(m)], m))
            self._key, self._plan = key, plan
        return self._plan

    def output(self, row: np.ndarray) -> np.ndarray:
        """The chain's output for one flat sample ``row`` (``[features]``, float32)."""
        a = row
        for weight, bias, activations in self._layers():
            if weight is not None:
                a = np.dot(weight, a)  # matrix times vector: the weight's own layout, no transpose
                if bias is not None:
                    a += bias
            for rule, module in activations:
                a = rule(module, a)
        return a

    def reconstruction_error(self, z: torch.Tensor) -> float:
        """The mean squared error of the chain's reconstruction of the one sample ``z`` (``[1, ...]``, float32,
        in CPU memory)."""
        return self.row_error(cpu_view(z.reshape(-1)))

    def row_error(self, row: np.ndarray) -> float:
        """The mean squared error of the chain's reconstruction of the flat float32 sample ``row``."""
        diff = self.output(row) - row
        return float(np.dot(diff, diff)) / diff.shape[0]
