"""The one door from device values to the host.

Every read of a learner's device tensors by the host goes through :func:`host_read`, so that the hot path's
promise (at most one device-to-host synchronisation every ``sync_every`` steps) can be counted and tested.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

_reads = 0


def host_read(value: torch.Tensor) -> Any:
    """Copy a device tensor to the host as Python numbers (a list, or a scalar for a 0-d tensor).

    >>> host_read(torch.tensor([1.5, 2.0]))
    [1.5, 2.0]
    """
    global _reads
    _reads += 1
    return value.detach().tolist()


def host_reads() -> int:
    """How many times :func:`host_read` has run in this process."""
    return _reads


def cpu_read(value: torch.Tensor) -> Any:
    """The value of a tensor in host memory (a CPU learner's): nothing waits for a device, so it is not one of
    :func:`host_read`'s reads. Where a learner on a CPU may branch on a value a device learner must not read.

    >>> cpu_read(torch.tensor(True))
    True
    """
    if not value.is_cpu:
        raise ValueError(f"cpu_read of a tensor on {value.device}: use host_read, which counts the sync")
    return value.item() if value.dim() == 0 else value.tolist()


def cpu_view(value: torch.Tensor) -> np.ndarray:
    """A tensor in host memory as a NumPy array sharing its memory (no copy, nothing waited for), for host-side
    arithmetic on a CPU learner's own state. Refuses a device tensor, as :func:`cpu_read` does.

    >>> t = torch.zeros(3)
    >>> view = cpu_view(t)
    >>> t += 1
    >>> view.tolist()
    [1.0, 1.0, 1.0]
    >>> cpu_view(torch.empty(2, device="meta"))
    Traceback (most recent call last):
    ...
    ValueError: cpu_view of a tensor on meta: it would have to wait for the device
    """
    if not value.is_cpu:  # (is_cpu: a fraction of device.type's cost, on a path taken several times a step)
        raise ValueError(f"cpu_view of a tensor on {value.device}: it would have to wait for the device")
    return value.detach().numpy() if value.requires_grad else value.numpy()
