"""``streammas evaluate``: task-free continual-learning benchmarks, no boundaries given to any method.

Writes ``results.md`` (the tables), ``results.json`` (everything, the per-seed matrices included) and one
PNG per benchmark and length into ``--out``. By default it runs the tuning and held-out streams with every
method of :data:`~streammas.tools.evaluation.methods.METHODS`; ``--benchmarks stress`` runs the stress streams
(one size each, so the long length only) with streammas and its peers
(:data:`~streammas.tools.evaluation.methods.STRESS_METHODS`), unless ``--lengths`` or ``--methods`` say otherwise.

>>> parser = argparse.ArgumentParser()
>>> add_arguments(parser)
>>> args = parser.parse_args(["--benchmarks", "stress"])
>>> defaults(args.benchmarks)
(('long',), ('plain', 'streammas', 'baseline', 'baseline-bytes', 'iid'))
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any

from streammas.tools.evaluation.methods import ALL_METHODS, METHODS, STRESS_METHODS, parse_overrides
from streammas.tools.evaluation.streams import BENCHMARKS, DEFAULT_BENCHMARKS, GROUPS, LENGTHS, STRESS

QUICK_PASSES = {"long": 3, "short": 1}


def _csv(choices, groups=None):
    """A comma-separated list of ``choices``; a name in ``groups`` stands for its members."""
    groups = groups or {}

    def parse(text: str) -> tuple[str, ...]:
        items = tuple(t.strip() for t in text.split(",") if t.strip())
        bad = [t for t in items if t not in choices and t not in groups]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join([*groups, *choices])}")
        expanded = [m for t in items for m in groups.get(t, (t,))]
        return tuple(dict.fromkeys(expanded))

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a short version (one seed, 3 passes per long regime) for tests and smoke checks")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds, 0..N-1 (default 3; 1 with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--out", default="evaluation-results", help="output folder (default: evaluation-results)")
    parser.add_argument("--benchmarks", type=_csv(tuple(BENCHMARKS), GROUPS), default=DEFAULT_BENCHMARKS,
                        help=f"comma-separated, from {', '.join(BENCHMARKS)}, or a group: "
                             f"{', '.join(GROUPS)} (default: the tuning and held-out streams). "
                             "`--benchmarks stress` runs the stress streams (many regimes, rare regimes, "
                             "regimes that never return, a recurring fault, gradual drift) with "
                             f"{', '.join(STRESS_METHODS)}, long only (3 seeds: about 6 minutes, one job)")
    parser.add_argument("--lengths", type=_csv(tuple(LENGTHS)), default=None,
                        help="comma-separated: long, short, or long,short (default: both; long for the stress "
                             "streams alone, which have one size)")
    parser.add_argument("--methods", type=_csv(ALL_METHODS), default=None,
                        help=f"comma-separated subset of {', '.join(ALL_METHODS)} (default: {', '.join(METHODS)}; "
                             f"for the stress streams alone, {', '.join(STRESS_METHODS)})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="learner setting for the streammas methods (lr, optimizer, steps_per_batch: all "
                             "methods), e.g. --set reg_lambda=10 --set plateau.window=30")
    parser.add_argument("--passes", type=int, default=None,
                        help="passes per regime, overriding the length's (default: each length's own)")
    parser.add_argument("--batch-size", type=int, default=10, help="samples per learning step")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures (no matplotlib needed)")
    parser.add_argument("--verbose", action="store_true", help="one line per finished run")
    parser.add_argument("--detector", action="store_true",
                        help="instead: record the defaults' loss curves and replay the plateau detector on them "
                             "(plateaus per regime, premature plateaus, peaks at regime changes)")


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return _jsonable(value.item())
    return value


def defaults(benchmarks) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The lengths and methods a run of ``benchmarks`` gets unless told: the stress streams alone have one size
    and their own peers."""
    if benchmarks and all(b in STRESS for b in benchmarks):
        return ("long",), STRESS_METHODS
    return tuple(LENGTHS), METHODS


def _command(args: argparse.Namespace) -> str:
    """The command line that reproduces this run (the output folder left out)."""
    parts = ["streammas", "evaluate"]
    if args.quick:
        parts.append("--quick")
    if args.seeds is not None:
        parts += ["--seeds", str(args.seeds)]
    if args.seed:
        parts += ["--seed", str(args.seed)]
    lengths, methods = defaults(args.benchmarks)
    for flag, value, default in (("--benchmarks", args.benchmarks, DEFAULT_BENCHMARKS),
                                 ("--lengths", args.lengths or lengths, lengths),
                                 ("--methods", args.methods or methods, methods)):
        if tuple(value) != tuple(default):
            group = next((name for name, members in GROUPS.items() if tuple(members) == tuple(value)), None)
            parts += [flag, group or ",".join(value)]
    for item in args.set:
        parts += ["--set", item]
    if args.passes:
        parts += ["--passes", str(args.passes)]
    if args.batch_size != 10:
        parts += ["--batch-size", str(args.batch_size)]
    return " ".join(shlex.quote(p) for p in parts)


def run_command(args: argparse.Namespace) -> int:
    import torch

    from streammas.tools.evaluation.harness import EvalConfig, evaluate
    from streammas.tools.evaluation.report import render_markdown

    torch.set_num_threads(1)
    lengths, methods = defaults(args.benchmarks)
    args.lengths, args.methods = args.lengths or lengths, args.methods or methods
    n_seeds = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    if n_seeds < 1:
        print("--seeds must be at least 1", file=sys.stderr)
        return 2
    try:
        overrides = parse_overrides(args.set)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.detector:
        return _detector_replay(args, n_seeds)
    passes = {length: args.passes for length in LENGTHS} if args.passes else (QUICK_PASSES if args.quick else None)
    cfg = EvalConfig(benchmarks=args.benchmarks, lengths=args.lengths,
                     seeds=tuple(range(args.seed, args.seed + n_seeds)), methods=args.methods,
                     overrides=overrides, batch_size=args.batch_size, passes=passes, jobs=args.jobs,
                     eval_per_segment=2 if args.quick else 4)
    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else None
    try:
        results = evaluate(cfg, progress=progress)
    except (TypeError, ValueError) as exc:  # a bad --set reaches the learner's own validation
        print(f"streammas evaluate: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = _command(args)
    results["command"] = command
    (out / "results.json").write_text(json.dumps(_jsonable(results), indent=1))
    markdown = render_markdown(results, command)
    (out / "results.md").write_text(markdown)
    figures = []
    if not args.no_plots:
        from streammas.tools.evaluation.plots import plot_results

        figures = plot_results(results, out)
    print(markdown)
    print(f"wrote {out / 'results.md'}, {out / 'results.json'}" + "".join(f", {f}" for f in figures))
    return 0


def _detector_replay(args: argparse.Namespace, n_seeds: int) -> int:
    from streammas.tools.evaluation.detector import record_curves, report

    progress = (lambda line: print(line, file=sys.stderr, flush=True)) if args.verbose else None
    curves = record_curves(args.benchmarks, args.lengths, range(args.seed, args.seed + n_seeds),
                           batch_size=args.batch_size, progress=progress)
    command = _command(args) + " --detector"
    table = f"Plateau detector replayed on the defaults' loss curves (`{command}`):\n\n{report(curves)}\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "detector.md").write_text(table)
    print(table)
    print(f"wrote {out / 'detector.md'}")
    return 0
