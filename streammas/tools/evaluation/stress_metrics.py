"""Metrics of the stress streams (:mod:`~streammas.tools.evaluation.stress`), beside those of every stream.

Errors are the standardised reconstruction errors of the held-out rows
(:func:`~streammas.tools.evaluation.harness.standardised_error`), the same unit for every method; ROC AUCs score
the prequential per-sample losses (each before the sample was learned), as the anomaly streams' do.

Per run (:func:`run_metrics`):

* ``final_average`` (every stream's): the final error over all regimes;
* ``final_rare``: the final error over the rarest quarter of the regimes (fewest samples, then longest unseen);
* ``recovery``: after each permanent change, the new regime's error against the samples seen since;
* ``auc_rare_return``: planted anomalies against the other samples over the returns of the rare regimes;
* ``auc_fault_first``, ``auc_fault_return``: the onset of the faulty period (its first ``fault_onset`` samples:
  every online learner adapts to a fault that lasts, so only its onset can stand out) against as many normal
  samples just before it, when it first comes and when it recurs (a memory that replays it makes it familiar);
* ``memory_bytes``: the bytes of samples the method keeps to replay.

Across the runs of one stream and seed (:func:`add_samples_to_plain`): ``samples_to_plain``, the samples a method
needs after a permanent change until its error on the new regime is within 2% of the error plain (no memory)
has halfway through that regime's stretch, averaged over the changes: plain needs about half the stretch, a
memory that holds the learner back more. A method that never gets there counts the whole stretch, and
``changes_not_reached`` says how often. (Halfway, not at the end: within a stretch of a few thousand samples
the errors still fall, and a memory's end is rarely plain's.)

>>> curves = recovery_curves([100, 200, 300, 400], [[0.9, 1.0], [0.9, 0.6], [0.9, 0.4], [0.9, 0.3]],
...                          [(100, 400, 1)])
>>> curves[0]["samples"], curves[0]["error"]
([100, 200, 300], [0.6, 0.4, 0.3])
>>> fault_auc(np.array([0.1, 0.2, 0.3, 0.9, 0.8, 0.25]), 3, 6)
0.8888888888888888
"""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

from streammas.tools.evaluation import metrics

#: The per-run values the summary averages over seeds, in the order of the report's rows.
STRESS_KEYS = ("final_rare", "samples_to_plain", "auc_rare_return", "auc_fault_first", "auc_fault_return",
               "memory_bytes")
#: The report's rows: (key, what it is, how it reads).
ROWS = (
    ("final_average", "final error, all regimes (lower is better)", "error"),
    ("final_rare", "final error, rarest quarter of regimes", "error"),
    ("samples_to_plain", "samples after a permanent change to reach plain's error (fewer is better)", "samples"),
    ("auc_rare_return", "ROC AUC of planted anomalies when a rare regime returns (%)", "auc"),
    ("auc_fault_first", "ROC AUC of the faulty period when it first comes (%)", "auc"),
    ("auc_fault_return", "ROC AUC of the faulty period when it recurs (%)", "auc"),
    ("memory_bytes", "replay memory (KiB)", "kib"),
)


def memory_nbytes(learner: Any) -> int:
    """Bytes of samples a learner keeps to replay: the baseline's reservoir, OnlineMAS's replay memory."""
    if hasattr(learner, "memory_nbytes"):
        return int(learner.memory_nbytes())
    sizes = learner.state_nbytes() if hasattr(learner, "state_nbytes") else {}
    return int(sizes.get("replay", 0))


def recovery_curves(eval_samples: Sequence[int], matrix: Sequence[Sequence[float]],
                    permanent: Sequence[tuple[int, int, int]]) -> list[dict[str, Any]]:
    """For each permanent change ``(start, end, regime)``: the regime's error at every evaluation within
    ``(start, end]``, against the samples seen since ``start``."""
    out = []
    for start, end, regime in permanent:
        rows = [i for i, p in enumerate(eval_samples) if start < p <= end]
        out.append({"start": int(start), "end": int(end), "regime": int(regime),
                    "samples": [int(eval_samples[i] - start) for i in rows],
                    "error": [float(matrix[i][regime]) for i in rows]})
    return out


def fault_auc(losses: np.ndarray, start: int, end: int) -> float:
    """ROC AUC of the faulty samples ``[start, end)`` against as many samples just before them."""
    before = max(0, start - (end - start))
    labels = np.r_[np.zeros(start - before), np.ones(end - start)]
    return metrics.roc_auc(labels, losses[before:end])


def _indices(ranges: Sequence[tuple[int, int]]) -> np.ndarray:
    return np.concatenate([np.arange(s, e) for s, e in ranges]) if ranges else np.zeros(0, dtype=np.int64)


def run_metrics(stream: Any, result: Mapping[str, Any], losses: np.ndarray, learner: Any = None,
                iid: bool = False) -> dict[str, Any]:
    """The stress metrics of one run (nothing for a stream that is not a stress stream).

    ``losses`` are the run's prequential per-sample losses in stream order; ``iid``: the run learned the
    stream shuffled, so it has no change to recover from.
    """
    info = stream.meta.get("stress")
    if info is None:
        return {}
    final = np.asarray(result["final"], dtype=float)
    out: dict[str, Any] = {"rare_regimes": list(info["rare"]), "final_rare": float(np.mean(final[info["rare"]]))}
    if info.get("permanent") and not iid:
        out["recovery"] = recovery_curves(result["eval_samples"], result["matrix"], info["permanent"])
    if info.get("rare_returns"):
        idx = _indices(info["rare_returns"])
        out["auc_rare_return"] = metrics.roc_auc(np.asarray(info["anomalies"])[idx], losses[idx])
    faults = [(s, min(e, s + info.get("fault_onset", e - s))) for s, e in info.get("faults") or ()]
    if faults:
        out["auc_fault_first"] = fault_auc(losses, *faults[0])
    if len(faults) > 1:
        out["auc_fault_return"] = fault_auc(losses, *faults[-1])
    if learner is not None:
        out["memory_bytes"] = memory_nbytes(learner)
    return out


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def add_samples_to_plain(runs: Sequence[MutableMapping[str, Any]], band: float = 0.02) -> None:
    """Set ``samples_to_plain`` and ``changes_not_reached`` on every run with recovery curves whose stream and
    seed have a ``plain`` run (see the module's docstring); ``band``: how close to plain's error counts.

    >>> plain = {"benchmark": "b", "length": "long", "seed": 0, "method": "plain", "recovery": [
    ...     {"start": 0, "end": 400, "samples": [100, 200, 300, 400], "error": [0.8, 0.5, 0.4, 0.35]}]}
    >>> slow = dict(plain, method="slow", recovery=[dict(plain["recovery"][0], error=[0.9, 0.7, 0.5, 0.45])])
    >>> stuck = dict(plain, method="stuck", recovery=[dict(plain["recovery"][0], error=[0.9, 0.8, 0.7, 0.6])])
    >>> add_samples_to_plain([plain, slow, stuck])
    >>> plain["samples_to_plain"], slow["samples_to_plain"], stuck["samples_to_plain"], stuck["changes_not_reached"]
    (200.0, 300.0, 400.0, 1)
    """
    plain = {(r["benchmark"], r["length"], r["seed"]): r for r in runs if r["method"] == "plain" and "recovery" in r}
    for run in runs:
        ref = plain.get((run["benchmark"], run["length"], run["seed"]))
        if "recovery" not in run or ref is None:
            continue
        needed, missed = [], 0
        for mine, theirs in zip(run["recovery"], ref["recovery"]):
            half = (theirs["end"] - theirs["start"]) / 2
            target = next((e for s, e in zip(theirs["samples"], theirs["error"]) if s >= half), None)
            reached = None
            if _finite(target):
                reached = next((s for s, e in zip(mine["samples"], mine["error"])
                                if _finite(e) and e <= target * (1 + band)), None)
            if reached is None:
                missed += 1
                reached = mine["end"] - mine["start"]
            needed.append(reached)
        run["samples_to_plain"] = float(np.mean(needed)) if needed else math.nan
        run["changes_not_reached"] = missed
