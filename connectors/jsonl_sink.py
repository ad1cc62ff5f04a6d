"""The JSON Lines sink: one line per sample, ``{"seq": ..., "score": ..., "y": ..., <extra>}`` (see
:mod:`connectors.records`), appended to a file (``jsonl:scores.jsonl``) or written to standard output
(``jsonl:-``).

Each ``write`` is one ``write`` call of whole lines followed by a flush, so a reader tailing the file
(``tail -f``, or this package's own ``jsonl:`` source with ``follow=True``) never sees half a batch
once it has seen its first line's end; ``fsync=True`` also forces the lines to disk.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import IO

import numpy as np

from connectors.base import Batch, Sink
from connectors.records import check_scores, jsonable, sample_records


def _number(v: object) -> str:
    if type(v) is float:
        return repr(v) if math.isfinite(v) else "null"
    if type(v) is int:
        return repr(v)
    return json.dumps(jsonable(v), allow_nan=False)


def _plain_lines(scores: list[float], y: np.ndarray | None, seq: int) -> list[str]:
    """``{"seq":..,"score":..[,"y":..]}`` lines, exactly as ``json.dumps`` with compact separators
    writes the records of :func:`connectors.records.sample_records`."""
    if y is None:
        return [f'{{"seq":{seq + k},"score":{_number(v)}}}\n' for k, v in enumerate(scores)]
    labels = y.tolist()
    return [
        f'{{"seq":{seq + k},"score":{_number(v)},"y":{_number(label)}}}\n'
        for k, (v, label) in enumerate(zip(scores, labels))
    ]


class JsonlSink(Sink):
    """Appends one JSON record per sample to ``path`` (``"-"``: standard output).

    ``seq`` counts the samples this sink has written, from 0. The parent directory is created.

    Parameters
    ----------
    path : str
        The file the records are appended to (``"-"``: standard output).
    fsync : bool, default False
        Also force the lines to disk after each ``write``.
    append : bool, default True
        Append to an existing file (``False``: truncate it).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = pathlib.Path(d, "out", "scores.jsonl")
    ...     with JsonlSink(str(path)) as sink:
    ...         sink.write(Batch(np.zeros((2, 1), dtype=np.float32)), np.array([0.25, 0.5]))
    ...     print(path.read_text(), end="")
    {"seq":0,"score":0.25}
    {"seq":1,"score":0.5}
    """

    def __init__(self, path: str, *, fsync: bool = False, append: bool = True) -> None:
        self.path = path
        self._fsync = bool(fsync)
        self._seq = 0
        self._closed = False
        self._file: IO[bytes]
        if path == "-":
            self._file = sys.stdout.buffer
            self._owned = False
        else:
            parent = os.path.dirname(os.path.abspath(path))
            os.makedirs(parent, exist_ok=True)
            self._file = open(path, "ab" if append else "wb")  # noqa: SIM115 - closed in close()
            self._owned = True

    def write(self, batch: Batch, scores: np.ndarray, extra: dict | None = None) -> None:
        if self._closed:
            raise ValueError(f"write to closed sink {self.path}")
        if extra:
            records = sample_records(batch, scores, extra, first_seq=self._seq)
            dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
            lines = [dumps(r) + "\n" for r in records]
        else:  # the common case, formatted directly: the same text, several times faster
            lines = _plain_lines(check_scores(batch, scores).tolist(), batch.y, self._seq)
        if not lines:
            return
        data = "".join(lines).encode()
        self._file.write(data)
        self._file.flush()
        if self._fsync and self._owned:
            os.fsync(self._file.fileno())
        self._seq += len(lines)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owned:
            self._file.close()
        else:
            self._file.flush()
