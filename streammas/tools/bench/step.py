"""``streammas bench step``: the cost of a full ``OnlineMAS.learn_many`` step against a plain hand-written torch
step of the learner's own optimizer (same model, same data, same learning rate), on an MLP autoencoder
784-256-64-256-784 and a small conv autoencoder, batches of 10 and 64; the learner's state against the model's
parameters; peak memory (CUDA: the allocator's peak; CPU: peak resident memory of a process running only that
variant); and (:mod:`streammas.tools.bench.widths`) the defaults against a practitioner's plain torch loop that
learns the same rows, at input widths 9, 64 and 784, with what input scaling and replay cost inside their step.

The learners are measured in their steady state: consolidated once before the clock starts, so that where the
regulariser is on (lambda > 0) its proximal step runs, as it does once a stream has had its first plateau. The
defaults measure the importance on every 16th batch with the regulariser off (lambda 0): no proximal step. Each
variant's label says what it runs, and the learner's own counters (importance samples measured, proximal steps
paid) are checked after timing: a variant that did not do what its label says stops the benchmark.

Targets (CPU): importance measured on every batch, regulariser on, at most 1.5x the plain step; the defaults at
most 1.0x of a plain step of the same optimizer (they replay two stored samples per row of the batch, so the
practitioner's baseline, which replays too, is measured beside them); at least 1.0x the speed of the plain torch
loop that learns the same rows; learner state at most 3x the parameter bytes plus the hard buffer.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

from streammas.learner import OnlineMAS
from streammas.learner.update import FusedUpdate
from streammas.tools.bench import timing, widths
from streammas.tools.bench.variants import BREAKDOWN, FUSED_ONLY, LR, OPTIMIZER, VARIANTS, expected_work, make_learner

TARGETS = {"every": 1.5, "defaults": 1.0}
STATE_TARGET = 3.0


_NAMES = {"sgd": "SGD", "adam": "Adam"}
PEER = "practitioner"  # the variant name of the practitioner's baseline

def add_arguments(parser: argparse.ArgumentParser) -> None:
    timing.add_common_arguments(parser, repeats=9)
    parser.add_argument("--models", nargs="+", choices=timing.MODELS, default=list(timing.MODELS),
                        help="the models measured")
    parser.add_argument("--batches", nargs="+", type=int, default=[10, 64], help="batch sizes")
    parser.add_argument("--block", type=float, default=None,
                        help="seconds per timed block (default 0.25, 0.03 with --quick)")
    parser.add_argument("--no-breakdown", action="store_true", help="only the plain step and the two targets")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-variant peak memory")
    parser.add_argument("--memory-steps", type=int, default=200, help="steps run to measure peak memory")
    parser.add_argument("--widths", nargs="*", type=int, default=[9, 64, 784],
                        help="input widths of the defaults-against-the-practitioner's-loop table (none: skip it)")
    parser.add_argument("--width-batch", type=int, default=32, help="batch size of that table")


def _variants(args: argparse.Namespace) -> dict[str, tuple[str, dict, bool, bool]]:
    out = dict(VARIANTS)
    if not (args.quick or args.no_breakdown):
        out.update(BREAKDOWN)
    return out


def bench_case(kind: str, batch: int, args: argparse.Namespace, env: dict) -> dict:
    base = timing.make_model(kind, args.device, args.seed)
    batches = timing.stream_batches(kind, batch, 32, args.device, args.seed + 1)
    variants = {"sgd": timing.cycle(timing.plain_step(copy.deepcopy(base), LR, OPTIMIZER), batches)}
    if not (args.quick or args.no_breakdown):
        floor = timing.plain_step(copy.deepcopy(base), LR, OPTIMIZER, second_backward=True)
        variants["sgd_floor"] = timing.cycle(floor, batches)
    learners: dict[str, OnlineMAS] = {}
    expected: dict[str, dict[str, bool]] = {}
    fused = isinstance(make_learner(copy.deepcopy(base), {}, True).update, FusedUpdate)
    for name, (_, settings, share, consolidate) in _variants(args).items():
        if name in FUSED_ONLY and not fused:
            continue
        learner = make_learner(copy.deepcopy(base), settings, share)
        for x in batches:  # warm-up: the buffer fills, the sample shape is known
            learner.learn_many(x)
        if consolidate:
            learner.consolidate()
        learners[name] = learner
        expected[name] = expected_work(settings, consolidate)
        variants[name] = timing.cycle(learner.learn_many, batches)
    if not (args.quick or args.no_breakdown):
        # The evaluation's practitioner baseline (one replayed sample per row: fewer rows than the defaults' two;
        # the peer that learns the same rows is the width table's plain torch loop).
        from streammas.tools.evaluation.baseline import practitioner_baseline

        peer = practitioner_baseline(copy.deepcopy(base), seed=args.seed)
        for x in batches:
            peer.learn_many(x)
        variants[PEER] = timing.cycle(peer.learn_many, batches)
    before = {name: _work(learner) for name, learner in learners.items()}
    sync = timing.synchronizer(args.device)
    seconds = args.block if args.block is not None else (0.03 if args.quick else 0.25)
    sync_every = learners["defaults"].sync_every
    # A learner's block is a whole number of sync periods, so that it pays its share of host reads.
    blocks = {name: timing.calibrate(fn, seconds=seconds, sync=sync, clock=env["clock"],
                                     multiple=1 if name.startswith("sgd") else sync_every)
              for name, fn in variants.items()}
    runs = timing.interleaved(variants, blocks, repeats=args.repeats, sync=sync, clock=env["clock"])
    med = {name: timing.median(r) for name, r in runs.items()}
    ratio = {name: med[name] / med["sgd"] for name in med}
    work = {name: _check(name, batch, before[name], _work(learner), expected[name])
            for name, learner in learners.items()}
    defaults = learners["defaults"]
    state = defaults.state_nbytes()
    state_ratio = state["synapses"] / state["parameters"]
    # While a plateau holds, a learner that consolidates at the peak (the default) also keeps the plateau's weights.
    held_ratio = (state["synapses"] + state["held_max"]) / state["parameters"]
    case = {
        "model": kind,
        "model_label": timing.MODEL_LABELS[kind],
        "batch": batch,
        "seconds_per_step": med,
        "vs_sgd": ratio,
        "runs": runs,
        "steps_per_block": blocks,
        "state_bytes": state,
        "state_vs_parameters": state_ratio,
        "targets": {name: {"max": limit, "met": ratio[name] <= limit} for name, limit in TARGETS.items()},
        "state_vs_parameters_plateau_held": held_ratio,
        "state_target": {"max": STATE_TARGET, "met": state_ratio <= STATE_TARGET,
                         "met_while_plateau_holds": held_ratio <= STATE_TARGET},
        "consolidations": {name: learner.consolidations for name, learner in learners.items()},
        "work_while_timed": work,
        "fused_step": fused,
    }
    if not args.no_memory and not args.quick:
        case["peak_memory"] = peak_memory(kind, batch, args)
    return case


def _work(learner: OnlineMAS) -> dict[str, int]:
    return {"steps": learner.steps, "importance_samples": learner.synapses.measured_samples,
            "proximal_payments": learner.proximal.payments}


def _check(name: str, batch: int, before: dict, after: dict, expected: dict[str, bool]) -> dict:
    """What a variant did while it was timed, from the learner's counters; it must be what its label says."""
    done = {key: after[key] - before[key] for key in before}
    measured = done["importance_samples"] / max(1, done["steps"] * batch)  # batches measured, as a fraction
    wrong = []
    if expected["every"] and measured < 1.0:
        wrong.append(f"importance measured on {measured:.0%} of the batches, not every one")
    if expected["none"] and done["importance_samples"]:
        wrong.append("importance measured")
    if not expected["none"] and not done["importance_samples"]:
        wrong.append("no importance measured")
    if expected["proximal"] != bool(done["proximal_payments"]):
        wrong.append(f"{done['proximal_payments']} proximal steps paid")
    if wrong:
        raise RuntimeError(f"bench step: variant {name!r} did not run what its label says: {'; '.join(wrong)}")
    return {**done, "importance_fraction": measured}


def peak_memory(kind: str, batch: int, args: argparse.Namespace) -> dict:
    """Peak memory of each variant: on CUDA the allocator's peak above what was allocated before it ran, in
    this process; on a CPU the peak resident memory of a fresh process that runs only that variant."""
    from streammas.tools.bench import memory

    names = ("sgd", "every", "defaults")
    if args.device == "cuda":
        return {name: memory.cuda_peak(kind, batch, name, args.memory_steps, args.seed) for name in names}
    return {name: memory.child_peak_rss(kind, batch, name, args.memory_steps, args.seed, args.threads)
            for name in names}


def report(result: dict) -> str:
    env = result["env"]
    lines = ["streammas bench step: OnlineMAS.learn_many against a plain hand-written torch "
             f"{_NAMES.get(OPTIMIZER, OPTIMIZER)} step (lr {LR}, same model, same data)", *timing.describe(env),
             "learners consolidated once before timing, unless noted; the regulariser (lambda > 0, its proximal step "
             "paid every 16 steps) only where a row says so; 'ran': from the learner's counters while timed, "
             "the share of batches whose importance was measured / proximal steps paid"]
    fused = sorted({c["model_label"] for c in result["cases"] if c["fused_step"]})
    if fused:
        lines.append("hand-derived step (streammas.learner.fused, autograd's numbers up to rounding): "
                     f"{', '.join(fused)}; "
                     "the other models: autograd")
    lines.append("")
    rows = []
    for c in result["cases"]:
        sec, ratio = c["seconds_per_step"], c["vs_sgd"]
        plain = f"plain {_NAMES.get(OPTIMIZER, OPTIMIZER)} step"
        labels = {"sgd": f"{plain} (baseline)",
                  "sgd_floor": f"  {plain} + a second backward (a floor for exact importance)",
                  PEER: "  the evaluation's practitioner baseline (Adam, standardisation, 1 replayed per row)",
                  **{n: v[0] for n, v in {**VARIANTS, **BREAKDOWN}.items()}}
        peaks = c.get("peak_memory", {})
        for name in sec:
            target = ""
            if name in TARGETS:
                target = timing.verdict(ratio[name], TARGETS[name], at_least=False)
            peak = timing.mib(peaks[name]) if name in peaks else ""
            ran = c["work_while_timed"].get(name)
            ran = "" if ran is None else f"{ran['importance_fraction']:.0%} / {ran['proximal_payments']}"
            rows.append([c["model_label"], c["batch"], labels[name], f"{sec[name] * 1e3:.3f}",
                         f"{ratio[name]:.2f}x", target, ran, peak])
    peak_label = "peak alloc" if env["device"] == "cuda" else "peak +RSS"
    lines += timing.table(["model", "batch", "variant", "ms/step", "vs plain", "target", "ran", peak_label], rows,
                          [False, True, False, True, True, False, False, True])
    lines += ["", "learner state (defaults): Omega, theta* and the running importance against the parameter bytes, the "
              "hard buffer apart; while a plateau holds, also the plateau's weights (consolidate_at='peak')"]
    srows = []
    for c in result["cases"]:
        s = c["state_bytes"]
        srows.append([c["model_label"], c["batch"], f"{s['parameters']:,}", f"{s['synapses']:,}",
                      f"{c['state_vs_parameters']:.2f}x",
                      timing.verdict(c["state_vs_parameters"], STATE_TARGET, at_least=False),
                      f"{c['state_vs_parameters_plateau_held']:.2f}x",
                      timing.verdict(c["state_vs_parameters_plateau_held"], STATE_TARGET, at_least=False),
                      f"{s['buffer']:,}"])
    lines += timing.table(["model", "batch", "param bytes", "state bytes", "ratio", "target", "plateau held",
                           "target", "buffer bytes"], srows, [False, True, True, True, True, False, True, False, True])
    if any("peak_memory" in c for c in result["cases"]):
        what = ("the CUDA allocator's peak above what was allocated before the variant ran" if env["device"] == "cuda"
                else "peak resident memory a fresh process gains from building the model and the variant and "
                     f"running {result['memory_steps']} steps (torch and the data loaded before)")
        lines += ["", f"{peak_label}: {what}."]
    lines += widths.report(result.get("widths", []))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if timing.needs_fresh_process(args):
        return timing.run_in_fresh_process("streammas.tools.bench.step", add_arguments, args)
    if args.quick and args.repeats == 9:
        args.repeats = 3
    env = timing.setup(args)
    cases = [bench_case(kind, batch, args, env) for kind in args.models for batch in args.batches]
    by_width = [widths.bench_width(width, args.width_batch, args, env) for width in args.widths]
    result = {"benchmark": "step", "env": env, "cases": cases, "widths": by_width, "memory_steps": args.memory_steps}
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streammas bench step", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
