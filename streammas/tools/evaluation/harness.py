"""Run methods on benchmark streams, measure them, and aggregate over seeds.

:func:`run_method` is one learner on one stream (test-then-train, micro-batches, no boundary given to the
learner except the oracle's consolidations); :func:`evaluate` runs a whole configuration and returns the
JSON-ready results with a summary per benchmark, length and method, and the targets
(:mod:`~streammas.tools.evaluation.summary`).

>>> cfg = EvalConfig(benchmarks=("permuted-digits",), lengths=("short",), seeds=(0,), methods=("plain",),
...                  passes={"short": 1}, eval_per_segment=1)
>>> results = evaluate(cfg)
>>> row = results["summary"]["permuted-digits"]["short"]["plain"]
>>> 0.2 < row["primary"]["mean"] <= 1.0
True
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from streammas.tools.evaluation import metrics, stress_metrics
from streammas.tools.evaluation.methods import METHODS, Method, NeverDetector, default_methods
from streammas.tools.evaluation.streams import DEFAULT_BENCHMARKS, LENGTHS, Stream, group_of, make_stream, shuffled
from streammas.tools.evaluation.summary import PRIMARY, summarise, targets

__all__ = ["PRIMARY", "EvalConfig", "build_model", "evaluate", "run_method", "standardised_error", "summarise",
           "targets"]


@dataclass
class EvalConfig:
    """What to run: every benchmark x length x seed x method, as ``streammas evaluate`` does.

    Parameters
    ----------
    benchmarks : sequence of str, default DEFAULT_BENCHMARKS
        Benchmark names (:data:`streammas.tools.evaluation.streams.BENCHMARKS`); the tuning and held-out ones by
        default (the stress streams only when named: :data:`~streammas.tools.evaluation.streams.STRESS`).
    lengths : sequence of str, default ("long", "short")
        Stream lengths (:data:`streammas.tools.evaluation.streams.LENGTHS`).
    seeds : sequence of int, default (0, 1, 2)
        Seeds of the streams and the models; results are aggregated over them.
    methods : sequence of str, default METHODS
        Method names (:data:`streammas.tools.evaluation.methods.METHODS`); every one by default.
    overrides : dict, default {}
        Learner settings changed for the streammas family (``--set key=value``, see
        :func:`~streammas.tools.evaluation.methods.default_methods`).
    batch_size : int, default 10
        Samples per micro-batch.
    eval_per_segment : int, default 4
        Evaluations of every regime's test set per segment.
    passes : mapping of str to int or None, default None
        Maps a length to the passes per segment, overriding its default (``--quick``).
    jobs : int, default 1
        Runs in parallel (processes).
    hidden : int, default 128
        Width of the classifier's hidden layer.

    Examples
    --------
    >>> cfg = EvalConfig(benchmarks=("recurring-digits",), lengths=("short",), seeds=(0,),
    ...                  methods=("plain", "streammas"), passes={"short": 1})
    >>> cfg.as_dict()
    {'benchmarks': ['recurring-digits'], 'lengths': ['short'], 'seeds': [0], 'methods': ['plain', 'streammas'],
     'overrides': {}, 'batch_size': 10, 'eval_per_segment': 4, 'passes': {'short': 1}, 'jobs': 1, 'hidden': 128}
    >>> [m.name for m in default_methods(cfg.overrides, cfg.methods)]
    ['plain', 'streammas']
    """

    benchmarks: Sequence[str] = DEFAULT_BENCHMARKS
    lengths: Sequence[str] = tuple(LENGTHS)
    seeds: Sequence[int] = (0, 1, 2)
    methods: Sequence[str] = METHODS
    overrides: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 10
    eval_per_segment: int = 4
    passes: Mapping[str, int] | None = None
    jobs: int = 1
    hidden: int = 128

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passes"] = None if self.passes is None else dict(self.passes)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# -- one run -------------------------------------------------------------------------------------------------
def build_model(stream: Stream, hidden: int = 128):
    """The model of a benchmark: an MLP classifier, or the built-in MLP autoencoder sized from the sample."""
    from streammas.models import MLPClassifier
    from streammas.models import build_model as build

    if stream.kind == "classification":
        return MLPClassifier(int(np.prod(stream.sample_shape)), stream.n_classes, hidden=(hidden,))
    return build("mlp-autoencoder", stream.sample_shape)


def _make_learner(method: Method, model, objective: str, seed: int = 0):
    import inspect

    from streammas.learner import OnlineMAS

    kwargs = dict(method.learner)
    if method.oracle:
        kwargs["plateau"] = NeverDetector()
    factory = method.factory or OnlineMAS
    try:  # a learner with randomness of its own (the baseline's reservoir) is seeded from the run's seed
        if "seed" in inspect.signature(factory).parameters:
            kwargs.setdefault("seed", seed)
    except (TypeError, ValueError):
        pass
    return factory(model, objective=objective, **kwargs)


def standardised_error(prediction: np.ndarray, x: np.ndarray, scale: np.ndarray) -> float:
    """Mean over samples and features of ``((prediction - x) / scale) ** 2``: a reconstruction error in units of
    each feature's standard deviation over the stream (:attr:`Stream.scale`), the same for every method whatever
    the units it learns in. 0 for a perfect reconstruction, about 1 for the stream's mean.

    >>> x = np.array([[0.0, 10.0], [2.0, 30.0]])
    >>> scale = x.std(0)
    >>> standardised_error(x, x, scale), standardised_error(np.tile(x.mean(0), (2, 1)), x, scale)
    (0.0, 1.0)
    """
    diff = (np.asarray(prediction, dtype=np.float64) - x) / scale
    return float(np.mean(diff * diff))


def _evaluate_tests(learner, stream: Stream) -> list[float]:
    import torch

    out = []
    for x, y in stream.tests:
        xt = torch.from_numpy(x)
        if stream.kind == "classification":
            pred = learner.predict_many(xt).argmax(dim=1).cpu().numpy()
            out.append(float((pred == y).mean()))
        elif stream.kind == "reconstruction":
            prediction = learner.predict_many(xt).detach().cpu().numpy().reshape(x.shape)
            out.append(standardised_error(prediction, x, stream.scale))
        else:
            out.append(metrics.roc_auc(y, learner.score_many(xt).cpu().numpy()))
    return out


def run_method(stream: Stream, method: Method, seed: int = 0, batch_size: int = 10, eval_per_segment: int = 4,
               hidden: int = 128) -> dict[str, Any]:
    """One method on one stream. Deterministic for a given seed (single-threaded torch on the CPU)."""
    import torch

    torch.manual_seed(seed)
    started = time.perf_counter()
    model = build_model(stream, hidden)
    objective = "classification" if stream.kind == "classification" else "reconstruction"
    learner = _make_learner(method, model, objective, seed)

    n = len(stream.x)
    if method.iid:
        x, y, order = shuffled(stream, seed)
        segments = [(0, n, -1)]
    else:
        x, y, order = stream.x, stream.y, np.arange(n)
        segments = stream.segments
    labels = y if stream.kind == "classification" else None
    points = stream.eval_points(eval_per_segment)
    losses = np.full(n, np.nan)
    correct = np.zeros(n, dtype=bool) if stream.kind == "classification" else None
    matrix: list[list[float]] = []
    eval_samples: list[int] = []
    next_point = 0
    batches = 0
    for index, (start, end, _) in enumerate(segments):
        for b in range(start, end, batch_size):
            e = min(b + batch_size, end)
            xb = torch.from_numpy(x[b:e])
            yb = None if labels is None else torch.from_numpy(labels[b:e])
            if correct is not None:
                correct[b:e] = (learner.predict_many(xb).argmax(dim=1) == yb).cpu().numpy()
            losses[b:e] = learner.learn_many(xb, yb).detach().cpu().numpy()
            batches += 1
            while next_point < len(points) and points[next_point] <= e:
                matrix.append(_evaluate_tests(learner, stream))
                eval_samples.append(e)
                next_point += 1
        if method.oracle and index < len(segments) - 1:
            learner.flush()
            learner.consolidate()
    learner.flush()

    # Per-sample values back in stream order (the i.i.d. learner saw them shuffled).
    stream_losses = np.empty(n)
    stream_losses[order] = losses
    result: dict[str, Any] = {
        "benchmark": stream.name, "length": stream.length, "method": method.name, "seed": seed,
        "kind": stream.kind, "group": group_of(stream.name), "samples": n,
        "eval_samples": eval_samples, "matrix": matrix,
        "boundaries": stream.boundaries, "segments": [list(s) for s in stream.segments],
    }
    seen_at = _seen_at(stream, eval_samples, method.iid)
    higher = PRIMARY[stream.kind][1]
    result["final"] = matrix[-1]
    result["final_average"] = metrics.final_average(matrix)
    result["forgetting"] = metrics.forgetting(matrix, seen_at, higher_is_better=higher)
    result["segment_loss"] = [float(np.nanmean(stream_losses[s:e])) for s, e, _ in stream.segments]
    if correct is not None:
        stream_correct = np.empty(n, dtype=bool)
        stream_correct[order] = correct
        result["online_accuracy"] = float(stream_correct.mean())
        result["segment_accuracy"] = [float(stream_correct[s:e].mean()) for s, e, _ in stream.segments]
    if stream.kind == "anomaly":
        result["segment_auc"] = [metrics.roc_auc(stream.y[s:e], stream_losses[s:e]) for s, e, _ in stream.segments]
        result["online_auc"] = metrics.roc_auc(stream.y, stream_losses)
        result["returning_auc"] = result["segment_auc"][stream.returning]
        # What the detector still knew of the returning regime when it came back: its held-out test set
        # (with planted anomalies) scored by the model as it was at that moment.
        start, _, regime = stream.segments[stream.returning]
        row = max((i for i, p in enumerate(eval_samples) if p <= start), default=None)
        result["auc_at_return"] = math.nan if row is None else matrix[row][regime]
    result["primary"] = result["auc_at_return"] if stream.kind == "anomaly" else result["final_average"]
    result.update(stress_metrics.run_metrics(stream, result, stream_losses, learner, method.iid))
    result["events"] = _events(learner, stream, method)
    # Every batch is one update per optimiser step (OnlineMAS may take several per batch).
    result["updates"] = batches * int(getattr(learner, "steps_per_batch", 1) or 1)
    result["skipped_share"] = result["events"]["skipped_updates"] / max(result["updates"], 1)
    result["seconds"] = time.perf_counter() - started
    return result


def _seen_at(stream: Stream, eval_samples: Sequence[int], iid: bool) -> list[int]:
    """For each regime, the first matrix row measured after it was first shown."""
    rows = []
    for r in range(stream.n_regimes):
        if iid:
            rows.append(0)
            continue
        start = min(s for s, _, reg in stream.segments if reg == r)
        rows.append(next((i for i, p in enumerate(eval_samples) if p > start), len(eval_samples) - 1))
    return rows


def _events(learner, stream: Stream, method: Method) -> dict[str, Any]:
    counters = dict(getattr(learner, "counters", {}))
    events = list(getattr(learner, "events", []))
    kinds = ("plateaus", "peaks", "consolidations", "skipped_updates", "recoveries")
    out: dict[str, Any] = {k: counters.get(k, 0) for k in kinds}
    if method.iid:
        return out
    for kind in ("plateau", "peak", "consolidation"):
        samples = [int(ev["samples_seen"]) for ev in events if ev["kind"] == kind]
        where = [metrics.segment_position(s, stream.segments) for s in samples]
        out[kind + "_samples"] = samples
        out[kind + "_positions"] = [[i, round(p, 3)] for i, p in where]
        out[kind + "_distance"] = metrics.event_distances(samples, stream.boundaries,
                                                          [e for _, e, _ in stream.segments])
    return out


# -- a whole configuration --------------------------------------------------------------------------------------
def _task(args: tuple) -> dict[str, Any]:
    benchmark, length, seed, method, cfg = args
    import torch

    torch.set_num_threads(1)
    stream = make_stream(benchmark, length, seed, passes=(cfg.passes or {}).get(length))
    return run_method(stream, method, seed, cfg.batch_size, cfg.eval_per_segment, cfg.hidden)


def evaluate(cfg: EvalConfig, methods: Sequence[Method] | None = None,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every benchmark x length x seed x method of ``cfg``; return runs, summary and targets."""
    if methods is None:
        methods = default_methods(cfg.overrides, cfg.methods)
    tasks = [(b, length, s, m, cfg) for b in cfg.benchmarks for length in cfg.lengths for s in cfg.seeds
             for m in methods]
    runs: list[dict[str, Any]] = []
    if cfg.jobs > 1:
        import multiprocessing as mp

        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        with ctx.Pool(cfg.jobs) as pool:
            for run in pool.imap(_task, tasks):
                runs.append(run)
                if progress:
                    progress(_describe(run))
    else:
        for task in tasks:
            run = _task(task)
            runs.append(run)
            if progress:
                progress(_describe(run))
    summary = summarise(runs)
    return {"config": cfg.as_dict(), "methods": [_method_dict(m) for m in methods], "runs": runs,
            "summary": summary, "targets": targets(summary), "environment": _environment()}


def _describe(run: Mapping[str, Any]) -> str:
    return (f"{run['benchmark']:<17} {run['length']:<5} seed {run['seed']} {run['method']:<16} "
            f"primary {run['primary']:.4f}  consolidations {run['events']['consolidations']:>3}  "
            f"{run['seconds']:.1f}s")


def _method_dict(m: Method) -> dict[str, Any]:
    learner = {k: (v if isinstance(v, (int, float, str, bool, dict, list, type(None))) else repr(v))
               for k, v in m.learner.items()}
    return {"name": m.name, "learner": learner, "iid": m.iid, "oracle": m.oracle,
            "factory": None if m.factory is None else m.factory.__name__, "description": m.description}


def _environment() -> dict[str, Any]:
    import platform

    import torch

    return {"python": platform.python_version(), "torch": torch.__version__, "cpu_count": os.cpu_count()}
