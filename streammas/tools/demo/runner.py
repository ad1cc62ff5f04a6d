"""Running the demo: the stream, the real service in a thread fed by a ZeroMQ producer thread, and a plain
online learner with no memory trained on the same batches for comparison."""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from typing import Any

import numpy as np
import torch

from streammas.config import validate
from streammas.tools.demo.display import Display
from streammas.tools.demo.report import DemoResult

#: Passes over each regime's training samples per segment: full and ``--quick``.
PASSES = {"full": 10, "quick": 1}
#: Settings the plain learner shares with the service's, so that the comparison is fair.
SHARED = ("lr", "optimizer", "steps_per_batch")
#: ``--data`` -> the benchmark stream (:func:`streammas.tools.evaluation.streams.make_stream`) it names.
BENCHMARKS = {"digits": "recurring-digits", "segments": "recurring-segments"}


def data_name(choice: str) -> str:
    """The data ``choice`` names: ``auto`` is digits where scikit-learn is installed, else river's segments."""
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
    return make_stream(BENCHMARKS[data_name(data)], "long", seed=seed, passes=n)


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
    from streammas.learner import OnlineMAS
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
    display = Display(stream)
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
        memory=learner.replay.describe(),
        service_error=_test_errors(learner, stream),
        plain_error=_plain_errors(stream, batch_size, seed, config.learner.learner_kwargs()),
        state_dir=state_dir if temp is None else "",
    )
    if temp is not None:
        temp.cleanup()
    return result
