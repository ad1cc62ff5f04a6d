"""``streammas bench``: speed and memory benchmarks, reported as medians and as ratios against a baseline
measured in the same run (never as absolute timings compared across runs).

Each benchmark is a module of this package exposing ``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib

BENCHMARKS: dict[str, tuple[str, str]] = {
    "step": ("streammas.tools.bench.step", "OnlineMAS.learn_many against a plain step of the same optimizer"),
    "importance": ("streammas.tools.bench.importance", "exact per-sample importance: fast rules, vmap, a loop"),
    "memory": ("streammas.tools.bench.memory", "learner memory over a long stream (flat within 5 percent)"),
    "ingest": ("streammas.tools.bench.ingest", "ZeroMQ decoding against a bare pyzmq loop; file source rows/s"),
    "daemon": ("streammas.tools.bench.daemon",
               "streammas run on a CSV file (with a sink) against the embedded learner on the same rows; start-up"),
    "river": ("streammas.tools.bench.river",
              "river estimators: one sample at a time (against deep-river where it imports), dataframes"),
    "scale": ("streammas.tools.bench.scale",
              "data-parallel learner on 1 and 2 workers: samples/s, efficiency, all-reduce"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="benchmark")
    for name, (module_name, help_) in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        module.add_arguments(sub.add_parser(name, help=help_, description=help_,
                                            formatter_class=parser.formatter_class))


def run_command(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHMARKS[args.benchmark][0])
    return int(module.run(args) or 0)
