"""Metrics of a run: the matrix of per-regime scores over time, final scores, forgetting, the share of the
plain-to-i.i.d. gap closed, ROC AUC, and how far the detector's events lie from the true boundaries.

Scores are "higher is better" for accuracy and ROC AUC, "lower is better" for reconstruction error; each
function takes ``higher_is_better`` where it matters.

>>> m = [[0.9, 0.1], [0.6, 0.8]]          # rows: evaluation times; columns: regimes
>>> final_average(m)
0.7
>>> forgetting(m, seen_at=[0, 1])       # best minus final, once the regime has been seen
[0.30000000000000004, 0.0]
>>> gap_closed(method=0.75, plain=0.7, iid=0.8)
0.5
>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def final_average(matrix: Sequence[Sequence[float]]) -> float:
    """The mean over regimes of the last row."""
    return float(np.mean(matrix[-1]))


def forgetting(matrix: Sequence[Sequence[float]], seen_at: Sequence[int], higher_is_better: bool = True) -> list[float]:
    """Per regime, the best score reached (from the row where it was first seen on) minus the final score.

    For an error (``higher_is_better=False``) it is the final error minus the lowest: positive means forgotten.
    """
    m = np.asarray(matrix, dtype=float)
    out = []
    for r, first in enumerate(seen_at):
        column = m[first:, r]
        if len(column) == 0:
            out.append(math.nan)
            continue
        best = column.max() if higher_is_better else column.min()
        with np.errstate(invalid="ignore"):  # an error that is infinite throughout: NaN
            out.append(float(best - column[-1]) if higher_is_better else float(column[-1] - best))
    return out


def gap_closed(method: float, plain: float, iid: float, higher_is_better: bool = True) -> float:
    """The share of the gap between plain online SGD and the i.i.d. learner that a method closes.

    1 means as good as i.i.d., 0 as plain, negative worse than plain. NaN when there is no gap.
    """
    gap = iid - plain if higher_is_better else plain - iid
    if not math.isfinite(gap) or abs(gap) < 1e-12:
        return math.nan
    gain = method - plain if higher_is_better else plain - method
    return float(gain / gap)


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve (ties count one half); NaN unless both classes are present."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=float)
    keep = np.isfinite(s)
    y, s = y[keep], s[keep]
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def event_distances(event_samples: Sequence[int], boundaries: Sequence[int], segment_ends: Sequence[int]
                    ) -> dict[str, float | list[int]]:
    """Where detector events lie relative to the true boundaries.

    For each event: the signed distance (in samples) to the nearest true boundary (negative: before it).
    Returns the list, its mean absolute value, and the share of events that fall in the last quarter
    of a segment (late in a regime, where consolidating is most useful) or the first quarter of the next.
    """
    bounds = np.asarray(boundaries, dtype=float)
    signed = []
    for s in event_samples:
        if len(bounds) == 0:
            signed.append(0)
            continue
        k = int(np.argmin(np.abs(bounds - s)))
        signed.append(int(s - bounds[k]))
    return {
        "signed": signed,
        "mean_abs": float(np.mean(np.abs(signed))) if signed else math.nan,
    }


def segment_position(samples: int, segments: Sequence[tuple[int, int, int]]) -> tuple[int, float]:
    """(segment index, position within it in [0, 1)) of a sample count.

    >>> segment_position(150, [(0, 100, 0), (100, 300, 1)])
    (1, 0.25)
    """
    for i, (start, end, _) in enumerate(segments):
        if start <= samples < end:
            return i, (samples - start) / max(end - start, 1)
    return len(segments) - 1, 1.0


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and (population) standard deviation, ignoring NaN; NaN for no finite value."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan
    return float(v.mean()), float(v.std())
