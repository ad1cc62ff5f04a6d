"""What a sink emits per sample: a JSON-friendly record with the sample's score, its label, and the
caller's ``extra`` split into per-sample values and batch-level values.

``extra`` rules (shared by every built-in sink): a numpy array whose first dimension is the batch size
is per sample (record ``k`` gets element ``k``); anything else belongs to the batch and goes, once, on
the batch's last record. Non-finite floats become ``null`` (JSON has no NaN).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from connectors.base import Batch


def jsonable(value: Any) -> Any:
    """``value`` with numpy arrays and scalars turned into lists and Python numbers, NaN/inf into
    ``None``, and mappings and sequences converted recursively.

    >>> jsonable({"a": np.float32(1.5), "b": np.array([1, 2]), "c": float("nan"), "d": (1, np.int64(2))})
    {'a': 1.5, 'b': [1, 2], 'c': None, 'd': [1, 2]}
    """
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return value


#: Record fields a sink sets itself; ``extra`` may not use them.
RESERVED = frozenset({"seq", "score", "y"})


def is_per_sample(value: Any, n: int) -> bool:
    """Whether an ``extra`` value gives one value per sample of a batch of ``n`` (see the module doc)."""
    return isinstance(value, np.ndarray) and value.ndim >= 1 and value.shape[0] == n


def split_extra(extra: dict | None, n: int) -> tuple[dict[str, list], dict[str, Any]]:
    """``(per_sample, per_batch)`` parts of ``extra`` for a batch of ``n`` samples (see the module doc).

    >>> split_extra({"loss": np.array([0.1, 0.2]), "events": [{"type": "consolidate"}]}, 2)
    ({'loss': [0.1, 0.2]}, {'events': [{'type': 'consolidate'}]})
    """
    per_sample: dict[str, list] = {}
    per_batch: dict[str, Any] = {}
    for key, value in (extra or {}).items():
        if key in RESERVED:
            raise ValueError(f"extra may not use the record field {key!r}")
        if is_per_sample(value, n):
            per_sample[str(key)] = jsonable(value)
        else:
            per_batch[str(key)] = jsonable(value)
    return per_sample, per_batch


def check_scores(batch: Batch, scores: Any) -> np.ndarray:
    """``scores`` as a float array of one value per sample of ``batch`` (``ValueError`` otherwise)."""
    arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if arr.shape[0] != len(batch):
        raise ValueError(f"{arr.shape[0]} scores for a batch of {len(batch)} samples")
    return arr


def sample_records(batch: Batch, scores: Any, extra: dict | None = None, *, first_seq: int = 0) -> list[dict]:
    """One record per sample: ``seq`` (a running sample number), ``score``, ``y`` when the batch has
    labels, the per-sample part of ``extra``; the last record also gets the batch-level part.

    >>> b = Batch(np.zeros((2, 3), dtype=np.float32), y=np.array([1, 0]))
    >>> sample_records(b, [0.5, float("inf")], {"events": ["plateau"]}, first_seq=10)
    [{'seq': 10, 'score': 0.5, 'y': 1}, {'seq': 11, 'score': None, 'y': 0, 'events': ['plateau']}]
    """
    values = check_scores(batch, scores).tolist()
    n = len(values)
    per_sample, per_batch = split_extra(extra, n)
    labels = None if batch.y is None else jsonable(batch.y)
    records = []
    for k, score in enumerate(values):
        record: dict[str, Any] = {"seq": first_seq + k, "score": score if math.isfinite(score) else None}
        if labels is not None:
            record["y"] = labels[k]
        for key, column in per_sample.items():
            record[key] = column[k]
        records.append(record)
    if records:
        records[-1].update(per_batch)
    return records
