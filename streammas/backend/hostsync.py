"""The one door from device values to the host.

Every read of a learner's device tensors by the host goes through :func:`host_read`, so that the hot path's
promise (at most one device-to-host synchronisation every ``sync_every`` steps) can be counted and tested.
"""

from __future__ import annotations

from typing import Any

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
    if value.device.type != "cpu":
        raise ValueError(f"cpu_read of a tensor on {value.device}: use host_read, which counts the sync")
    return value.item() if value.dim() == 0 else value.tolist()
