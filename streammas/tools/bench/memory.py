"""``streammas bench memory``: the learner's memory stays flat over a long stream.

One million samples (by default) stream through ``OnlineMAS`` with its default settings (and a learning rate at
which the regimes are learned), in 8 regimes, so that plateaus, peaks and consolidations happen; the process's
resident memory (CUDA: allocated device memory too) is read at checkpoints. Target: after the warm-up (the first
tenth of the stream), memory never exceeds the warm-up level by more than 5%.

It also measures, for ``streammas bench step``, the peak memory of a process that runs a single variant.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

from streammas.tools.bench import timing
from streammas.tools.bench.variants import LR, OPTIMIZER, variant_step

TOLERANCE = 0.05


def add_arguments(parser: argparse.ArgumentParser) -> None:
    timing.add_common_arguments(parser, repeats=1)
    parser.add_argument("--model", choices=timing.MODELS, default="mlp", help="the model measured")
    parser.add_argument("--batch", type=int, default=64, help="samples per learn_many call")
    parser.add_argument("--samples", type=int, default=1_000_000, help="samples streamed (50,000 with --quick)")
    parser.add_argument("--regimes", type=int, default=8, help="regimes the stream goes through")
    parser.add_argument("--checkpoints", type=int, default=20, help="memory readings along the stream")
    parser.add_argument("--child-peak", choices=("sgd", "every", "defaults"), default=None,
                        help=argparse.SUPPRESS)  # internal: run one variant, print its peak RSS as JSON
    parser.add_argument("--steps", type=int, default=200, help=argparse.SUPPRESS)


# -- per-variant peak memory (used by `bench step`) ------------------------------------------------------------
def child_peak_rss(kind: str, batch: int, variant: str, steps: int, seed: int, threads: int) -> int:
    """Peak resident memory that one variant needs: in a fresh process, from after torch and the data are loaded
    (where Linux lets the peak be reset; else from the start) through building it and running ``steps`` steps."""
    env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", timing.WAIT_POLICY))
    cmd = [sys.executable, "-m", "streammas.tools.bench.memory", "--child-peak", variant, "--model", kind,
           "--batch", str(batch), "--steps", str(steps), "--seed", str(seed), "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak_rss_increase"])


def cuda_peak(kind: str, batch: int, variant: str, steps: int, seed: int) -> int:
    """The CUDA allocator's peak while one variant is built and run, above what was allocated before."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step = variant_step(kind, batch, variant, "cuda", seed)
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del step
    torch.cuda.empty_cache()
    return peak


def _child(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    start = {}

    def mark() -> None:
        # One step of a throwaway copy first: the kernels' lazily built workspaces are not the variant's cost.
        timing.plain_step(timing.make_model(args.model, args.device, args.seed), LR, OPTIMIZER)(
            timing.stream_batches(args.model, args.batch, 1, args.device, args.seed)[0])
        start["reset"] = timing.reset_peak_rss()
        start["rss"] = timing.rss_bytes() if start["reset"] else 0

    step = variant_step(args.model, args.batch, args.child_peak, args.device, args.seed, before_model=mark)
    for _ in range(args.steps):
        step()
    peak = timing.peak_rss_bytes()
    print(json.dumps({"variant": args.child_peak, "peak_rss": peak, "peak_rss_increase": peak - start["rss"],
                      "peak_reset": start["reset"]}))
    return 0


# -- the long stream ------------------------------------------------------------------------------------------------
def _regime_batches(kind: str, batch: int, regimes: int, device: str, seed: int) -> list[list[torch.Tensor]]:
    """Each regime: 4 prototypes (a random pixel permutation of a common set) plus noise, 16 batches of them."""
    g = torch.Generator().manual_seed(seed)
    shape = timing.sample_shape(kind)
    size = int(torch.tensor(shape).prod())
    prototypes = (torch.rand(4, size, generator=g) < 0.3).float()
    out = []
    for _ in range(regimes):
        perm = prototypes[:, torch.randperm(size, generator=g)]
        pool = []
        for _ in range(16):
            idx = torch.randint(4, (batch,), generator=g)
            x = (perm[idx] + 0.05 * torch.randn(batch, size, generator=g)).clamp_(0, 1)
            x = x.reshape(batch, *shape)
            pool.append(x.pin_memory() if device == "cuda" else x)  # host memory, as a stream delivers it
        out.append(pool)
    return out


def stream(args: argparse.Namespace, env: dict) -> dict:
    from streammas.learner import OnlineMAS

    samples = args.samples if not (args.quick and args.samples == 1_000_000) else 50_000
    steps = max(1, samples // args.batch)
    model = timing.make_model(args.model, args.device, args.seed)
    learner = OnlineMAS(model)  # the defaults: plateaus, peaks and consolidations happen
    pools = _regime_batches(args.model, args.batch, args.regimes, args.device, args.seed + 1)
    every = max(1, steps // args.checkpoints)
    per_regime = -(-steps // args.regimes)
    readings = []
    cuda = args.device == "cuda"

    def reading(step: int) -> dict:
        if cuda:
            torch.cuda.synchronize()
        state = learner.state_nbytes()
        return {"step": step, "samples": learner.samples_seen, "rss": timing.rss_bytes(),
                "cuda_allocated": torch.cuda.memory_allocated() if cuda else None,
                "state_bytes": sum(v for k, v in state.items() if k != "parameters"),
                "events": len(learner.events), "consolidations": learner.consolidations}

    readings.append(reading(0))
    for step in range(steps):
        pool = pools[min(step // per_regime, args.regimes - 1)]
        learner.learn_many(pool[step % len(pool)])
        if (step + 1) % every == 0 or step + 1 == steps:
            readings.append(reading(step + 1))
    learner.flush()
    warm = next(r for r in readings if r["step"] >= steps // 10)
    later = [r for r in readings if r["step"] >= warm["step"]]
    growth = max(r["rss"] for r in later) / warm["rss"] - 1.0
    result = {"model": args.model, "model_label": timing.MODEL_LABELS[args.model], "batch": args.batch,
              "samples": learner.samples_seen, "steps": steps, "readings": readings,
              "warm_rss": warm["rss"], "max_rss_after_warmup": max(r["rss"] for r in later),
              "rss_growth": growth, "target": {"max_growth": TOLERANCE, "met": growth <= TOLERANCE},
              # the kernel updates VmHWM lazily: it may trail a fresh reading, which the peak is at least
              "counters": dict(learner.counters),
              "peak_rss": max(timing.peak_rss_bytes(), *(r["rss"] for r in readings))}
    if cuda:
        alloc = [r["cuda_allocated"] for r in later]
        result["cuda_growth"] = max(alloc) / max(warm["cuda_allocated"], 1) - 1.0
    return result


def report(result: dict) -> str:
    r = result["stream"]
    lines = [f"streammas bench memory: {r['samples']:,} samples through OnlineMAS (defaults), "
             f"{r['model_label']}, batch {r['batch']}, {result['regimes']} regimes",
             *timing.describe(result["env"])[:2], ""]
    rows = []
    for x in r["readings"]:
        rows.append([f"{x['samples']:,}", timing.mib(x["rss"]),
                     "" if x["cuda_allocated"] is None else timing.mib(x["cuda_allocated"]),
                     f"{x['state_bytes']:,}", x["events"], x["consolidations"]])
    lines += timing.table(["samples", "RSS", "CUDA alloc", "state bytes", "events", "consolidations"], rows,
                          [True] * 6)
    verdict = "met" if r["target"]["met"] else "MISSED"
    lines += ["", f"RSS after warm-up {timing.mib(r['warm_rss'])}, highest after it "
              f"{timing.mib(r['max_rss_after_warmup'])}: growth {r['rss_growth']:+.2%} "
              f"(target <= {TOLERANCE:.0%}: {verdict})"]
    if "cuda_growth" in r:
        lines.append(f"CUDA allocated growth after warm-up {r['cuda_growth']:+.2%}")
    lines.append(f"counters: {r['counters']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.child_peak:
        return _child(args)
    if timing.needs_fresh_process(args):
        return timing.run_in_fresh_process("streammas.tools.bench.memory", add_arguments, args)
    env = timing.setup(args)
    result = {"benchmark": "memory", "env": env, "regimes": args.regimes, "stream": stream(args, env)}
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streammas bench memory", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
