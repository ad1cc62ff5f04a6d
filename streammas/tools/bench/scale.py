"""``streammas bench scale``: the learner data-parallel on 1 and 2 worker processes (gloo on the CPU), in the
exact mode and the averaging mode.

Weak scaling, as the service runs it: every worker learns ``--batch-size`` rows per step, so N workers learn N
times the rows of one in a step that costs one worker's step plus the collectives. Reported per model (the
default MLP autoencoder on 64 features, the conv autoencoder on 1x28x28 images):

- samples per second at 1 and 2 workers (medians over ``--repeats`` timed runs), and the parallel efficiency
  ``rate(N) / (N * rate(1))``;
- the gradient all-reduce alone (``parameters x 4 bytes`` on the group) against the whole step;
- the quality each mode buys: two regimes of a generated stream learned one after the other (``--quality-steps``
  group steps each), then the held-out error of each, for one worker fed the group's whole batch (what the exact
  mode equals) and for the two workers in each mode;
- on paper, the efficiency to expect at 8 and 64 workers from the measured step time and the all-reduce
  volume, with a ring all-reduce: ``2 (N-1)/N x bytes / bandwidth + 2 (N-1) x latency`` (the bandwidths and
  latency assumed are printed with it; a GPU's step is faster than this CPU's, which lowers the efficiency).

On a 2-core machine two workers share the cores that one worker's step already uses, so the efficiency
measured here is a floor, not what two machines (or two GPUs) give.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

#: ``name -> (model kind, sample shape)``
MODELS = {"mlp": ("mlp-autoencoder", (64,)), "conv": ("conv-autoencoder", (1, 28, 28))}
#: Assumed links for the estimate: (workers, bandwidth bytes/s, latency s per hop, what that is).
LINKS = ((8, 100e9, 10e-6, "8 GPUs on NVLink, ~100 GB/s"), (64, 25e9, 20e-6, "64 GPUs, 200 Gb/s InfiniBand"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", default="mlp,conv", help="comma-separated: mlp, conv")
    parser.add_argument("--batch-size", type=int, default=32, help="rows per worker per step (default 32)")
    parser.add_argument("--steps", type=int, default=100, help="timed steps per run (default 100)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting; medians (default 3)")
    parser.add_argument("--modes", default="exact,average", help="comma-separated: exact, average (default both)")
    parser.add_argument("--average-every", type=int, default=16,
                        help="steps between two averagings in the average mode (default 16)")
    parser.add_argument("--quality-steps", type=int, default=300,
                        help="steps of the group per regime in the held-out error measurement (default 300; 0: skip)")
    parser.add_argument("--daemon", action="store_true",
                        help="also time the whole service (streammas run --workers N) on a generated file")
    parser.add_argument("--daemon-rows", type=int, default=96_000, help="rows of that file (default 96,000)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _regimes(shape: tuple, seed: int = 123) -> tuple[list[torch.Tensor], torch.Generator]:
    """Two regimes of a generated stream: samples near an 8-dimensional subspace of each's own (which an
    autoencoder can learn), in raw units of a few tens."""
    g = torch.Generator().manual_seed(seed)
    features = math.prod(shape)
    return [torch.randn(8, features, generator=g) * 10.0 + 5.0 for _ in range(2)], g


def _draw(base: torch.Tensor, rows: int, shape: tuple, g: torch.Generator) -> torch.Tensor:
    z = torch.randn(rows, base.shape[0], generator=g)
    return (z @ base + torch.randn(rows, base.shape[1], generator=g)).reshape(rows, *shape)


def _heldout(learner, shape: tuple, rank: int, world: int, batch: int, steps: int) -> list[float]:
    """Learn regime A, then B, ``steps`` group steps each (every worker its rows ``r::world`` of each global
    batch); the mean loss on fresh samples of each regime afterwards, in the learner's own units."""
    bases, g = _regimes(shape)
    for base in bases:
        for _ in range(steps):
            learner.learn_many(_draw(base, batch * world, shape, g)[rank::world])
    learner.flush()
    return [float(learner.score_many(_draw(base, 2000, shape, g)).mean()) for base in bases]


def _worker(rank: int, world: int, store: str, kind: str, shape: tuple, batch: int, steps: int, repeats: int,
            out: str, mode: str, every: int, quality_steps: int) -> None:
    torch.set_num_threads(1)
    from streammas.collective import DistributedContext
    from streammas.learner import OnlineMAS
    from streammas.models import build_model

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    ctx = DistributedContext(rank, world, mode=mode, average_every=every) if world > 1 else None
    torch.manual_seed(0)
    learner = OnlineMAS(build_model(kind, shape), distributed=ctx)
    x = torch.rand(batch, *shape, generator=torch.Generator().manual_seed(rank))
    for _ in range(10):
        learner.learn_many(x)
    learner.flush()
    step_times = []
    for _ in range(repeats):
        dist.barrier()
        started = time.perf_counter()
        for _ in range(steps):
            learner.learn_many(x)
        learner.flush()
        step_times.append((time.perf_counter() - started) / steps)
    params = sum(p.numel() for p in learner.model.parameters())
    grads = torch.zeros(params)
    reduce_times = []
    for _ in range(repeats):
        dist.barrier()
        started = time.perf_counter()
        for _ in range(steps):
            dist.all_reduce(grads)
        reduce_times.append((time.perf_counter() - started) / steps)
    heldout = None
    if quality_steps:  # alone: the batch of the whole group (the exact mode's reference)
        torch.manual_seed(0)
        fresh = OnlineMAS(build_model(kind, shape), distributed=ctx)
        heldout = _heldout(fresh, shape, rank, world, batch * (2 if world == 1 else 1), quality_steps)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"step": statistics.median(step_times), "allreduce": statistics.median(reduce_times),
                       "parameters": params, "heldout": heldout}, f)
    dist.barrier()  # leave together: a worker tearing gloo down while its peer still talks can abort
    dist.destroy_process_group()


def _measure(world: int, kind: str, shape: tuple, args: argparse.Namespace, mode: str = "exact") -> dict:
    with tempfile.TemporaryDirectory() as d:
        store, out = os.path.join(d, "store"), os.path.join(d, "out.json")
        mp.start_processes(_worker, args=(world, store, kind, shape, args.batch_size, args.steps, args.repeats, out,
                                          mode, args.average_every, args.quality_steps),
                           nprocs=world, start_method="spawn", join=True)
        with open(out) as f:
            return json.load(f)


def estimate(step_s: float, parameters: int, workers: int, bandwidth: float, latency: float, *,
             copies: int = 1, every: int = 1) -> float:
    """Parallel efficiency of ``workers`` learners whose step takes ``step_s`` plus, every ``every`` steps, a ring
    all-reduce of ``copies x parameters x 4`` bytes (the exact mode: the gradients every step; the averaging
    mode with Adam: weights, two moments and the importance every ``k`` steps).

    >>> round(estimate(0.001, 1_000_000, 8, 100e9, 10e-6), 3)
    0.826
    >>> round(estimate(0.001, 1_000_000, 8, 100e9, 10e-6, copies=4, every=16), 3)
    0.974
    """
    volume = copies * parameters * 4.0
    reduce_s = (2 * (workers - 1) / workers * volume / bandwidth + 2 * (workers - 1) * latency) / every
    return step_s / (step_s + reduce_s)


#: Per mode: how many parameter-sized tensors an exchange all-reduces, and how often (None: every k steps).
VOLUME = {"exact": (1, 1), "average": (4, None)}


def run(args: argparse.Namespace) -> int:
    results = {}
    modes = [m.strip() for m in args.modes.split(",")]
    for name in args.models.split(","):
        kind, shape = MODELS[name.strip()]
        one = _measure(1, kind, shape, args)
        rate1 = args.batch_size / one["step"]
        for mode in modes:
            two = _measure(2, kind, shape, args, mode)
            rate2 = 2 * args.batch_size / two["step"]
            copies, every = VOLUME[mode]
            every = every or args.average_every
            results[f"{name}-{mode}"] = {
                "model": kind, "mode": mode, "average_every": args.average_every if mode == "average" else None,
                "sample_shape": list(shape), "parameters": one["parameters"],
                "step_ms": {"1": one["step"] * 1e3, "2": two["step"] * 1e3},
                "samples_per_s": {"1": rate1, "2": rate2}, "efficiency_2": rate2 / (2 * rate1),
                "allreduce_ms_2": two["allreduce"] * 1e3, "allreduce_share_of_step": two["allreduce"] / two["step"],
                "estimated_efficiency": {str(n): estimate(one["step"], one["parameters"], n, bw, lat, copies=copies,
                                                          every=every) for n, bw, lat, _ in LINKS},
                # regime A, then B: the held-out error of each afterwards, one worker with the group's batch first
                "heldout_error": {"1": one["heldout"], "2": two["heldout"]},
            }
    daemon = None
    if args.daemon:
        from streammas.tools.bench import scale_daemon

        daemon = scale_daemon.measure(args.daemon_rows, args.batch_size, modes, args.average_every)
        results["daemon"] = daemon
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"streammas bench scale: {args.batch_size} rows per worker per step, {args.steps} steps, "
          f"median of {args.repeats}; gloo on the CPU, {os.cpu_count()} cores; average mode: k = {args.average_every}")
    print("| model | mode | parameters | samples/s, 1 worker | 2 workers | efficiency | gradient all-reduce / step (2) "
          "| estimated efficiency, 8 / 64 | held-out error A / B, 1 worker | 2 workers |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in (r for key, r in results.items() if key != "daemon"):
        est, err = r["estimated_efficiency"], r["heldout_error"]
        errors = ["" if e is None else f"{e[0]:.3f} / {e[1]:.3f}" for e in (err["1"], err["2"])]
        print(f"| {r['model']} | {r['mode']} | {r['parameters']:,} | {r['samples_per_s']['1']:,.0f} | "
              f"{r['samples_per_s']['2']:,.0f} | {r['efficiency_2']:.2f} | "
              f"{r['allreduce_ms_2']:.3f} ms / {r['step_ms']['2']:.3f} ms ({r['allreduce_share_of_step']:.0%}) | "
              f"{est['8']:.2f} / {est['64']:.2f} | {errors[0]} | {errors[1]} |")
    print("estimates assume " + "; ".join(f"{n}: {what}, {lat * 1e6:.0f} us per hop" for n, _, lat, what in LINKS)
          + ", and this machine's step time")
    if daemon is not None:
        scale_daemon.print_table(daemon, args.daemon_rows, args.batch_size, args.average_every)
    return 0
