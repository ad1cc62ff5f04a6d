"""``streammas inspect STATE_DIR [--json] [--plot out.png]``: what a state directory holds, from its newest valid
checkpoint.

Samples seen, consolidations and the learner's other counters, the plateau/peak/consolidation history, the
latest batch losses (the plateau detector's window), the model and the source's position, and per-layer
statistics of the consolidated importance (Omega). ``--plot`` draws the history and the importance
(:mod:`streammas.tools.inspect_plot`; needs matplotlib). Reading never changes the directory (safe while the
service runs); corrupt checkpoints are listed and skipped.

>>> import tempfile, torch
>>> from streammas import OnlineMAS
>>> from streammas.service.checkpoint import CheckpointStore
>>> from streammas.models import MLPAutoencoder
>>> learner = OnlineMAS(MLPAutoencoder(in_features=4, hidden=(8,), latent=2))
>>> _ = learner.learn_many(torch.rand(16, 4))
>>> with tempfile.TemporaryDirectory() as d:
...     _ = CheckpointStore(d).save(learner.state_dict(), {"model": {"kind": "mlp-autoencoder"}})
...     summary = summarize(d)
>>> summary["samples_seen"], summary["consolidations"], summary["importance"]   # measured, not consolidated yet
(16, 0, {})
>>> summary["importance_status"]
'measured on 16 samples, not consolidated yet (no plateau so far)'
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import sys
from collections.abc import Mapping
from typing import Any

import torch

from streammas.learner.replay import describe_memory
from streammas.service.checkpoint import Checkpoint, CheckpointStore

HISTORY_KINDS = ("plateau", "peak", "consolidation")


class InspectError(Exception):
    """Nothing to inspect (no directory, no valid checkpoint).

    Raised by :func:`summarize`; ``streammas inspect`` prints its message and exits with status 2.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     summarize(d)
    Traceback (most recent call last):
        ...
    streammas.tools.inspect.InspectError: ... holds no checkpoint (ckpt-*.pt)
    """


def tensor_stats(t: torch.Tensor) -> dict[str, Any]:
    """Shape, mean, std, min, max and the fraction of non-zero entries of a tensor.

    >>> tensor_stats(torch.tensor([0.0, 1.0, 3.0, 0.0]))["nonzero"]
    0.5
    """
    f = t.detach().float().reshape(-1)
    n = f.numel()
    if n == 0:
        return {"shape": list(t.shape), "numel": 0}
    values = torch.stack([f.mean(), f.std() if n > 1 else torch.zeros(()), f.min(), f.max(),
                          (f != 0).float().mean()]).tolist()
    mean, std, low, high, nonzero = values
    return {"shape": list(t.shape), "numel": n, "mean": mean, "std": std, "min": low, "max": high,
            "nonzero": nonzero}


def _omega(learner: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The consolidated Omega by parameter name, from a learner state (the synapses' layout)."""
    synapses = learner.get("synapses") or {}
    omega = synapses.get("omega")
    names = synapses.get("names")
    if isinstance(omega, Mapping):
        return {str(k): v for k, v in omega.items() if isinstance(v, torch.Tensor)}
    if isinstance(omega, (list, tuple)):
        if not names:
            model = learner.get("model") or {}
            names = [k for k, v in model.items() if isinstance(v, torch.Tensor) and v.is_floating_point()]
        return {str(n): t for n, t in zip(names, omega) if isinstance(t, torch.Tensor)}
    return {}


def consolidations_of(learner: Mapping[str, Any], meta: Mapping[str, Any], counters: Mapping[str, int]) -> int:
    """The consolidations a checkpoint records (its metadata, else the synapses' or the learner's counters)."""
    found = meta.get("consolidations", (learner.get("synapses") or {}).get("consolidations"))
    return int(counters.get("consolidations", 0) if found is None else found)


def importance_status(learner: Mapping[str, Any], consolidations: int) -> str:
    """What the state's importance is: consolidated, measured but not consolidated yet, or not measured at all.

    >>> importance_status({"synapses": {"running_count": 0}}, 0)
    'not measured: no sample measured yet (importance_source = "buffer" measures at a plateau)'
    >>> importance_status({"synapses": {"running_count": 320}}, 0)
    'measured on 320 samples, not consolidated yet (no plateau so far)'
    """
    running = int((learner.get("synapses") or {}).get("running_count", 0))
    if consolidations:
        return f"consolidated over {consolidations} regimes; measured on {running} samples since"
    if running:
        return f"measured on {running} samples, not consolidated yet (no plateau so far)"
    return 'not measured: no sample measured yet (importance_source = "buffer" measures at a plateau)'


def _loss_window(learner: Mapping[str, Any]) -> dict[str, Any]:
    """The plateau detector's latest batch losses and its step count (empty for a detector of another kind)."""
    detector = learner.get("detector")
    if not isinstance(detector, Mapping) or not isinstance(detector.get("values"), (list, tuple)):
        return {}
    values = [float(v) for v in detector["values"] if isinstance(v, (int, float))]
    return {"values": values, "steps": int(detector.get("steps") or len(values))}


def summarize_checkpoint(ckpt: Checkpoint) -> dict[str, Any]:
    """The summary of one loaded checkpoint (see the module doc)."""
    learner = ckpt.learner
    meta = ckpt.meta
    counters = {str(k): int(v) for k, v in (learner.get("counters") or {}).items()}
    events = [dict(e) for e in learner.get("events") or [] if isinstance(e, Mapping)]
    # Omega is a measurement only once a regime has been consolidated: before that it is zeros, not "unimportant"
    omega = _omega(learner) if int(consolidations_of(learner, meta, counters)) else {}
    service = meta.get("service") or {}
    rejected = {str(k): int(v) for k, v in (service.get("rejected") or {}).items() if v}
    if counters.get("rejected_samples"):  # the learner's own (non-finite input), kept in its state
        rejected["learner"] = counters["rejected_samples"]
    model_state = learner.get("model") or {}
    parameters = sum(v.numel() for v in model_state.values() if isinstance(v, torch.Tensor))
    consolidations = consolidations_of(learner, meta, counters)
    return {
        "samples_seen": int(learner.get("samples_seen", meta.get("samples_seen", 0))),
        "consolidations": int(consolidations),
        "steps": int(learner.get("steps", 0)),
        "counters": counters,
        "plateau_history": [e for e in events if e.get("kind") in HISTORY_KINDS],
        "loss_window": _loss_window(learner),
        "importance": {name: tensor_stats(t) for name, t in omega.items()},
        "importance_status": importance_status(learner, int(consolidations)),
        "memory": describe_memory(learner.get("replay") or {}),
        "model": {**(meta.get("model") or {}), "tensor_elements": parameters},
        "source": meta.get("source"),
        "service": meta.get("service"),
        "rejected": rejected,
        "rejected_total": sum(rejected.values()),
        "world_size": int((meta.get("distributed") or {}).get("world_size", 1)),
        "distributed_mode": (meta.get("distributed") or {}).get("mode"),
        "checkpoint": {"path": str(ckpt.path), "seq": ckpt.seq, "bytes": ckpt.nbytes, "created": ckpt.created,
                       "created_utc": _dt.datetime.fromtimestamp(ckpt.created, _dt.UTC).isoformat(),
                       "reason": meta.get("reason"), "streammas_version": meta.get("streammas_version")},
    }


def summarize(state_dir: str | os.PathLike) -> dict[str, Any]:
    """The summary of a state directory's newest valid checkpoint (raises :class:`InspectError`)."""
    if not os.path.isdir(state_dir):
        raise InspectError(f"{os.fspath(state_dir)} is not a directory")
    store = CheckpointStore(state_dir, create=False)
    paths = store.paths()
    if not paths:
        raise InspectError(f"{os.fspath(state_dir)} holds no checkpoint (ckpt-*.pt)")
    corrupt: list[dict[str, str]] = []
    found: Checkpoint | None = None
    for item in store.iter_valid():
        if isinstance(item, Checkpoint):
            found = item
            break
        corrupt.append({"path": str(item[0]), "reason": item[1]})
    if found is None:
        raise InspectError(f"no valid checkpoint in {os.fspath(state_dir)}: "
                           + "; ".join(f"{c['path']}: {c['reason']}" for c in corrupt))
    summary = summarize_checkpoint(found)
    summary["checkpoints"] = [str(p) for p in paths]
    summary["corrupt"] = corrupt
    return summary


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def render(summary: Mapping[str, Any], history: int = 20) -> str:
    """Human-readable text of a :func:`summarize` result."""
    ck = summary["checkpoint"]
    model = summary.get("model") or {}
    counters = summary.get("counters") or {}
    lines = [
        f"checkpoint      {ck['path']} ({ck['bytes']:,} bytes, {ck['created_utc']}, reason: {ck.get('reason')})",
        f"samples seen    {summary['samples_seen']:,} in {summary['steps']:,} steps",
        f"consolidations  {summary['consolidations']}",
        "counters        " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counters.items()
                                       if k != "rejected_samples"),  # on the rejected line, with the service's
        f"model           {model.get('factory') or model.get('kind')}, sample shape {model.get('sample_shape')}, "
        f"{model.get('tensor_elements', 0):,} values in its state" if model.get("sample_shape") is not None else
        f"model           {model.get('factory') or model.get('kind')}, not built yet: no valid sample so far",
    ]
    source = summary.get("source") or {}
    if source.get("positions") is not None:  # a group of workers: each one's position in its shard
        mode = summary.get("distributed_mode")
        lines.append(f"source          {source.get('uri')}, {summary.get('world_size')} workers"
                     + (f" ({mode} mode)" if mode else ""))
        lines += [f"  worker {r}      position: {json.dumps(p)}" for r, p in enumerate(source["positions"])]
    elif source:
        lines.append(f"source          {source.get('uri')} (position: {json.dumps(source.get('position'))})")
    rejected = summary.get("rejected") or {}
    lines.append(f"rejected        {summary.get('rejected_total', 0):,} samples"
                 + (": " + ", ".join(f"{k} {v:,}" for k, v in sorted(rejected.items())) if rejected else ""))
    for c in summary.get("corrupt") or []:
        lines.append(f"corrupt         {c['path']}: {c['reason']}")
    events = summary.get("plateau_history") or []
    lines.append("")
    lines.append(f"plateau history ({len(events)} events" + (f", last {history} shown)" if len(events) > history
                                                              else ")"))
    if events:
        lines.append(f"  {'samples':>10}  {'step':>8}  {'event':<14} loss")
        for e in events[-history:]:
            value = e.get("value")
            lines.append(f"  {e.get('samples_seen', ''):>10}  {e.get('step', ''):>8}  {e.get('kind', ''):<14} "
                         f"{'' if value is None else _fmt(value)}")
    importance = summary.get("importance") or {}
    lines.append("")
    if summary.get("memory"):
        lines.append(f"replay memory  {summary['memory']}")
    lines.append("importance (consolidated Omega) per layer")
    if summary.get("importance_status"):
        lines.append(f"  {summary['importance_status']}")
    if importance:
        width = max(len(n) for n in importance)
        lines.append(f"  {'parameter':<{width}}  {'shape':<12} {'mean':>10} {'std':>10} {'max':>10} {'nonzero':>8}")
        for name, s in importance.items():
            if not s.get("numel"):
                continue
            lines.append(f"  {name:<{width}}  {str(s['shape']):<12} {_fmt(s['mean']):>10} {_fmt(s['std']):>10} "
                         f"{_fmt(s['max']):>10} {s['nonzero']:>8.1%}")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("state_dir", metavar="STATE_DIR", help="the service's [state] dir")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--history", type=int, default=20, metavar="N", help="plateau events shown (text)")
    parser.add_argument("--plot", metavar="FILE", help="also draw the event history and the importance per layer "
                        "to FILE (.png, .svg, .pdf; needs matplotlib: pip install 'streammas[plot]'; default: no "
                        "plot)")


def run_command(args: argparse.Namespace) -> int:
    try:
        summary = summarize(args.state_dir)
    except InspectError as e:
        print(f"streammas inspect: {e}", file=sys.stderr)
        return 2
    if args.plot:
        from streammas.tools.inspect_plot import PlotUnavailable, plot_summary

        try:
            plot_summary(summary, args.plot, name=args.state_dir)
        except PlotUnavailable as e:
            print(f"streammas inspect: {e}", file=sys.stderr)
            return 2
        except OSError as e:
            print(f"streammas inspect: cannot write {args.plot}: {e.strerror or e}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(_jsonable(summary), indent=2, default=str))
    else:
        sys.stdout.write(render(summary, args.history))
    return 0


def _jsonable(value: Any) -> Any:
    """NaN and infinities as ``null`` (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
