"""The ``streammas demo`` command: its arguments, and the run that prints the report."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from streammas.config import ConfigError, parse_override, validate
from streammas.service import logs
from streammas.tools.demo.report import render_report
from streammas.tools.demo.runner import BENCHMARKS, PASSES, data_name, run_demo


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run the service on bundled real data in recurring regimes, fed by a built-in ZeroMQ "
                          "producer, and report what it remembered compared with the same learner with no memory.")
    parser.add_argument("--quick", action="store_true", help="a reduced stream (a few seconds)")
    parser.add_argument("--data", choices=("auto", *BENCHMARKS), default="auto",
                        help="digits (scikit-learn) or segments (river); auto: digits when scikit-learn is there")
    parser.add_argument("--seed", type=int, default=0, help="seed of the stream, the model and the learners")
    parser.add_argument("--batch-size", type=int, default=10, help="samples per message and per learning step")
    parser.add_argument("--passes", type=int, default=None,
                        help=f"passes over a regime per segment (default: {PASSES['full']}; {PASSES['quick']} with "
                             "--quick)")
    parser.add_argument("--state-dir", default=None, help="keep the service's state here (default: a temporary "
                        "directory, removed)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="serve Prometheus metrics on this port while it runs (default: none)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a [learner] setting for the service, e.g. --set reg_lambda=3 or "
                             "--set plateau.window=30 (repeatable; lr and optimizer apply to both learners)")
    parser.add_argument("--verbose", action="store_true", help="show the service's log lines")


def run_command(args: argparse.Namespace) -> int:
    with logs.logging_to("info" if args.verbose else "warning"):
        return _run(args)


def _learner_settings(items: list[str]) -> dict[str, Any]:
    """``["lr=0.1", "plateau.window=30"]`` -> ``{"lr": 0.1, "plateau": {"window": 30}}`` (checked later)."""
    out: dict[str, Any] = {}
    for item in items:
        key, value = parse_override(item)
        table = out
        *parents, last = key.removeprefix("learner.").split(".")
        for part in parents:
            table = table.setdefault(part, {})
        table[last] = value
    return out


def _run(args: argparse.Namespace) -> int:
    try:
        settings = _learner_settings(args.set)
        validate({"source": {"uri": "-"}, "learner": settings})
    except ConfigError as e:
        print(f"streammas demo: {e}", file=sys.stderr)
        return 2
    name = data_name(args.data)
    source = "scikit-learn's load_digits" if name == "digits" else "river's ImageSegments"
    print(f"streammas demo: {source}, three regimes shown A B C A B C, streamed over ZeroMQ on 127.0.0.1 "
          "into the service", file=sys.stderr, flush=True)
    try:
        result = run_demo(quick=args.quick, data=args.data, seed=args.seed, batch_size=args.batch_size,
                          state_dir=args.state_dir, metrics_port=args.metrics_port, passes=args.passes,
                          learner=settings, log_level="info" if args.verbose else "warning")
    except RuntimeError as e:
        print(f"streammas demo: error: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"streammas demo: error: {e} (install the extras: pip install 'streammas[eval]')", file=sys.stderr)
        return 2
    sys.stdout.write(render_report(result))
    return 0
