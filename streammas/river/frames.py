"""Batches in, float32 matrices out: river's dataframes (pandas, polars, ...), arrays and lists of dicts.

``learn_many``/``score_many`` and the classifier's ``*_many`` accept any of these; this module turns each
into column names and values, checks that feature values are numbers, and turns label columns into lists.

>>> names, values = rows([{"a": 1, "b": 2}, {"b": 3}])
>>> names, values.tolist()
(['a', 'b'], [[1.0, 2.0], [0.0, 3.0]])
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch

__all__ = ["as_float", "is_frame", "label_list", "ordered", "rows"]


def as_float(name: Hashable, value: Any) -> float:
    """The value of feature ``name`` as a float, or a ValueError that says to encode it.

    >>> as_float("x", "2.5")
    2.5
    """
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"feature {name!r} has the non-numeric value {value!r}: encode it first "
            "(for example with river.preprocessing.OneHotEncoder)"
        ) from None


def is_frame(X: Any) -> bool:
    """Whether a batch is a dataframe (anything but an array, a tensor or a list of dicts)."""
    return not isinstance(X, (np.ndarray, torch.Tensor, list))


def rows(X: Any) -> tuple[list[Hashable] | None, np.ndarray]:
    """Column names (``None`` for an array) and the float32 values of a batch."""
    if isinstance(X, (np.ndarray, torch.Tensor)):
        array = np.asarray(X, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"a batch must be 2-D [samples, features], got shape {array.shape}")
        return None, array
    if isinstance(X, list):
        names: list[Hashable] = []
        for row in X:
            names.extend(k for k in row if k not in names)
        array = np.array([[as_float(k, row.get(k, 0.0)) for k in names] for row in X], dtype=np.float32)
        return names, array.reshape(len(X), len(names))
    if type(X).__name__ == "DataFrame" and type(X).__module__.startswith("pandas"):
        # pandas as it is: river's frame-agnostic wrapper costs more than the conversion itself
        try:
            return list(X.columns), X.to_numpy(dtype=np.float32)
        except (TypeError, ValueError):
            raise ValueError("a feature has non-numeric values: encode it first "
                             "(for example with river.preprocessing.OneHotEncoder)") from None
    from river.utils.dataframe import into_frame, to_numpy

    frame = into_frame(X)
    return list(frame.columns), to_numpy(frame, dtype=np.float32)


def ordered(names) -> list[Hashable]:
    """Feature names sorted when they can be, so that the order features arrive in never matters."""
    try:
        return sorted(names)
    except TypeError:
        return list(names)


def label_list(y: Any) -> list:
    """The labels of a batch (a series, an array or any iterable) as a list."""
    if hasattr(y, "to_list"):
        return list(y.to_list())
    if hasattr(y, "tolist"):
        return list(y.tolist())
    return list(y)
