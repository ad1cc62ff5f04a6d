"""``streammas demo``: the service's main job on bundled real data, with a built-in producer, in one command.

What it does:

1. builds a stream from data that ships with the installed packages (scikit-learn's ``load_digits``, 8x8
   images scaled to [0, 1]; river's ``ImageSegments`` if scikit-learn is missing) in *recurring regimes*:
   three groups of digit classes, each under its own pixel permutation, shown A B C A B C, each for a few
   passes (:func:`streammas.tools.evaluation.streams.make_stream`, benchmark ``recurring-digits``);
2. starts the real service (:class:`streammas.service.Service`, in a thread) on a ZeroMQ PULL socket bound
   to a free port on 127.0.0.1, with a state directory, checkpoints and optional metrics;
3. a producer thread pushes the stream through that socket in wire format v1, batch by batch;
4. shows progress, stops the service as a signal would (final checkpoint), and reports the plateaus and
   consolidations the service found *without being told where a regime ends*, and how well each regime is
   still reconstructed at the end compared with a plain online learner with no memory
   (``reg_lambda=0, hard_buffer=0, replay=0``) trained on the same batches.

``--quick`` runs a reduced stream (used by the tests).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streammas.config import ConfigError, parse_override, validate
from streammas.service import logs
from streammas.service.progress import close_bar, make_bar, want_bar

log = logging.getLogger("streammas.tools.demo")

#: Passes over each regime's training samples per segment: full and ``--quick``.
PASSES = {"full": 10, "quick": 1}
#: Settings the plain learner shares with the service's, so that the comparison is fair.
SHARED = ("lr", "optimizer", "steps_per_batch")
BENCHMARKS = {"digits": "recurring-digits", "segments": "recurring-segments"}
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass
class DemoResult:
    """What the demo measured (also returned to callers and tests).

    :func:`run_demo` returns it and :func:`render_report` prints it; ``mean_service`` and ``mean_plain`` are
    the mean over regimes of ``service_error`` and ``plain_error``.

    Parameters
    ----------
    samples : int
        Samples the service learned.
    seconds : float
        Wall-clock seconds from the first batch sent to the service's stop.
    counters : dict of str to int
        The learner's counters (``plateaus``, ``peaks`` ...).
    consolidations : int
        How many times the learner consolidated its memory.
    events : list of dict
        The learner's ``plateau``, ``peak`` and ``consolidation`` events, each with its ``samples_seen``.
    regimes : list of str
        The regimes' names, in the order of their letters (A, B, C ...).
    segments : list of (int, int, int)
        The stream's segments as ``(first sample, end sample, regime index)``.
    settings : dict
        The ``[learner]`` settings the service ran with.
    service_error : list of float
        Each regime's reconstruction error on its held-out samples, by the service's learner at the end.
    plain_error : list of float
        The same for a plain online learner with no memory (``reg_lambda=0, hard_buffer=0, replay=0``) trained on
        the same batches.
    state_dir : str
        The state directory kept (``""``: a temporary one, deleted).

    Examples
    --------
    >>> result = DemoResult(
    ...     samples=300, seconds=1.5, counters={"plateaus": 1, "peaks": 0}, consolidations=1,
    ...     events=[{"kind": "consolidation", "samples_seen": 120}], regimes=["digits 0-4", "digits 5-9"],
    ...     segments=[(0, 150, 0), (150, 300, 1)], settings={"lr": 0.01}, service_error=[0.02, 0.03],
    ...     plain_error=[0.05, 0.03], state_dir="")
    >>> result.mean_service, result.mean_plain
    (0.025, 0.04)
    >>> print(render_report(result))
    <BLANKLINE>
    streammas demo: report
    ...
      consolidation  at sample     120: segment 1 (regime A), 120 samples after it began
    ...
    streammas remembers better: 38% lower mean error than the same learner with no memory
    <BLANKLINE>
    """

    samples: int
    seconds: float
    counters: dict[str, int]
    consolidations: int
    events: list[dict[str, Any]]
    regimes: list[str]
    segments: list[tuple[int, int, int]]
    settings: dict[str, Any]
    service_error: list[float]
    plain_error: list[float]
    state_dir: str

    @property
    def mean_service(self) -> float:
        return float(np.mean(self.service_error))

    @property
    def mean_plain(self) -> float:
        return float(np.mean(self.plain_error))


def _data(choice: str) -> str:
    if choice != "auto":
        return choice
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return "segments"
    return "digits"


def make_demo_stream(data: str = "auto", quick: bool = False, seed: int = 0, passes: int | None = None):
    """The demo's stream (a :class:`streammas.tools.evaluation.streams.Stream`)."""
    from streammas.tools.evaluation.streams import make_stream

    n = passes if passes is not None else PASSES["quick" if quick else "full"]
    return make_stream(BENCHMARKS[_data(data)], "long", seed=seed, passes=n)


def _produce(address: str, x: np.ndarray, batch_size: int, errors: list[BaseException]) -> None:
    from connectors.zmq import ZmqProducer

    try:
        with ZmqProducer(address, linger_ms=10_000) as producer:
            for start in range(0, len(x), batch_size):
                producer.send(x[start:start + batch_size])
    except BaseException as e:  # reported by the main thread
        errors.append(e)


def _plain_errors(stream: Any, batch_size: int, seed: int, settings: dict[str, Any]) -> list[float]:
    """A plain online learner on the same batches, for comparison."""
    from streammas import OnlineMAS
    from streammas.models import build_model

    torch.manual_seed(seed)
    shared = {k: v for k, v in settings.items() if k in SHARED}
    learner = OnlineMAS(build_model("mlp-autoencoder", stream.sample_shape), reg_lambda=0.0, hard_buffer=0,
                        replay=0, **shared)
    for start in range(0, len(stream.x), batch_size):
        learner.learn_many(stream.x[start:start + batch_size])
    learner.flush()
    return _test_errors(learner, stream)


def _test_errors(learner: Any, stream: Any) -> list[float]:
    """Each regime's mean squared reconstruction error, in the stream's own units (whatever a learner's scaling)."""
    errors = []
    for x, _ in stream.tests:
        xt = torch.from_numpy(x)
        errors.append(float((learner.predict_many(xt).cpu() - xt).pow(2).mean()))
    return errors


def _consolidation_samples(learner: Any) -> list[int]:
    """When each consolidation so far happened (samples seen), read while the service's thread learns."""
    if learner is None:
        return []
    while True:
        with contextlib.suppress(RuntimeError):  # the event history grew while it was copied: copy again
            return [int(e["samples_seen"]) for e in list(learner.events) if e.get("kind") == "consolidation"]


class _Display:
    """A bar on a terminal; otherwise one line per regime segment, once the segment is learned."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.total = len(stream.x)
        self._segment = 0
        self._bar = None
        if want_bar("auto", True):
            with contextlib.suppress(ImportError):
                self._bar = make_bar(total=self.total, description="learning")

    def update(self, learned: int, consolidated: list[int]) -> None:
        """``consolidated``: the samples seen at each consolidation so far."""
        if self._bar is not None:
            self._bar.set_postfix(regime=self._regime(learned), consolidations=len(consolidated), refresh=False)
            self._bar.update(learned - self._bar.n)
            return
        segments = self.stream.segments
        # The last segment waits for close(): its last consolidation may be recorded after its last sample.
        while self._segment < len(segments) - 1 and learned >= segments[self._segment][1]:
            self._line(consolidated)

    def _line(self, consolidated: list[int]) -> None:
        # Polled every 0.1 s, ``learned`` may be hundreds of samples into the next segment, with a consolidation
        # there already: count those of this segment and before, placed as the report places them.
        index = self._segment
        start, end, r = self.stream.segments[index]
        so_far = sum(1 for at in consolidated if _segment_of(at, self.stream.segments) <= index)
        print(f"  segment {index + 1}/{len(self.stream.segments)} learned: regime {LETTERS[r]} "
              f"({self.stream.regime_names[r]}), samples {start}-{end}, consolidations so far {so_far}",
              file=sys.stderr, flush=True)
        self._segment += 1

    def _regime(self, learned: int) -> str:
        return LETTERS[self.stream.segments[_segment_of(learned, self.stream.segments)][2]]

    def close(self, learned: int, consolidated: list[int]) -> None:
        """The lines still due, once the service has stopped and its history is complete."""
        if self._bar is not None:
            close_bar(self._bar)
            self._bar = None
            return
        while self._segment < len(self.stream.segments) and learned >= self.stream.segments[self._segment][1]:
            self._line(consolidated)


def run_demo(*, quick: bool = False, data: str = "auto", seed: int = 0, batch_size: int = 10,
             state_dir: str | None = None, metrics_port: int | None = None, passes: int | None = None,
             learner: dict[str, Any] | None = None, log_level: str = "warning",
             stall_seconds: float = 60.0) -> DemoResult:
    """Run the demo; returns what it measured (raises ``RuntimeError`` when the service or producer fails).

    ``learner``: settings of the ``[learner]`` section (the learner's defaults otherwise: the demo tunes nothing).
    """
    from streammas.service import Service

    torch.set_num_threads(1)  # the producer and the service share the machine
    stream = make_demo_stream(data, quick, seed, passes)
    temp = None
    if state_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="streammas-demo-")
        state_dir = temp.name
    raw: dict[str, Any] = {
        "source": {"uri": "zmq+pull://127.0.0.1:*", "batch_size": batch_size, "max_latency_ms": 20.0},
        "learner": {**(learner or {}), "seed": seed, "threads": 1, "device": "cpu"},
        "state": {"dir": state_dir, "every_samples": 10_000, "every_seconds": 30.0},
        "log": {"level": log_level, "status_every_seconds": 0.0, "progress": "never"},
    }
    if metrics_port is not None:
        raw["metrics"] = {"port": metrics_port}
    config = validate(raw)
    service = Service(config, handle_signals=False)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            service.run()
        except BaseException as e:
            failure.append(e)
            service.started.set()

    started = time.perf_counter()
    thread = threading.Thread(target=serve, name="streammas-service", daemon=True)
    thread.start()
    service.started.wait()
    if failure:
        raise RuntimeError(f"the service did not start: {failure[0]}")
    address = service.source_address
    produced: list[BaseException] = []
    producer = threading.Thread(target=_produce, args=(address, stream.x, batch_size, produced),
                                name="streammas-producer", daemon=True)
    producer.start()
    display = _Display(stream)
    total = len(stream.x)
    learned, last_change, last = 0, time.monotonic(), -1
    try:
        while learned < total and thread.is_alive():
            time.sleep(0.1)
            learner = service.learner
            learned = learner.samples_seen if learner is not None else 0
            display.update(learned, _consolidation_samples(learner))
            if learned != last:
                last, last_change = learned, time.monotonic()
            elif produced or time.monotonic() - last_change > stall_seconds:
                break
    finally:
        service.request_stop("demo finished")
        thread.join(timeout=30)
        producer.join(timeout=5)
        display.close(learned, _consolidation_samples(service.learner))
    if failure:
        raise RuntimeError(f"the service failed: {failure[0]}")
    if produced:
        raise RuntimeError(f"the producer failed: {produced[0]}")
    if learned < total:
        raise RuntimeError(f"the service learned {learned} of {total} samples before it stalled")
    seconds = time.perf_counter() - started
    learner = service.learner
    learner.flush()
    result = DemoResult(
        samples=learner.samples_seen, seconds=seconds, counters=dict(learner.counters),
        consolidations=learner.consolidations,
        events=[e for e in learner.events if e.get("kind") in ("plateau", "peak", "consolidation")],
        regimes=list(stream.regime_names), segments=[tuple(seg) for seg in stream.segments],
        settings=config.learner.learner_kwargs(),
        service_error=_test_errors(learner, stream),
        plain_error=_plain_errors(stream, batch_size, seed, config.learner.learner_kwargs()),
        state_dir=state_dir if temp is None else "",
    )
    if temp is not None:
        temp.cleanup()
    return result


def _segment_of(samples: int, segments: list[tuple[int, int, int]]) -> int:
    """The index of the segment a sample count falls in (the last one past the end)."""
    for i, (start, end, _) in enumerate(segments):
        if start <= samples < end:
            return i
    return len(segments) - 1


def _where(samples: int, segments: list[tuple[int, int, int]]) -> str:
    """Which segment a sample count falls in, and how far into it."""
    i = _segment_of(samples, segments)
    start, _, regime = segments[i]
    return f"segment {i + 1} (regime {LETTERS[regime]}), {samples - start:,} samples after it began"


def _settings_text(settings: dict[str, Any], prefix: str = "") -> str:
    parts = []
    for key, value in settings.items():
        if key in ("objective", "on_bad_input"):
            continue
        if isinstance(value, dict):
            parts.append(_settings_text(value, f"{prefix}{key}."))
        else:
            parts.append(f"{prefix}{key}={value}")
    return ", ".join(p for p in parts if p)


def _learner_text(settings: dict[str, Any]) -> str:
    from streammas.learner import learner_defaults

    defaults = learner_defaults()
    shown = {k: defaults[k] for k in ("lr", "reg_lambda", "hard_buffer", "consolidate_at")}
    given = _settings_text(settings)
    return (f"{given}; the learner's defaults otherwise" if given else
            "the learner's defaults, untuned: " + _settings_text(shown) + ", ...")


def render_report(result: DemoResult) -> str:
    """The short report printed at the end of the demo."""
    order = " ".join(LETTERS[r] for _, _, r in result.segments)
    lines = ["", "streammas demo: report", "=" * 22,
             f"stream       {result.samples:,} samples in regimes {order} (no boundaries given), "
             f"learned through ZeroMQ in {result.seconds:.1f} s ({result.samples / max(result.seconds, 1e-9):,.0f}"
             " samples/s)",
             f"learner      {_learner_text(result.settings)}",
             f"detector     {result.counters.get('plateaus', 0)} plateaus, {result.counters.get('peaks', 0)} peaks, "
             f"{result.consolidations} consolidations"]
    for e in result.events:
        lines.append(f"  {e['kind']:<14} at sample {e['samples_seen']:>7,}: "
                     f"{_where(int(e['samples_seen']), result.segments)}")
    lines += ["", "reconstruction error on each regime's held-out samples at the end (lower is better)",
              f"  {'regime':<34} {'streammas':>10} {'no memory':>10}"]
    for i, (name, ours, plain) in enumerate(zip(result.regimes, result.service_error, result.plain_error)):
        lines.append(f"  {LETTERS[i] + ': ' + name:<34} {ours:>10.4f} {plain:>10.4f}")
    lines.append(f"  {'mean':<34} {result.mean_service:>10.4f} {result.mean_plain:>10.4f}")
    change = (result.mean_plain - result.mean_service) / result.mean_plain if result.mean_plain else 0.0
    verdict = (f"streammas remembers better: {change:.0%} lower mean error than the same learner with no memory"
               if change > 0.01
               else f"the learner with no memory did as well or better here ({-change:.0%}); on this stream, "
                    "forgetting was mild")
    lines += ["", verdict]
    last = result.segments[-1][2]
    ours, plain = result.service_error[last], result.plain_error[last]
    if change > 0.01 and ours > plain * 1.01:
        lines.append(f"the price: regime {LETTERS[last]}, shown last, is reconstructed {ours / plain - 1:.0%} worse "
                     "than by the learner with no memory (stability against plasticity)")
    if result.state_dir:
        lines.append(f"state kept in {result.state_dir}: try `streammas inspect {result.state_dir}`")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run the service on bundled real data in recurring regimes, fed by a built-in ZeroMQ "
                          "producer, and report what it remembered compared with the same learner with no memory.")
    parser.add_argument("--quick", action="store_true", help="a reduced stream (a few seconds)")
    parser.add_argument("--data", choices=("auto", *BENCHMARKS), default="auto",
                        help="digits (scikit-learn) or segments (river); auto: digits when scikit-learn is there")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--passes", type=int, default=None, help="passes over a regime per segment")
    parser.add_argument("--state-dir", default=None, help="keep the service's state here (default: a temporary "
                        "directory, removed)")
    parser.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics while it runs")
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
    name = _data(args.data)
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
