"""Wire format v1: how samples travel over ZeroMQ, in a form any language can produce. Never pickle.

A message is either

* **binary** (the fast path), a multipart message ``[header, payload]`` or ``[header, payload,
  labels]``: ``header`` is UTF-8 JSON ``{"v": 1, "dtype": "float32", "shape": [B, ...]}`` with an
  optional ``"labels_dtype"`` (default ``"int64"`` when a labels frame is present); ``payload`` is the
  ``B x ...`` array as raw C-order little-endian bytes; ``labels`` is ``B`` raw little-endian values.
  Unknown header keys are ignored.
* **JSON** (the slow path, for simple producers), a single frame ``{"x": [...]}`` (one sample) or
  ``{"x": [[...], ...], "y": [...]}`` (several, with labels); see :func:`connectors.samples.json_samples`.

The frame count tells the two apart. On a topic-filtered PUB/SUB stream an extra first frame, the
topic, precedes either form.

A transport that carries one buffer per message (an MQTT payload) has the **packed** binary form: the
header on one line, a newline (``\\n``), then the payload bytes and, when the header's ``shape`` leaves room
for them, the labels bytes right after (:func:`encode_packed`). A buffer is packed when its first line is a
JSON object with ``"v"`` and without ``"x"``; anything else is the JSON form.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np

from connectors.counters import Reject
from connectors.samples import MAX_SAMPLE_NDIM, WIRE_DTYPES

VERSION = 1
DEFAULT_LABELS_DTYPE = "int64"
#: The most payload bytes a header may declare when its reader sets no lower limit (1 TiB): a bound that
#: keeps every declared dimension within what numpy can index.
MAX_PAYLOAD_BYTES = 1 << 40


@dataclass(frozen=True)
class Header:
    """A validated binary header.

    Made by :func:`parse_header` from the header frame ``{"v": 1, "dtype": ..., "shape": [B, ...]}``.

    Parameters
    ----------
    dtype : numpy.dtype
        The payload's dtype.
    shape : tuple of int
        The payload's shape, ``(B, ...)``: the count of samples, then the sample shape.
    labels_dtype : numpy.dtype
        The labels frame's dtype (``int64`` unless the header says otherwise).

    Examples
    --------
    >>> h = parse_header(b'{"v": 1, "dtype": "float32", "shape": [256, 784]}')
    >>> h.count, h.sample_shape, h.nbytes
    (256, (784,), 802816)
    """

    dtype: np.dtype
    shape: tuple[int, ...]
    labels_dtype: np.dtype

    @property
    def count(self) -> int:
        return self.shape[0]

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize

    @property
    def labels_nbytes(self) -> int:
        return self.shape[0] * self.labels_dtype.itemsize


def load_json(raw: bytes) -> object:
    """Decode a JSON frame, rejecting (reason ``json``) anything that is not UTF-8 JSON."""
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise Reject("json", f"invalid UTF-8 JSON ({str(e)[:80]})") from None


def parse_header(raw: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> Header:
    """Decode and validate a binary header frame (reasons ``json``, ``header``, ``version``, ``dtype``,
    ``shape``, ``too_large``; see :func:`header_from`)."""
    return header_from(load_json(raw), max_bytes)


def header_from(obj: object, max_bytes: int = MAX_PAYLOAD_BYTES) -> Header:
    """A :class:`Header` from a decoded header frame, every declared size checked before anything is
    allocated for it: a shape is 1 to ``MAX_SAMPLE_NDIM + 1`` integers >= 0 whose samples hold at least
    one value (reason ``shape``), and whose payload (or, for an empty batch, one sample) declares at most
    ``max_bytes`` bytes (reason ``too_large``). Every dimension is then at most ``max_bytes``, so that the
    shape is one numpy can make, whatever a producer declares.

    >>> try:
    ...     header_from({"v": 1, "dtype": "float32", "shape": [0, 10**30]})
    ... except Reject as e:
    ...     print(e.reason)
    too_large
    """
    if not isinstance(obj, dict):
        raise Reject("header", "header is not a JSON object")
    if "v" not in obj:
        raise Reject("header", "header without a version 'v'")
    if obj["v"] != VERSION or isinstance(obj["v"], bool):
        raise Reject("version", f"unknown wire format version {short_repr(obj['v'])}")
    dtype = _dtype(obj.get("dtype"), "dtype")
    labels_dtype = _dtype(obj.get("labels_dtype", DEFAULT_LABELS_DTYPE), "labels_dtype")
    shape = obj.get("shape")
    if (
        not isinstance(shape, list)
        or not 1 <= len(shape) <= MAX_SAMPLE_NDIM + 1
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        most = MAX_SAMPLE_NDIM + 1
        raise Reject("shape", f"'shape' must be a list of 1 to {most} sizes >= 0, got {short_repr(shape)}")
    sample_bytes = math.prod(shape[1:]) * dtype.itemsize
    if sample_bytes == 0:
        raise Reject("shape", f"samples of shape {short_repr(shape[1:])} hold no value")
    # (Products are compared, never printed: a declared size may have more digits than Python prints.)
    if sample_bytes > max_bytes:
        raise Reject("too_large", f"samples of shape {short_repr(shape[1:])} declare over {max_bytes} bytes each")
    if shape[0] * sample_bytes > max_bytes:
        raise Reject("too_large", f"shape {short_repr(shape)} declares over {max_bytes} bytes")
    return Header(dtype, tuple(shape), labels_dtype)


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, for putting what a producer sent into a log line.

    >>> short_repr(list(range(100)), 20)
    '[0, 1, 2, 3, 4, 5...'
    """
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _dtype(name: object, field: str) -> np.dtype:
    if not isinstance(name, str) or name not in WIRE_DTYPES:
        raise Reject("dtype", f"unknown {field} {short_repr(name)}; use one of {', '.join(WIRE_DTYPES)}")
    return WIRE_DTYPES[name]


def _wire_array(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    name = a.dtype.name
    if name not in WIRE_DTYPES:
        raise TypeError(f"{what} of dtype {a.dtype} cannot be sent; use one of {', '.join(WIRE_DTYPES)}")
    return np.ascontiguousarray(a, dtype=WIRE_DTYPES[name])


def encode(x: np.ndarray, y: np.ndarray | None = None, **fields: object) -> list[bytes | memoryview]:
    """Frames of a binary message for ``x`` (``[B, ...]``) and optional labels ``y`` (``[B]``).

    Extra JSON-serialisable header ``fields`` ride along (receivers ignore keys they do not know). The
    payload frames are views of the arrays: send them before changing the arrays.

    >>> frames = encode(np.zeros((2, 3), dtype=np.float32), np.array([1, 0]))
    >>> frames[0]
    b'{"v":1,"dtype":"float32","shape":[2,3],"labels_dtype":"int64"}'
    >>> [len(f) for f in frames[1:]]
    [24, 16]
    """
    x = _wire_array(x, "x")
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension")
    header: dict[str, object] = {"v": VERSION, "dtype": x.dtype.name, "shape": list(x.shape)}
    frames: list[bytes | memoryview] = []
    if y is not None:
        y = _wire_array(y, "y")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape ({x.shape[0]},), got {y.shape}")
        header["labels_dtype"] = y.dtype.name
    for key, value in fields.items():
        if key in header:
            raise ValueError(f"header field {key!r} is reserved")
        header[key] = value
    frames.append(json.dumps(header, separators=(",", ":")).encode())
    frames.append(x.data.cast("B") if x.size else b"")
    if y is not None:
        frames.append(y.data.cast("B") if y.size else b"")
    return frames


def encode_packed(x: np.ndarray, y: np.ndarray | None = None, **fields: object) -> bytes:
    """The packed binary form in one buffer: the header, a newline, the payload, then the labels if any.

    >>> raw = encode_packed(np.zeros((2, 3), dtype=np.float32), np.array([1, 0]))
    >>> raw.split(b"\\n", 1)[0], len(raw.split(b"\\n", 1)[1])
    (b'{"v":1,"dtype":"float32","shape":[2,3],"labels_dtype":"int64"}', 40)
    """
    frames = encode(x, y, **fields)
    return b"".join([frames[0], b"\n", *frames[1:]])


def encode_json(x: np.ndarray | list, y: np.ndarray | list | None = None) -> bytes:
    """The single-frame JSON form (one sample when ``x`` is one sample, else several).

    >>> encode_json([[1.0, 2.0]], [3])
    b'{"x":[[1.0,2.0]],"y":[3]}'
    """
    msg: dict[str, object] = {"x": np.asarray(x).tolist()}
    if y is not None:
        msg["y"] = np.asarray(y).tolist()
    return json.dumps(msg, separators=(",", ":"), allow_nan=False).encode()
