"""The averaging mode: two workers step alone and average every k steps of the group.

Real processes (``torch.multiprocessing`` spawn, gloo, a ``file://`` store), worker r learning rows ``r::2`` of
each block, the blocks of odd sizes, of one row (worker 1 has none) and of none (nobody has rows), as in
``test_distributed_exact``:

- with k = 1, plain SGD and no per-worker state (no replay, no scaling), averaging after each step is the
  exact step: the workers end with the state of one learner fed the union of the rows (model, Omega, theta*,
  running importance, detector, consolidations), to float64 rounding;
- with the defaults (Adam, replay, input scaling) and k = 4, the workers end alike, bit for bit, in everything
  they average; the scaler's statistics are those of every row of every worker; the counts are the group's;
  every worker consolidated at the same steps; and the group learned.
"""

from __future__ import annotations

import datetime

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_distributed_exact import SIZES, WORLD, _blocks, _compare

from streammas import OnlineMAS
from streammas.collective import DistributedContext
from streammas.models import MLPAutoencoder

FEATURES = 6
SEED = 11
QUICK_DETECTOR = dict(rule="absolute", window=4, patience=1, mean_threshold=2.0, var_threshold=1.0)
CASES = {
    # k = 1 and plain SGD: exact
    "sgd-every-1": (1, torch.float64, dict(optimizer="sgd", lr=0.05, replay=0, scale_inputs="none", reg_lambda=0.1,
                                           prox_every=1, importance_every=2, sync_every=1, compact_state=False,
                                           consolidate_at="plateau", plateau=QUICK_DETECTOR)),
    # the defaults, a quick detector, and a hard buffer (each worker's own: refused only by the exact mode)
    "defaults-every-4": (4, torch.float32, dict(replay=64, hard_buffer=8, reg_lambda=0.1, importance_every=2,
                                                consolidate_at="plateau", plateau=QUICK_DETECTOR)),
}
PASSES = {"sgd-every-1": 1, "defaults-every-4": 8}
CONSOLIDATE_AFTER = 9  # an explicit consolidation mid-period (k = 4), on every worker and the reference alike


def _learner(case: str, ctx: DistributedContext | None) -> OnlineMAS:
    torch.manual_seed(SEED)
    _, dtype, settings = CASES[case]
    return OnlineMAS(MLPAutoencoder(FEATURES, hidden=(8,), latent=3).to(dtype), distributed=ctx, **settings)


def _stream(case: str) -> list[torch.Tensor]:
    """The blocks, ``PASSES`` times; in standard units where the learner does not scale them (plain SGD on raw
    units overflows)."""
    blocks = [x for x, _ in _blocks(CASES[case][1])] * PASSES[case]
    return [(x - 100.0) / 200.0 for x in blocks] if CASES[case][2].get("scale_inputs") == "none" else blocks


def _run(case: str, rows: slice, ctx: DistributedContext | None) -> OnlineMAS:
    """Learn every block's ``rows`` (a group of one, or alone)."""
    learner = _learner(case, ctx)
    for k, x in enumerate(_stream(case)):
        if ctx is None and not len(x):  # alone, a block of no rows is simply not learned
            continue
        learner.learn_many(x[rows])
        if k == CONSOLIDATE_AFTER:
            learner.consolidate()
    learner.flush()
    return learner


def _loss(learner: OnlineMAS, case: str) -> float:
    """The mean loss over every row of one pass (in the learner's scaled units)."""
    return float(learner.score_many(torch.cat(_stream(case)[:len(SIZES)])).mean())


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        for case, (every, _, _) in CASES.items():
            ctx = DistributedContext(rank, WORLD, mode="average", average_every=every)
            learner = _run(case, slice(rank, None, WORLD), ctx)
            torch.save({"state": learner.state_dict(), "loss": _loss(learner, case)}, f"{out}/{case}-{rank}.pt")
        dist.barrier()  # leave together: a lone gloo teardown while the peer still talks can abort
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def workers(tmp_path_factory) -> dict[str, list[dict]]:
    out = tmp_path_factory.mktemp("average")
    mp.spawn(_worker, args=(str(out / "store"), str(out)), nprocs=WORLD, join=True, start_method="spawn")
    return {case: [torch.load(out / f"{case}-{rank}.pt", weights_only=False) for rank in range(WORLD)]
            for case in CASES}


def _averaging_steps(case: str) -> set[int]:
    """The group's step count at each averaging: every k calls of learn_many (a block of no rows is a call, not a
    step), and at the explicit consolidation, after which the period starts over."""
    every, steps, calls, found = CASES[case][0], 0, 0, set()
    for k, x in enumerate(_stream(case)):
        steps, calls = steps + bool(len(x)), calls + 1
        if calls == every or k == CONSOLIDATE_AFTER:
            found.add(steps)
            calls = 0
    return found


def _consolidation_steps(state: dict) -> list[int]:
    return [e["step"] for e in state["events"] if e["kind"] == "consolidation"]


@pytest.mark.slow  # two worker processes, spawned, through gloo
def test_every_step_with_plain_sgd_is_one_learner_fed_the_union(workers):
    results = workers["sgd-every-1"]
    reference = _run("sgd-every-1", slice(None), None)
    expected = reference.state_dict()
    assert expected["synapses"]["consolidations"] >= 2  # the detector's and the explicit one
    for rank, result in enumerate(results):
        state = result["state"]
        # the proximal schedule and the optimizer count each worker's own steps (worker 1 has fewer); the replay
        # memory (empty here) draws from each worker's own generator
        for key in ("prox_owed", "prox_due", "optimizer", "replay"):
            state.pop(key), expected.pop(key, None)
        _compare(state, expected, f"rank {rank}", 1e-10, 1e-10)


@pytest.mark.slow  # the same two workers
def test_the_defaults_end_alike_on_every_worker_and_learn(workers):
    a, b = (r["state"] for r in workers["defaults-every-4"])
    shared = ("model", "optimizer", "synapses", "detector", "scaler", "samples_seen", "steps", "events", "counters",
              "prox_owed", "prox_due")
    for key in shared:
        _compare(a[key], b[key], key, 0.0, 0.0)
    assert a["optimizer"]["state"], "Adam's moments are averaged once every worker has them"
    assert a["replay"]["seen"] + b["replay"]["seen"] == a["samples_seen"]  # each reservoir holds its worker's rows
    reference = _run("defaults-every-4", slice(None), None)
    assert a["samples_seen"] == reference.samples_seen == sum(SIZES) * PASSES["defaults-every-4"]
    assert a["steps"] == reference.steps == len([n for n in SIZES if n]) * PASSES["defaults-every-4"]
    # the scaler's statistics are those of every row of the group, as one learner fed the union has them
    for key in ("count", "mean", "var"):
        torch.testing.assert_close(a["scaler"][key], reference.scaler.state_dict()[key], rtol=1e-9, atol=1e-9)
    steps = _consolidation_steps(a)
    assert len(steps) >= 2 and steps == _consolidation_steps(b)
    assert set(steps) <= _averaging_steps("defaults-every-4"), steps  # decided where the group agrees
    # it learned: at least three quarters of what one learner fed every row learns (from the untrained model)
    fresh = _learner("defaults-every-4", None)
    fresh.scaler.load_state_dict(reference.scaler.state_dict())  # the same units: only the weights differ
    untrained = _loss(fresh, "defaults-every-4")
    group, alone = workers["defaults-every-4"][0]["loss"], _loss(reference, "defaults-every-4")
    assert alone < untrained and group <= alone + 0.25 * (untrained - alone), (group, alone, untrained)


def test_a_context_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        DistributedContext(0, 2, mode="gossip")
    with pytest.raises(ValueError, match="average_every"):
        DistributedContext(0, 2, mode="average", average_every=0)


def test_importance_on_each_workers_own_buffer_is_refused():
    # refused before any collective: each worker's hard buffer holds its own rows, so the workers' Omega would differ
    with pytest.raises(ValueError, match="averaging mode"):
        OnlineMAS(MLPAutoencoder(FEATURES, hidden=(8,), latent=3), hard_buffer=8, importance_source="buffer",
                  distributed=DistributedContext(rank=0, world_size=2, mode="average"))
