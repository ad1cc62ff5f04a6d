"""The group of workers a data-parallel run belongs to: who this process is, and the small host-side
collectives that keep the workers in step.

Two process groups serve two purposes. The *default* group (NCCL on CUDA, gloo on the CPU) carries the
learner's tensors: gradients, statistics, rows. A *control* group, always gloo, carries a few integers per
step between the hosts (how many rows each worker has, whether anyone was asked to stop), so that deciding
what to do never waits on the device. On the CPU both are the same gloo group.

Every method is a collective: every worker of the group calls it, in the same order.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

#: How the workers' learners combine: every step exactly, or by averaging their states now and then.
MODES = ("exact", "average")


def resolve_backend(setting: str, device: str | torch.device = "cpu") -> str:
    """``"auto"``: NCCL for a CUDA device, gloo otherwise; other values are passed through.

    >>> resolve_backend("auto", "cpu"), resolve_backend("auto", "cuda:0"), resolve_backend("gloo", "cuda")
    ('gloo', 'nccl', 'gloo')
    """
    if setting != "auto":
        return setting
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


class DistributedContext:
    """This process's place in a group of workers, and the host-side collectives between them.

    Parameters
    ----------
    rank, world_size : int
        This worker's rank and the number of workers (the default process group must be initialised).
    local_rank : int, default 0
        This worker's rank on its machine (which GPU it uses, which port it binds).
    control_group : ProcessGroup or None, default None
        A gloo group for the host-side collectives (``None``: the default group, which must then be gloo).
    mode : str, default "exact"
        How a learner given this context learns with the others: ``"exact"`` (every step all-reduced:
        :mod:`streammas.collective.reduce`) or ``"average"`` (local steps, the state averaged every
        ``average_every`` steps: :mod:`streammas.collective.average`).
    average_every : int, default 16
        With ``mode="average"``: the group's steps between two averagings.

    Examples
    --------
    A group of one, the same calls as in a group of many:

    >>> import tempfile
    >>> store = tempfile.NamedTemporaryFile(delete=False).name
    >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    >>> ctx = DistributedContext(rank=0, world_size=1)
    >>> ctx.gather_ints([3, 1]), ctx.reduce_ints([0, 1], op="max"), ctx.gather_objects({"row": 7})
    ([[3, 1]], [0, 1], [{'row': 7}])
    >>> ctx.broadcast_object("from rank 0")
    'from rank 0'
    >>> ctx.close()
    """

    def __init__(self, rank: int, world_size: int, *, local_rank: int = 0, control_group: Any = None,
                 mode: str = "exact", average_every: int = 16) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {mode!r}")
        if int(average_every) < 1:
            raise ValueError(f"average_every must be >= 1; got {average_every}")
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.local_rank = int(local_rank)
        self.control_group = control_group
        self.mode = mode
        self.average_every = int(average_every)

    @property
    def is_main(self) -> bool:
        """Rank 0: the worker that writes checkpoints and serves the group's metrics."""
        return self.rank == 0

    @classmethod
    def from_environment(cls, backend: str = "auto", device: str | torch.device = "cpu",
                         timeout_seconds: float = 300.0, *, mode: str = "exact",
                         average_every: int = 16) -> DistributedContext | None:
        """Join the group the launcher described (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
        ``MASTER_PORT``, as torchrun and the elastic launcher set them); ``None`` when not launched so."""
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            return None
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        chosen = resolve_backend(backend, device)
        timeout = datetime.timedelta(seconds=float(timeout_seconds))
        if not dist.is_initialized():
            dist.init_process_group(chosen, rank=rank, world_size=world_size, timeout=timeout)
        control = dist.new_group(backend="gloo", timeout=timeout) if chosen != "gloo" else None
        return cls(rank, world_size, local_rank=local_rank, control_group=control, mode=mode,
                   average_every=average_every)

    # -- host-side collectives (gloo, CPU tensors, a few integers) ---------------------------------------------
    def gather_ints(self, values: Sequence[int]) -> list[list[int]]:
        """Every worker's ``values`` (the same length on every worker), by rank."""
        mine = torch.tensor(list(values), dtype=torch.int64)
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine, group=self.control_group)
        return [t.tolist() for t in out]

    def reduce_ints(self, values: Sequence[int], op: str = "sum") -> list[int]:
        """``values`` summed (``op="sum"``) or their maximum (``"max"``: an OR of flags) over the workers."""
        t = torch.tensor(list(values), dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX, group=self.control_group)
        return t.tolist()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every worker's ``obj`` (plain, picklable values between trusted workers of one run), by rank."""
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control_group)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every worker."""
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.control_group)
        return box[0]

    def barrier(self) -> None:
        dist.barrier(group=self.control_group)

    def close(self) -> None:
        """Leave the group (destroys the default process group)."""
        if dist.is_initialized():
            dist.destroy_process_group()
