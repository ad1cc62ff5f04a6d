"""Turning decoded numbers into a source's samples: dtypes, the stream's sample shape, non-finite rows,
labels, and JSON samples (the slow path of the wire format and every JSON Lines line).

All the checks raise or report :class:`connectors.counters.Reject`; none of them raises anything else
on bad input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from connectors.counters import Reject

#: Dtype names the wire format accepts, little-endian on the wire whatever the host.
WIRE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(name).newbyteorder("<")
    for name in (
        "float32", "float64", "float16",
        "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64",
    )
}  # fmt: skip
WIRE_DTYPES["bool"] = np.dtype("bool")

#: Up to this many dimensions per sample.
MAX_SAMPLE_NDIM = 8


def as_features(x: np.ndarray) -> np.ndarray:
    """``x`` as a C-contiguous float32 array (no copy when it already is one).

    >>> as_features(np.array([[1, 2]], dtype=np.int16)).dtype
    dtype('float32')
    """
    if x.dtype == np.float32 and x.flags.c_contiguous:
        return x
    return np.ascontiguousarray(x, dtype=np.float32)


def as_labels(y: np.ndarray) -> np.ndarray:
    """Integer and boolean labels as int64, floating labels as float32.

    >>> as_labels(np.array([1, 2], dtype=np.uint8)).dtype, as_labels(np.array([0.5])).dtype
    (dtype('int64'), dtype('float32'))
    """
    if y.dtype.kind in "biu":
        return np.ascontiguousarray(y, dtype=np.int64)
    if y.dtype.kind == "f":
        return np.ascontiguousarray(y, dtype=np.float32)
    raise Reject("label", f"labels of dtype {y.dtype} are not numbers")


def _all_finite(a: np.ndarray) -> bool:
    # One BLAS pass; a NaN or an infinity makes the sum of squares non-finite (so does an overflow,
    # which the exact test below then clears).
    fast = a.dtype in (np.float32, np.float64) and a.flags.c_contiguous
    return (fast and math.isfinite(np.vdot(a, a))) or bool(np.isfinite(a).all())


def drop_nonfinite(x: np.ndarray, y: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Remove the samples holding a NaN or an infinity (in ``x``, or in a floating ``y``).

    Returns ``(x, y, dropped)``; when every value is finite, ``x`` and ``y`` come back unchanged. The
    common case costs one pass over the data: the sum of squares (a BLAS dot product) is finite exactly
    when every value is, unless it overflows (values beyond about 1e17), in which case the exact
    element-wise test decides.

    >>> x = np.array([[1.0, 2.0], [np.nan, 0.0], [3.0, np.inf], [4.0, 5.0]], dtype=np.float32)
    >>> kept, _, dropped = drop_nonfinite(x)
    >>> kept.tolist(), dropped
    ([[1.0, 2.0], [4.0, 5.0]], 2)
    """
    x_ok = x.dtype.kind != "f" or _all_finite(x)
    y_ok = y is None or y.dtype.kind != "f" or _all_finite(y)
    if x_ok and y_ok:
        return x, y, 0
    keep = np.ones(x.shape[0], dtype=bool)
    if not x_ok:
        keep &= np.isfinite(x.reshape(x.shape[0], -1)).all(axis=1)
    if not y_ok:
        keep &= np.isfinite(y)
    dropped = int(x.shape[0] - keep.sum())
    return x[keep], None if y is None else y[keep], dropped


#: Where a sample shape fixed up front came from (``shape_origin``), as the messages say it.
ORIGINS = {"configured": "configured", "checkpoint": "from the checkpoint resumed (the model was built for it)"}


class SampleShape:
    """The stream's sample shape (``x.shape[1:]``): configured up front, or fixed by the first samples taken.

    A source either checks and fixes in one step (:meth:`check`, for input taken as soon as it is checked),
    or checks each piece of input with :meth:`admit` and calls :meth:`fix` once samples of it are really
    taken: input that is then rejected for another reason (its labels, its size, non-finite values) never
    decides the stream's shape. :meth:`admit` also refuses, unless configured, samples that cannot be
    learned (without a dimension, or without a value), so that no such input can fix the shape either.
    Every refusal raises :class:`~connectors.counters.Reject` (reason ``shape``).

    Parameters
    ----------
    shape : sequence of int or None, default None
        The shape fixed up front (``None``: the first samples taken fix it).
    origin : {"configured", "checkpoint"}, default "configured"
        Where a shape fixed up front came from, for the message about a sample that differs: the configuration,
        or the checkpoint a service resumed from (its model takes that shape).

    Attributes
    ----------
    shape : tuple of int or None
        The stream's sample shape, ``None`` while it is not known.
    configured : bool
        Whether the shape was given up front.

    Examples
    --------
    >>> s = SampleShape()
    >>> s.admit((0,))
    Traceback (most recent call last):
    ...
    connectors.counters.Reject: samples of shape (0,) hold no value
    >>> s.admit((4,)); s.shape is None  # admitted, not yet taken
    True
    >>> s.fix((4,))
    >>> s.check((5,))
    Traceback (most recent call last):
    ...
    connectors.counters.Reject: sample shape (5,) differs from the stream's (4,), fixed by its first samples
    >>> SampleShape([4], origin="checkpoint").check((5,))
    Traceback (most recent call last):
    ...
    connectors.counters.Reject: sample shape (5,) differs from the stream's (4,), from the checkpoint resumed (...)
    """

    def __init__(self, shape: Sequence[int] | None = None, origin: str = "configured") -> None:
        if origin not in ORIGINS:
            raise ValueError(f"shape_origin must be one of {', '.join(map(repr, ORIGINS))}, got {origin!r}")
        self.shape: tuple[int, ...] | None = None if shape is None else tuple(int(d) for d in shape)
        self.configured = shape is not None
        self.origin = origin

    def admit(self, shape: tuple[int, ...], count: int = 1) -> None:
        """Raise ``Reject("shape", ..., count)`` unless samples of ``shape`` may join the stream."""
        shape = tuple(shape)
        if self.shape is not None:
            if shape != self.shape:
                raise Reject("shape", self._differs(shape), count)
            return
        if not shape:
            raise Reject("shape", "samples without a dimension (a bare [B] array); send [B, 1] for one value "
                                  "per sample", count)
        if 0 in shape:
            raise Reject("shape", f"samples of shape {shape} hold no value", count)

    def forget(self) -> None:
        """Let the next samples taken fix the shape again (a consumer could not use the one they fixed); a
        configured shape stays."""
        if not self.configured:
            self.shape = None

    def fix(self, shape: tuple[int, ...]) -> None:
        """Fix the stream's shape to ``shape`` if it is not known yet (samples of it were taken)."""
        if self.shape is None:
            self.shape = tuple(shape)

    def check(self, shape: tuple[int, ...]) -> None:
        """Fix the shape if it is not known yet, else raise ``Reject("shape")`` for a shape that differs."""
        if self.shape is None:
            self.shape = tuple(shape)
        elif shape != self.shape:
            raise Reject("shape", self._differs(tuple(shape)))

    def _differs(self, shape: tuple[int, ...]) -> str:
        source = ORIGINS[self.origin] if self.configured else "fixed by its first samples"
        return f"sample shape {shape} differs from the stream's {self.shape}, {source}"

    @property
    def ndim(self) -> int | None:
        return None if self.shape is None else len(self.shape)


def json_samples(
    obj: object, shape: SampleShape, *, fix: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Samples from a decoded JSON value: ``{"x": sample}`` or ``{"x": sample, "y": label}`` for one
    sample, ``{"x": [sample, ...], "y": [label, ...]}`` for several, or a bare ``sample`` list.

    Whether ``x`` is one sample or a list of samples follows from its depth against the stream's sample
    shape; before the shape is known, a flat list is one sample and a nested list is several vector
    samples. Returns float32 ``x`` of shape ``[n, ...]`` and ``y`` (``None`` without labels). The shape is
    checked with :meth:`SampleShape.admit` (samples without a value are refused) and, with ``fix``, fixed
    once the whole value was accepted; a caller that may still drop the samples passes ``fix=False`` and
    fixes it itself. A reject counts the samples when they are known (``Reject.count``).

    >>> shape = SampleShape()
    >>> x, y = json_samples({"x": [[1, 2], [3, 4]], "y": [0, 1]}, shape)
    >>> x.tolist(), y.tolist(), shape.shape
    ([[1.0, 2.0], [3.0, 4.0]], [0, 1], (2,))
    >>> json_samples({"x": [5, 6], "y": 1}, shape)[0].tolist()
    [[5.0, 6.0]]
    """
    if isinstance(obj, dict):
        if "x" not in obj:
            raise Reject("schema", "JSON object without an 'x' field")
        raw_x, raw_y = obj["x"], obj.get("y")
    elif isinstance(obj, list):
        raw_x, raw_y = obj, None
    else:
        raise Reject("schema", f"expected a JSON object with 'x' or a list, got {type(obj).__name__}")
    if not isinstance(raw_x, list):
        raise Reject("schema", "'x' must be a list of numbers (or of lists of numbers)")
    try:
        x = np.array(raw_x, dtype=np.float32)
    except (ValueError, TypeError, OverflowError) as e:
        raise Reject("schema", f"'x' is not a regular array of numbers ({e})") from None
    if x.ndim == 0 or x.ndim > MAX_SAMPLE_NDIM + 1:
        raise Reject("shape", f"'x' has {x.ndim} dimensions")
    if shape.ndim is not None:
        single = x.ndim == shape.ndim
        if not single and x.ndim != shape.ndim + 1:
            raise Reject("shape", f"'x' of shape {x.shape} fits neither one sample nor a list of {shape.shape}")
    else:
        single = x.ndim == 1
    if single:
        x = x[None]
    n = x.shape[0]
    shape.admit(x.shape[1:], n)
    y = None
    if raw_y is not None:
        try:
            y = _json_labels(raw_y, single, n)
        except Reject as e:
            e.count = n
            raise
    if fix and n:
        shape.fix(x.shape[1:])
    return np.ascontiguousarray(x), y


def _json_labels(raw: object, single: bool, n: int) -> np.ndarray:
    if single:
        if isinstance(raw, list):
            raise Reject("schema", "one sample with a list of labels")
        raw = [raw]
    if not isinstance(raw, list) or len(raw) != n:
        raise Reject("schema", f"'y' must be a list of {n} labels")
    if not all(isinstance(v, (int, float)) for v in raw):
        raise Reject("label", "labels must be numbers")
    try:
        return as_labels(np.array(raw))
    except OverflowError:
        raise Reject("label", "label out of range") from None
