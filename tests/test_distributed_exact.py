"""Data parallelism is exact: two workers, each learning its own rows of every block, end with the state of one
learner fed the whole blocks, and with the same state as each other.

Real processes (``torch.multiprocessing`` spawn, gloo, a ``file://`` store): each worker gets rows ``r::2`` of a
block, so the group's interleaved order is the block's own, and the single reference learner takes the block
as it is. The blocks include odd sizes, a block of one row (worker 1 has none, on the very first step too) and a
block of none (no worker steps). The models are float64, so the tolerances can be tight: the sums run in
another order than the single learner's, and that is the only difference. Omega is kept in the parameters'
dtype (``compact_state=False``), since rounding to bfloat16 may turn a last-bit difference into one of 0.4%.
"""

from __future__ import annotations

import datetime
import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from streammas import OnlineMAS
from streammas.collective import DistributedContext
from streammas.learner.importance.registry import register_mode_free
from streammas.learner.update import FusedUpdate
from streammas.models import MLPAutoencoder, MLPClassifier

WORLD = 2
FEATURES = 6
CLASSES = 3
SEED = 7
#: rows in each step's block: odd sizes, one row (worker 1 has none), none at all (nobody steps)
SIZES = [1, 16, 16, 15, 0, 16, 9, 16, 1, 16, 13, 16, 16, 16, 11, 16, 16, 1, 16, 16, 15, 16, 16, 16]
CONSOLIDATE_AFTER = 7  # an explicit consolidation, on every worker and the reference alike
#: in the "recovery" case the weights run away after this block, every loss overflows, and after two skipped
#: updates theta* is restored: at the block of one row, where worker 1 has none but takes part in the check
BLOW_UP_AFTER = 15
#: a small replay memory, the regulariser on, importance measured every other step, and a detector quick enough
#: to find plateaus (and a peak) within these few steps, each consolidating
COMMON = dict(replay=64, reg_lambda=0.1, importance_every=2, sync_every=4, prox_every=2, compact_state=False,
              consolidate_at="plateau",
              plateau=dict(rule="absolute", window=4, patience=1, mean_threshold=2.0, var_threshold=1.0))


class SkipNet(nn.Module):
    """Not a chain of layers (the output adds a skip connection): the autograd step."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(features, 8)
        self.out = nn.Linear(8, features)
        self.skip = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(x))) + self.skip(x)


class SkipNetApart(SkipNet):
    """The same, not declared mode-free: its importance is measured in a separate pass after the step."""


register_mode_free(SkipNet)  # the training forward serves the importance (captured in the step's own pass)

CASES = {
    "fused-adam": (lambda: MLPAutoencoder(FEATURES, hidden=(8,), latent=3), dict(lr=0.01)),
    "fused-sgd": (lambda: MLPAutoencoder(FEATURES, hidden=(8,), latent=3), dict(optimizer="sgd", lr=0.05, replay=0)),
    "autograd": (lambda: SkipNet(FEATURES), dict(lr=0.01, steps_per_batch=2)),
    "autograd-apart": (lambda: SkipNetApart(FEATURES), dict(lr=0.01, fused_step=False)),
    "classification": (lambda: MLPClassifier(FEATURES, CLASSES, hidden=(8,)),
                       dict(lr=0.01, objective="classification")),
    "recovery": (lambda: MLPAutoencoder(FEATURES, hidden=(8,), latent=3), dict(lr=0.01, recover_after=2, sync_every=1)),
    "memory": (lambda: MLPAutoencoder(FEATURES, hidden=(8,), latent=3),
               dict(lr=0.01, replay_ratio=2, replay_retention="balanced")),
}
DTYPES = {name: torch.float64 for name in CASES} | {"fused-adam-float32": torch.float32}
CASES["fused-adam-float32"] = CASES["fused-adam"]


def _blocks(dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Two regimes in raw units (the scaler has work to do), with labels."""
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(sum(SIZES), FEATURES, generator=g, dtype=torch.float64)
    x[len(x) // 2:] = x[len(x) // 2:] * 3.0 + 5.0
    x = (x * 40.0 + 100.0).to(dtype)
    y = torch.randint(0, CLASSES, (len(x),), generator=g)
    starts = [sum(SIZES[:k]) for k in range(len(SIZES))]
    return [(x[s:s + n], y[s:s + n]) for s, n in zip(starts, SIZES)]


def _learner(case: str, ctx: DistributedContext | None) -> OnlineMAS:
    torch.manual_seed(SEED)
    build, settings = CASES[case]
    model = build().to(DTYPES[case])
    return OnlineMAS(model, distributed=ctx, **{**COMMON, **settings})


def _run(case: str, rows: slice, ctx: DistributedContext | None) -> tuple[OnlineMAS, list[torch.Tensor]]:
    """Learn every block's ``rows``; returns the learner and each step's scores."""
    learner = _learner(case, ctx)
    labels = CASES[case][1].get("objective") == "classification"
    scores = []
    for k, (x, y) in enumerate(_blocks(DTYPES[case])):
        if ctx is None and not len(x):  # alone, a block of no rows is simply not learned
            scores.append(x[:0, 0])
        else:  # in a group, a worker with no rows still takes part in the step
            scores.append(learner.learn_many(x[rows], y[rows] if labels else None).detach().clone())
        if k == CONSOLIDATE_AFTER:
            learner.consolidate()
        if k == BLOW_UP_AFTER and case == "recovery":
            with torch.no_grad():
                torch._foreach_mul_(list(learner.model.parameters()), 1e300)
    learner.flush()
    return learner, scores


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    ctx = DistributedContext(rank, WORLD)
    try:
        for case in DTYPES:
            learner, scores = _run(case, slice(rank, None, WORLD), ctx)
            kind = type(learner.update).__name__
            torch.save({"state": learner.state_dict(), "scores": scores, "engine": kind}, f"{out}/{case}-{rank}.pt")
        ctx.barrier()  # leave together: a lone gloo teardown while the peer still talks can abort
    finally:
        ctx.close()


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> dict[str, list[dict]]:
    """Both workers' final states and scores, by case (one group runs every case)."""
    out = tmp_path_factory.mktemp("workers")
    mp.spawn(_worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True, start_method="spawn")
    return {case: [torch.load(out / f"{case}-{rank}.pt", weights_only=False) for rank in range(WORLD)]
            for case in DTYPES}


def _compare(a, b, path: str, rtol: float, atol: float) -> None:
    """``a`` and ``b`` alike: tensors and floats within the tolerances (0: bit for bit), the rest equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, path
        if rtol == atol == 0:
            assert torch.equal(a.nan_to_num(), b.nan_to_num()), path
        else:
            torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"{path}: {m}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _compare(a[key], b[key], f"{path}.{key}", rtol, atol)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _compare(u, v, f"{path}[{i}]", rtol, atol)
    elif isinstance(a, float) and not (rtol == atol == 0):
        assert math.isclose(a, b, rel_tol=max(rtol, 1e-6), abs_tol=atol) or (math.isnan(a) and math.isnan(b)), path
    elif hasattr(a, "__dataclass_fields__"):
        _compare(vars(a), vars(b), path, rtol, atol)
    else:
        assert a == b or (a != a and b != b), f"{path}: {a!r} != {b!r}"


@pytest.mark.slow  # two worker processes, spawned, through gloo
@pytest.mark.parametrize("case", list(DTYPES))
def test_workers_end_alike_and_as_one_learner_fed_the_union(workers, case):
    results = workers[case]
    # Both workers: the same state, bit for bit (what follows each all-reduce runs on the same numbers).
    _compare(results[0]["state"], results[1]["state"], "state", 0.0, 0.0)
    expected_engine = "AutogradUpdate" if case.startswith(("autograd", "classification")) else "FusedUpdate"
    assert results[0]["engine"] == expected_engine

    reference, ref_scores = _run(case, slice(None), None)
    assert isinstance(reference.update, FusedUpdate) == (expected_engine == "FusedUpdate")
    state = reference.state_dict()
    assert state["steps"] == len([n for n in SIZES if n]) and state["samples_seen"] == sum(SIZES)
    assert state["synapses"]["consolidations"] >= 1
    assert state["replay"]["seen"] == (0 if CASES[case][1].get("replay") == 0 else sum(SIZES))
    if case == "recovery":
        assert state["counters"]["recoveries"] == 1 and state["counters"]["skipped_updates"] == 2
    tight = DTYPES[case] == torch.float64
    rtol, atol = (1e-10, 1e-10) if tight else (1e-5, 1e-6)
    _compare(results[0]["state"], state, "state", rtol, atol)
    # The scores, back in the block's order (worker r had rows r::2).
    for k, expected in enumerate(ref_scores):
        merged = torch.empty_like(expected)
        for rank in range(WORLD):
            merged[rank::WORLD] = results[rank]["scores"][k]
        torch.testing.assert_close(merged, expected, rtol=rtol, atol=atol, equal_nan=True)


def test_a_hard_buffer_is_refused_in_a_group():
    ctx = DistributedContext(rank=0, world_size=2)  # only the size is read before the refusal
    with pytest.raises(ValueError, match="hard_buffer"):
        OnlineMAS(MLPAutoencoder(FEATURES, hidden=(8,), latent=3), hard_buffer=8, distributed=ctx)


def test_interfered_retrieval_is_refused_in_a_group():
    ctx = DistributedContext(rank=0, world_size=2)
    with pytest.raises(ValueError, match="replay_retrieval"):
        OnlineMAS(MLPAutoencoder(FEATURES, hidden=(8,), latent=3), replay_retrieval="interfered", distributed=ctx)
