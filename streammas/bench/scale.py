"""``streammas bench scale``: the learner data-parallel on 1 and 2 worker processes (gloo on the CPU).

Weak scaling, as the service runs it: every worker learns ``--batch-size`` rows per step, so N workers learn N
times the rows of one in a step that costs one worker's step plus the collectives. Reported per model (the
default MLP autoencoder on 64 features, the conv autoencoder on 1x28x28 images):

- samples per second at 1 and 2 workers (medians over ``--repeats`` timed runs), and the parallel efficiency
  ``rate(N) / (N * rate(1))``;
- the gradient all-reduce alone (``parameters x 4 bytes`` on the group) against the whole step;
- on paper, the efficiency to expect at 8 and 64 workers from the measured step time and the all-reduce
  volume, with a ring all-reduce: ``2 (N-1)/N x bytes / bandwidth + 2 (N-1) x latency`` (the bandwidths and
  latency assumed are printed with it; a GPU's step is faster than this CPU's, which lowers the efficiency).

On a 2-core machine two workers share the cores that one worker's step already uses, so the efficiency
measured here is a floor, not what two machines (or two GPUs) give.
"""

from __future__ import annotations

import argparse
import json
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
    parser.add_argument("--json", action="store_true", help="print the results as JSON")


def _worker(rank: int, world: int, store: str, kind: str, shape: tuple, batch: int, steps: int, repeats: int,
            out: str) -> None:
    torch.set_num_threads(1)
    from streammas import OnlineMAS
    from streammas.distributed import DistributedContext
    from streammas.models import build_model

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    ctx = DistributedContext(rank, world) if world > 1 else None
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
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"step": statistics.median(step_times), "allreduce": statistics.median(reduce_times),
                       "parameters": params}, f)
    dist.barrier()  # leave together: a worker tearing gloo down while its peer still talks can abort
    dist.destroy_process_group()


def _measure(world: int, kind: str, shape: tuple, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as d:
        store, out = os.path.join(d, "store"), os.path.join(d, "out.json")
        mp.start_processes(_worker, args=(world, store, kind, shape, args.batch_size, args.steps, args.repeats, out),
                           nprocs=world, start_method="spawn", join=True)
        with open(out) as f:
            return json.load(f)


def estimate(step_s: float, parameters: int, workers: int, bandwidth: float, latency: float) -> float:
    """Parallel efficiency of ``workers`` learners whose step takes ``step_s`` plus a ring all-reduce of the
    gradients (``parameters x 4`` bytes).

    >>> round(estimate(0.001, 1_000_000, 8, 100e9, 10e-6), 3)
    0.826
    """
    volume = parameters * 4.0
    reduce_s = 2 * (workers - 1) / workers * volume / bandwidth + 2 * (workers - 1) * latency
    return step_s / (step_s + reduce_s)


def run(args: argparse.Namespace) -> int:
    results = {}
    for name in args.models.split(","):
        kind, shape = MODELS[name.strip()]
        one, two = _measure(1, kind, shape, args), _measure(2, kind, shape, args)
        rate1, rate2 = args.batch_size / one["step"], 2 * args.batch_size / two["step"]
        results[name] = {
            "model": kind, "sample_shape": list(shape), "parameters": one["parameters"],
            "step_ms": {"1": one["step"] * 1e3, "2": two["step"] * 1e3},
            "samples_per_s": {"1": rate1, "2": rate2}, "efficiency_2": rate2 / (2 * rate1),
            "allreduce_ms_2": two["allreduce"] * 1e3, "allreduce_share_of_step": two["allreduce"] / two["step"],
            "estimated_efficiency": {str(n): estimate(one["step"], one["parameters"], n, bw, lat)
                                     for n, bw, lat, _ in LINKS},
        }
    if args.json:
        print(json.dumps(results, indent=1))
        return 0
    print(f"streammas bench scale: {args.batch_size} rows per worker per step, {args.steps} steps, "
          f"median of {args.repeats}; gloo on the CPU, {os.cpu_count()} cores")
    print("| model | parameters | samples/s, 1 worker | 2 workers | efficiency | all-reduce / step (2) "
          "| estimated efficiency, 8 / 64 |")
    print("|---|---|---|---|---|---|---|")
    for r in results.values():
        est = r["estimated_efficiency"]
        print(f"| {r['model']} | {r['parameters']:,} | {r['samples_per_s']['1']:,.0f} | "
              f"{r['samples_per_s']['2']:,.0f} | {r['efficiency_2']:.2f} | "
              f"{r['allreduce_ms_2']:.3f} ms / {r['step_ms']['2']:.3f} ms ({r['allreduce_share_of_step']:.0%}) | "
              f"{est['8']:.2f} / {est['64']:.2f} |")
    print("estimates assume " + "; ".join(f"{n}: {what}, {lat * 1e6:.0f} us per hop" for n, _, lat, what in LINKS)
          + ", and this machine's step time")
    return 0
