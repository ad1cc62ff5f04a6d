"""Exact data parallelism for the learner: N workers, each learning its own rows, end every step with the state
of one learner fed the union of their rows.

The union is *interleaved*: worker r's j-th row is slot ``j * N + r`` of the step's global batch, and the rows a
worker does not have are dropped, the others closing up. Sharding a file "row i to worker i mod N" makes this
the file's own order, so that N workers with batches of b rows learn what one learner with batches of N b rows
learns from the same file.

A step takes three collectives:

- **H** (host, the control group): every worker's row count, so that each knows the global batch's size and
  where its own rows sit in it without waiting on the device. A step where no worker has a row is no step.
- **G** (device, the default group): the rows themselves (with their labels, as raw bytes), gathered in the
  global order, because the input scaler's statistics and the replay reservoir are functions of the whole batch:
  every worker keeps an identical copy of both, updated with the same batch.
- **R** (device): per optimisation step, one all-reduce (a sum) of one flat buffer: the gradients, the importance
  sums on a measuring step, and the sums of the batch's scores and of all rows' losses.

A few steps take more: on a measuring step the autograd engine agrees on the host whether every worker's
training forward could serve the importance (else all measure apart, as one learner would), and importance
measured in a separate pass is summed by an all-reduce of its own; the recovery check (after many skipped
updates) sums three numbers. At creation rank 0's weights and replay seed are broadcast.

Each worker's loss is a sum over its rows divided by the group's row count (known on the host from H), so the sum
over the workers is the single learner's mean. What follows R (the optimizer's step, the proximal step, the
importance fold, the plateau detector) runs on identical numbers on every worker, which therefore stay
identical.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from streammas.collective.alone import Alone, StepRows
from streammas.collective.context import DistributedContext

__all__ = ["ExactGroup", "GroupBatch", "GroupCollective", "GroupReducer", "interleave"]

#: Label and source dtypes by code, as exchanged in H (0: none).
LABEL_DTYPES = (None, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool, torch.float16,
                torch.bfloat16, torch.float32, torch.float64)

# all_gather_single is all_gather_into_tensor's newer name (the old one warns from torch 2.13 on).
_gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


def interleave(counts: Sequence[int], rank: int) -> tuple[list[int], list[int]]:
    """The group's order of a step's rows, gathered padded to the largest count and read row j of every worker,
    then row j + 1 (worker r's row j at ``j * len(counts) + r``): for each global slot, the index of its row
    there (the padding left out); and the global slots of worker ``rank``'s rows.

    >>> interleave([3, 1, 2], rank=2)   # slots: w0 r0, w1 r0, w2 r0, w0 r1, w2 r1, w0 r2
    ([0, 1, 2, 3, 5, 6], [2, 4])
    >>> interleave([0, 2], rank=0)
    ([1, 3], [])
    """
    order: list[int] = []
    mine: list[int] = []
    for j in range(max(counts, default=0)):
        for r, n in enumerate(counts):
            if j < n:
                if r == rank:
                    mine.append(len(order))
                order.append(j * len(counts) + r)
    return order, mine


@dataclass(frozen=True)
class GroupBatch:
    """One step's global batch, as one worker sees it.

    Parameters
    ----------
    counts : list of int
        The rows of each worker, by rank.
    positions : list of int
        The global slots of this worker's rows, in their order.
    x, y : torch.Tensor, torch.Tensor or None
        The global batch and its labels, in the group's order.
    y_local : torch.Tensor or None
        This worker's labels in the group's label dtype (an empty tensor for a worker with no rows).
    source_dtype : torch.dtype or None, default None
        The dtype the rows arrived in, where every worker with rows agrees.

    Examples
    --------
    >>> batch = GroupBatch([2, 1], [0, 2], torch.zeros(3, 4), None, None)
    >>> batch.total, batch.x.shape
    (3, torch.Size([3, 4]))
    """

    counts: list[int]
    positions: list[int]
    x: torch.Tensor
    y: torch.Tensor | None
    y_local: torch.Tensor | None
    source_dtype: torch.dtype | None = None

    @property
    def total(self) -> int:
        return sum(self.counts)


class GroupReducer:
    """The learner's collectives in a group of workers: the step's batch (H and G) and the sums (R).

    Every method is a collective: every worker calls it, in the same order, the same number of times.
    :class:`ExactGroup` serves a learner with them.

    Parameters
    ----------
    ctx : DistributedContext
        The group (its default process group carries the tensors, its control group the host integers).

    Examples
    --------
    A group of one, the same calls as in a group of many:

    >>> import tempfile
    >>> store = tempfile.NamedTemporaryFile(delete=False).name
    >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    >>> group = GroupReducer(DistributedContext(rank=0, world_size=1))
    >>> batch = group.gather(torch.arange(6.0).reshape(3, 2), torch.tensor([1, 0, 1]))
    >>> batch.counts, batch.positions, batch.y.tolist()
    ([3], [0, 1, 2], [1, 0, 1])
    >>> group.all_reduce([torch.ones(2, 2), torch.tensor(3.0)])[1]
    tensor(3.)
    >>> group.gather(torch.zeros(0, 2), None) is None   # no worker has a row: no step
    True
    >>> dist.destroy_process_group()
    """

    def __init__(self, ctx: DistributedContext) -> None:
        self.ctx = ctx

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    # -- H and G: the step's global batch --------------------------------------------------------------------------
    def gather(self, x: torch.Tensor, y: torch.Tensor | None,
               source_dtype: torch.dtype | None = None) -> GroupBatch | None:
        """Every worker's rows (``x`` of shape ``[n, *sample_shape]``, ``n`` possibly 0) and labels, in the group's
        order; ``None`` when no worker has a row. A disagreement (sample shapes, labels present or not) raises
        the same ``ValueError`` on every worker, since every worker sees the same counts. ``source_dtype``: the
        dtype this worker's rows arrived in; the batch's is the one every worker with rows reports, if they agree."""
        rows = x.shape[0]
        code = 0 if y is None else LABEL_DTYPES.index(y.dtype) if y.dtype in LABEL_DTYPES else -1
        source = LABEL_DTYPES.index(source_dtype) if source_dtype in LABEL_DTYPES else 0
        facts = self.ctx.gather_ints([rows, code, math.prod(x.shape[1:]), x.element_size(), source])
        counts = [f[0] for f in facts]
        if not sum(counts):
            return None
        if len({(f[2], f[3]) for f in facts}) != 1:
            raise ValueError(f"the workers' samples differ in size or type: {[tuple(f[2:]) for f in facts]} "
                             "(elements, bytes each); every worker must pass [rows, *sample_shape]")
        codes = {f[1] for f in facts if f[0]}
        if -1 in codes or len({c != 0 for c in codes}) != 1:
            raise ValueError("labels must be given by every worker with rows or by none, as integers or floats")
        label = LABEL_DTYPES[next(f[1] for f in facts if f[0])]
        y_local = None if label is None else (y if y is not None else x.new_zeros(0)).to(label)
        order, positions = interleave(counts, self.ctx.rank)
        flat = _row_bytes(x, y_local)
        most = max(counts)
        padded = flat.new_zeros((most, flat.shape[1]))
        padded[:rows] = flat
        out = flat.new_empty((most * self.world_size, flat.shape[1]))
        _gather_into(out, padded)
        rows_all = out.view(self.world_size, most, -1).transpose(0, 1).reshape(len(out), -1)
        if len(order) < len(rows_all):  # uneven counts: leave the padding out (even ones need no index)
            rows_all = rows_all.index_select(0, torch.tensor(order, dtype=torch.long, device=out.device))
        width = x.flatten(1).shape[1] * x.element_size()
        x_all = rows_all[:, :width].contiguous().view(x.dtype).reshape(len(order), *x.shape[1:])
        y_all = None if label is None else rows_all[:, width:].contiguous().view(label).reshape(-1)
        sources = {f[4] for f in facts if f[0]}
        return GroupBatch(counts, positions, x_all, y_all, y_local,
                          LABEL_DTYPES[sources.pop()] if len(sources) == 1 else None)

    # -- R: sums -------------------------------------------------------------------------------------------------
    def all_reduce(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor summed over the workers, in one collective: views of one flat buffer in the tensors' common
        dtype, shaped as they are."""
        dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
        flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
        dist.all_reduce(flat)
        return [v.view(t.shape) for v, t in zip(flat.split([t.numel() for t in tensors]), tensors)]

    def reduce_step(self, params: Sequence[nn.Parameter], sums: Sequence[torch.Tensor],
                    importance: Sequence[torch.Tensor] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """R: the parameters' gradients summed over the workers, in place, with the 0-d ``sums`` (stacked) and
        the ``importance`` sums in the same buffer; returns those two, summed.

        Every parameter leaves with a gradient: one without (a worker with no rows computed nothing, or the
        model does not use the parameter) gets zeros, so that the optimizer steps the same parameters on every
        worker."""
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        out = self.all_reduce([*(p.grad for p in params), *importance, torch.stack(list(sums))])
        torch._foreach_copy_([p.grad for p in params], out[:len(params)])
        return out[-1], out[len(params):-1]

    def any(self, flag: bool) -> bool:
        """Whether any worker's ``flag`` is true (host side, the control group)."""
        return bool(self.ctx.reduce_ints([int(flag)], op="max")[0])

    # -- starting alike --------------------------------------------------------------------------------------------
    def same_seed(self, seed: int) -> int:
        """Rank 0's ``seed`` on every worker."""
        return int(self.ctx.broadcast_object(int(seed)))

    @torch.no_grad()
    def broadcast_module(self, module: nn.Module) -> None:
        """Rank 0's parameters and buffers on every worker, in place."""
        for t in module.state_dict().values():
            dist.broadcast(t, src=0)


class GroupCollective(Alone):
    """What the collectives of a group share: the group, its reducer, the workers started alike (rank 0's model)
    and sums over the whole group.

    Parameters
    ----------
    ctx : DistributedContext
        The group.
    """

    def __init__(self, ctx: DistributedContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.reducer = GroupReducer(ctx)

    @property
    def world_size(self) -> int:
        return self.ctx.world_size

    @property
    def rank(self) -> int:
        return self.ctx.rank

    def start(self, model: nn.Module) -> None:
        self.reducer.broadcast_module(model)

    def all_reduce(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.reducer.all_reduce(tensors)


class ExactGroup(GroupCollective):
    """The collective of a learner in a group of the exact mode: every step is the group's, over the union of the
    workers' rows (see the module's docstring); the period, as alone, is ``sync_every`` steps, whose losses are
    the group's already.

    Parameters
    ----------
    ctx : DistributedContext
        The group.

    Examples
    --------
    A group of one, the same calls as in a group of many:

    >>> import tempfile
    >>> store = tempfile.NamedTemporaryFile(delete=False).name
    >>> dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    >>> group = ExactGroup(DistributedContext(rank=0, world_size=1))
    >>> rows = group.begin(torch.ones(3, 2), torch.tensor([1, 0, 1]), None, torch.float32)
    >>> rows.total, rows.positions, rows.y.tolist()
    (3, [0, 1, 2], [1, 0, 1])
    >>> group.begin(torch.ones(0, 2), None, (2,), torch.float32) is None   # no worker has a row: no step
    True
    >>> dist.destroy_process_group()
    """

    sums_gradients = True

    def check_settings(self, *, hard_buffer: int, importance_source: str,
                       replay_retrieval: str = "uniform") -> None:
        if hard_buffer:  # the highest-loss rows of each worker are not the union's
            raise ValueError("hard_buffer > 0 is not supported in a group of workers in the exact mode; set "
                             "hard_buffer = 0")
        if replay_retrieval != "uniform":  # the virtual step would need the union's batch on every worker
            raise ValueError(f"replay_retrieval = {replay_retrieval!r} is not supported in a group of workers in "
                             "the exact mode; set replay_retrieval = \"uniform\"")

    def replay_seed(self, seed: int) -> int:
        return self.reducer.same_seed(seed)  # every worker keeps the same reservoir of the union

    def begin(self, x: torch.Tensor, y: torch.Tensor | None, sample_shape: tuple[int, ...] | None,
              dtype: torch.dtype, source_dtype: torch.dtype | None = None) -> StepRows | None:
        if not x.shape[0]:  # none given, or all refused: the stream's shape and dtype, as the others send
            x = x.new_zeros((0, *(sample_shape or x.shape[1:])), dtype=dtype)
        batch = self.reducer.gather(x, y, source_dtype)
        if batch is None:
            return None
        return StepRows(x, batch.y_local, batch.x, batch.y, batch.total, batch.positions, batch.source_dtype)

    def reduce_step(self, params: Sequence[nn.Parameter], sums: Sequence[torch.Tensor],
                    importance: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        summed, importance = self.reducer.reduce_step(params, sums, importance)
        return list(summed.unbind()), importance

    def sum_step(self, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return self.reducer.all_reduce(tensors)

    # each worker measures its own rows, the group sums, every worker folds the same sums
    def capture_importance(self, meter: Any, rows: int, batch: int) -> list[torch.Tensor] | None:
        return meter.captured_sum(rows, batch)

    def chain_fold(self, meter: Any, index: Sequence[int], batch: int) -> tuple[tuple, list[torch.Tensor]]:
        sums = [torch.zeros_like(t) for t in meter.synapses.running]
        # into zeros with the weight ``batch``: the mean over this worker's rows, as their sum
        return ([sums[i] for i in index], lambda: float(batch)), sums

    def fold_importance(self, meter: Any, importance: Sequence[torch.Tensor], total: int) -> None:
        meter.fold_sum(list(importance), total)

    def measure_importance(self, meter: Any, x: torch.Tensor, total: int) -> None:
        meter.fold_sum(self.sum_step(meter.measure_sum(x)), total)

    def any(self, flag: bool) -> bool:
        return self.reducer.any(flag)


def _row_bytes(x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    """Each row of ``x`` (and its label) as bytes, ``[rows, bytes]``: one gather carries any dtypes, bit for bit."""
    # A fresh dense copy: contiguous() keeps the odd stride of a dimension of size 1, which view() refuses.
    dense = [x.flatten(1)] + ([] if y is None else [y.reshape(-1, 1)])
    return torch.cat([t.clone(memory_format=torch.contiguous_format).view(torch.uint8) for t in dense], dim=1)
