"""The optimizers a learner is given by name, and how it builds one.

>>> from torch import nn
>>> type(make_optimizer("adam", list(nn.Linear(2, 2).parameters()), lr=1e-3)).__name__
'Adam'
>>> sorted(OPTIMIZERS)
['adam', 'sgd']
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["OPTIMIZERS", "make_optimizer"]

#: The optimizers by the names the settings accept.
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}


def make_optimizer(optimizer: str | Callable, params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """``"sgd"``, ``"adam"`` or a callable ``params -> optimizer``; the fused kernels where the device has them,
    since they can skip a step on a device-side flag (``found_inf``): a non-finite loss needs no host sync."""
    if callable(optimizer):
        return optimizer(params)
    try:
        return OPTIMIZERS[optimizer](params, lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return OPTIMIZERS[optimizer](params, lr=lr)
