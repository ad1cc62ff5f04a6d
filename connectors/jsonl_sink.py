"""The JSON Lines sink: one line per sample, ``{"seq": ..., "score": ..., "y": ..., <extra>}`` (see
:mod:`connectors.records`), appended to a file (``jsonl:scores.jsonl``) or written to standard output
(``jsonl:-``).

Each ``write`` is one ``write`` call of whole lines, so a reader tailing the file (``tail -f``, or this
package's own ``jsonl:`` source with ``follow=True``) never sees half a batch once it has seen its first
line's end; ``fsync=True`` also forces the lines to disk. A file can be written for weeks: it rotates by
size (``max_bytes``) or time (``rotate_seconds``), keeping ``keep`` old files, and works with logrotate's
``copytruncate`` and ``create``; a failed write (a full disk) raises and is retried by the next one (see
:mod:`connectors.rotating`).

``seq`` numbers the records of the file across restarts: a sink appending to a file goes on from the last
record's ``seq`` (in ``name.1`` when the file was just rotated). The service also adds ``sample``, the
sample's number in the life of its state directory; after a ``kill -9`` the batches learned since the last
checkpoint are learned and written again, under new ``seq`` numbers and their old ``sample`` numbers.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import sys

import numpy as np

from connectors.base import Batch, Sink
from connectors.records import RESERVED, check_scores, is_per_sample, jsonable, sample_records
from connectors.rotating import RotatingFile, tail_line


def _column(column: np.ndarray) -> tuple[str, list] | None:
    """A 1-D numeric or boolean array as a ``%`` conversion and its values, which format each element exactly as
    ``json.dumps`` writes :func:`connectors.records.jsonable` of it; ``None`` for any other array."""
    if type(column) is not np.ndarray or column.ndim != 1:  # (a masked array's masked values are not numbers)
        return None
    kind = column.dtype.kind
    if kind in "iu":
        return "%d", column.tolist()
    if kind == "b":
        return "%s", ["true" if v else "false" for v in column.tolist()]
    if kind == "f":
        values = column.tolist()
        if np.isfinite(column).all():
            return "%r", values
        return "%s", [repr(v) if math.isfinite(v) else "null" for v in values]
    return None


@functools.lru_cache(maxsize=64)
def _form(keys: tuple[str, ...], specs: tuple[str, ...], n: int) -> str:
    """The ``%`` format of ``n`` records with these keys, each value converted by its spec."""
    line = "{" + ",".join(json.dumps(key).replace("%", "%%") + ":" + spec for key, spec in zip(keys, specs)) + "}\n"
    return line * n


def _direct_lines(seq: int, scores: np.ndarray, batch: Batch, extra: dict | None) -> str | None:
    """The records of :func:`connectors.records.sample_records`, formatted directly, all in one ``%``: the same
    text as ``json.dumps`` with compact separators, several times faster. ``None`` when a per-sample value is not
    a 1-D array of numbers (the records are then built and encoded one by one)."""
    n = len(scores)
    per_sample, per_batch = [], {}
    for key, value in (extra or {}).items():
        if is_per_sample(value, n):
            per_sample.append((str(key), value))
        else:
            per_batch[str(key)] = value
    if RESERVED.intersection(extra or {}) or not n or len({str(key) for key in extra or {}}) != len(extra or {}):
        return None  # sample_records raises the error, nothing to write, or two keys are one name
    if batch.y is not None:
        per_sample.insert(0, ("y", batch.y))
    columns = [("%d", range(seq, seq + n)), _column(scores)]
    for _, value in per_sample:
        columns.append(_column(value))
        if columns[-1] is None:
            return None
    form = _form(("seq", "score", *(key for key, _ in per_sample)), tuple(spec for spec, _ in columns), n)
    text = form % tuple(itertools.chain.from_iterable(zip(*(values for _, values in columns))))
    if per_batch:  # the batch's values end its last record
        tail = json.dumps(jsonable(per_batch), separators=(",", ":"), allow_nan=False)
        text = f"{text[:-2]},{tail[1:]}\n"
    return text


def last_record(path: str) -> dict | None:
    """The last record of a JSON Lines file (or of its ``.1``), ``None`` when there is none or it is not JSON.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = pathlib.Path(d, "s.jsonl").write_text('{"seq":6,"score":1.0}\\n{"seq":7,"score":0.5}\\n')
    ...     last_record(f"{d}/s.jsonl"), last_record(f"{d}/none.jsonl")
    ({'seq': 7, 'score': 0.5}, None)
    """
    line = tail_line(path)
    try:
        record = json.loads(line) if line else None
    except (ValueError, TypeError):
        return None
    return record if isinstance(record, dict) else None


def _after(record: dict | None, key: str) -> int | None:
    """The number after ``record[key]``, where that is a natural number."""
    value = None if record is None else record.get(key)
    return value + 1 if type(value) is int and value >= 0 else None


class JsonlSink(Sink):
    """Appends one JSON record per sample to ``path`` (``"-"``: standard output).

    ``seq`` numbers the records of the file, going on from its last one when appending (see the module
    doc); to standard output, or with ``append=False``, it starts at 0. The parent directory is created.

    Parameters
    ----------
    path : str
        The file the records are appended to (``"-"``: standard output).
    fsync : bool, default False
        Also force the lines to disk after each ``write``.
    append : bool, default True
        Append to an existing file (``False``: truncate it).
    max_bytes : int or None, default None
        Rotate the file before it would grow past this many bytes.
    rotate_seconds : float or None, default None
        Rotate the file when a new period of this many seconds begins (``86400``: at midnight UTC).
    keep : int, default 5
        Rotated files kept: ``path.1`` (the newest) to ``path.<keep>``.
    max_pending : int, default 1 MiB
        After a failed write, the most bytes kept for the next write to retry (the oldest lines beyond it
        are dropped and counted in :attr:`dropped`).

    Attributes
    ----------
    dropped : int
        Records given up after failed writes (0 for standard output, whose failures drop nothing silently:
        they raise).
    rotations : int
        Rotations of the file done by this sink.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = pathlib.Path(d, "out", "scores.jsonl")
    ...     with JsonlSink(str(path)) as sink:
    ...         sink.write(Batch(np.zeros((2, 1), dtype=np.float32)), np.array([0.25, 0.5]))
    ...     with JsonlSink(str(path)) as sink:  # a restart: seq goes on
    ...         sink.write(Batch(np.zeros((1, 1), dtype=np.float32)), np.array([0.75]))
    ...     print(path.read_text(), end="")
    {"seq":0,"score":0.25}
    {"seq":1,"score":0.5}
    {"seq":2,"score":0.75}
    """

    def __init__(self, path: str, *, fsync: bool = False, append: bool = True, max_bytes: int | None = None,
                 rotate_seconds: float | None = None, keep: int = 5, max_pending: int = 1 << 20) -> None:
        self.path = path
        self._closed = False
        self._file: RotatingFile | None = None
        if path == "-":
            if max_bytes is not None or rotate_seconds is not None:
                raise ValueError("standard output cannot be rotated; give the sink a file")
            self._seq = 0
            self.next_sample: int | None = None
        else:
            last = last_record(path) if append else None
            self._seq = _after(last, "seq") or 0
            #: The ``sample`` after the last record appended to (``None``: the file holds none), so that a service
            #: starting a new state directory numbers its samples on from there.
            self.next_sample = _after(last, "sample")
            self._file = RotatingFile(path, max_bytes=max_bytes, rotate_seconds=rotate_seconds, keep=keep,
                                      fsync=fsync, truncate=not append, max_pending=max_pending)

    @property
    def dropped(self) -> int:
        return 0 if self._file is None else self._file.dropped

    @property
    def rotations(self) -> int:
        return 0 if self._file is None else self._file.rotations

    def _text(self, batch: Batch, scores: np.ndarray, extra: dict | None) -> tuple[str, int]:
        """The lines of a batch's records, and how many."""
        text = _direct_lines(self._seq, check_scores(batch, scores), batch, extra)
        if text is not None:
            return text, len(batch)
        records = sample_records(batch, scores, extra, first_seq=self._seq)
        dumps = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
        return "".join(dumps(r) + "\n" for r in records), len(records)

    def write(self, batch: Batch, scores: np.ndarray, extra: dict | None = None) -> None:
        if self._closed:
            raise ValueError(f"write to closed sink {self.path}")
        text, lines = self._text(batch, scores, extra)
        if not lines:
            return
        data = text.encode()
        # seq moves on before the write: lines kept after a failure are written later under these numbers
        self._seq += lines
        if self._file is None:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        else:
            self._file.write(data)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._file is None:
            sys.stdout.buffer.flush()
        else:
            self._file.close()
