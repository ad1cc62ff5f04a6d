"""Decoding wire format v1 (:mod:`connectors.wire`) that arrives as whole pieces, not as ZeroMQ frames: a
Redis stream entry's fields, an MQTT payload (the JSON form or the packed binary form).

:class:`Decoder` holds what decoding a stream needs besides the bytes (the stream's sample shape, the size
limit, whether to scan for NaN): every check is the wire format's own (:func:`connectors.wire.header_from`,
:func:`connectors.samples.json_samples`), and everything turned away raises
:class:`~connectors.counters.Reject` with the samples it stands for.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from connectors.counters import Reject
from connectors.samples import SampleShape, as_features, as_labels, drop_nonfinite, json_samples
from connectors.wire import Header, header_from, load_json, parse_header, short_repr

__all__ = ["DEFAULT_MAX_MESSAGE_BYTES", "JSON_EXPANSION", "Decoded", "Decoder"]

#: The largest message a source takes by default.
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
#: Decoding JSON holds a Python object per number, up to about this many times the message's size: a JSON
#: message is taken up to this fraction of max_message_bytes, so that decoding it stays within that.
JSON_EXPANSION = 8


class Decoded(NamedTuple):
    """Samples decoded from one message: ``x`` (float32, ``[n, ...]``), ``y`` (or ``None``), and how many
    samples were ``dropped`` for a NaN or an infinity (the caller counts them under ``nonfinite``)."""

    x: np.ndarray
    y: np.ndarray | None
    dropped: int


class Decoder:
    """Wire-format-v1 messages given whole, into samples of one stream.

    Parameters
    ----------
    sample_shape : sequence of int or None, default None
        The stream's sample shape (``None``: the first samples taken fix it; see
        :class:`~connectors.samples.SampleShape`).
    max_message_bytes : int, default DEFAULT_MAX_MESSAGE_BYTES
        The largest message taken (a JSON one: this over :data:`JSON_EXPANSION`); larger ones, and headers
        declaring more, are rejected ``too_large``.
    check_finite : bool, default True
        Drop samples holding a NaN or an infinity (``False``: no scan, for producers that cannot send them).

    Examples
    --------
    >>> from connectors.wire import encode, encode_packed
    >>> d = Decoder()
    >>> header, payload = encode(np.arange(4, dtype=np.float32).reshape(2, 2))
    >>> d.binary(header, payload).x.tolist()
    [[0.0, 1.0], [2.0, 3.0]]
    >>> d.packed(b'{"x": [[5, 6]], "y": [1]}').y.tolist()
    [1]
    >>> d.packed(encode_packed(np.array([[7.0, np.nan]], dtype=np.float32))).dropped
    1
    >>> d.json(b'{"x": [1, 2, 3]}')
    Traceback (most recent call last):
        ...
    connectors.counters.Reject: sample shape (3,) differs from the stream's (2,), fixed by its first samples
    """

    def __init__(self, sample_shape: Sequence[int] | None = None, *,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, check_finite: bool = True) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be >= 1")
        self.shape = SampleShape(sample_shape)
        self.max_bytes = int(max_message_bytes)
        self.check_finite = bool(check_finite)
        self._last_raw: bytes | None = None
        self._last_header: Header | None = None

    # -- the three forms ------------------------------------------------------------------------------------
    def binary(self, header: bytes, payload: bytes | memoryview, labels: bytes | memoryview | None = None) -> Decoded:
        """The binary form: the header's bytes, the payload's, and the labels' (``None``: no labels)."""
        if header != self._last_raw:  # a producer sends the same header again and again: parse it once
            self._last_header = parse_header(header, self.max_bytes)
            self._last_raw = bytes(header)
        return self._arrays(self._last_header, memoryview(payload),
                            None if labels is None else memoryview(labels), len(header))

    def json(self, raw: bytes | memoryview) -> Decoded:
        """The JSON form: ``{"x": ...}`` with an optional ``"y"`` (one sample or several)."""
        if len(raw) * JSON_EXPANSION > self.max_bytes:
            raise Reject("too_large", f"JSON of {len(raw)} bytes > max_message_bytes {self.max_bytes} / "
                                      f"{JSON_EXPANSION}")
        return self._from_json(load_json(bytes(raw)))

    def packed(self, raw: bytes | memoryview) -> Decoded:
        """One buffer: the packed binary form (header line, newline, payload, labels) or the JSON form."""
        raw = memoryview(raw)
        newline = bytes(raw[:4096]).find(b"\n")  # a header is short; a JSON document may be long
        if newline > 0:
            try:
                first = json.loads(bytes(raw[:newline]))
            except (ValueError, UnicodeDecodeError, RecursionError):
                first = None  # a JSON document over several lines
            if isinstance(first, dict) and "v" in first and "x" not in first:
                header = header_from(first, self.max_bytes)
                rest = raw[newline + 1:]
                if len(rest) == header.nbytes:
                    return self._arrays(header, rest, None, newline + 1)
                if len(rest) == header.nbytes + header.labels_nbytes:
                    return self._arrays(header, rest[:header.nbytes], rest[header.nbytes:], newline + 1)
                count = header.count if len(rest) >= header.nbytes else 1
                raise Reject("size", f"{len(rest)} bytes after the header, where its shape {list(header.shape)} "
                                     f"needs {header.nbytes} (+{header.labels_nbytes} with labels)", count)
            if first is not None and not bytes(raw[newline + 1:]).strip():
                if newline * JSON_EXPANSION > self.max_bytes:
                    raise Reject("too_large", f"JSON of {newline} bytes > max_message_bytes {self.max_bytes} / "
                                              f"{JSON_EXPANSION}")
                return self._from_json(first)
        return self.json(raw)

    # -- shared -------------------------------------------------------------------------------------------------
    def _from_json(self, obj: object) -> Decoded:
        if isinstance(obj, dict) and "v" in obj:
            if "x" not in obj:
                raise Reject("frames", "a binary header without its payload")
            if obj["v"] != 1:
                raise Reject("version", f"unknown wire format version {short_repr(obj['v'])}")
        x, y = json_samples(obj, self.shape, fix=False)
        return self._finish(x, y)

    def _arrays(self, header: Header, payload: memoryview, labels: memoryview | None, extra: int) -> Decoded:
        # The declared count is believed only when the payload agrees with it.
        count = header.count if len(payload) == header.nbytes else 1
        try:
            size = extra + len(payload) + (0 if labels is None else len(labels))
            if size > self.max_bytes:
                raise Reject("too_large", f"{size} bytes > max_message_bytes {self.max_bytes}")
            self.shape.admit(header.sample_shape)
            x = _array(payload, header.dtype, header.shape, header.nbytes, "payload")
            y = None
            if labels is not None:
                y = as_labels(_array(labels, header.labels_dtype, header.shape[:1], header.labels_nbytes, "labels"))
        except Reject as e:
            e.count = count
            raise
        return self._finish(as_features(x), y)

    def _finish(self, x: np.ndarray, y: np.ndarray | None) -> Decoded:
        dropped = 0
        if self.check_finite:
            x, y, dropped = drop_nonfinite(x, y)
        if x.shape[0]:
            self.shape.fix(x.shape[1:])
        return Decoded(x, y, dropped)


def _array(buffer: memoryview, dtype: np.dtype, shape: tuple[int, ...], nbytes: int, what: str) -> np.ndarray:
    if len(buffer) != nbytes:
        raise Reject("size", f"{what} of {len(buffer)} bytes where the header's shape {list(shape)} needs {nbytes}")
    out = np.frombuffer(buffer, dtype=dtype).reshape(shape)
    # A view of the client's reply buffer: copied when it cannot be written or is misaligned (the learner may
    # scale in place), as the ZeroMQ source does.
    if not out.flags.aligned or not out.flags.writeable:
        out = out.copy()
    return out
