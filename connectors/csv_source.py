"""The CSV source: numeric feature columns and an optional label column, under a header row or none.

Numeric blocks are parsed at once by numpy's C parser; a block with a bad row falls back to a row by
row parse that names the line and the column at fault.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass

import numpy as np

from connectors.counters import Reject
from connectors.lines import LineCursor
from connectors.samples import SampleShape
from connectors.text import LineSource, lines_detail

#: ``label`` and ``header`` default of :class:`CsvSource`: the column named "label" if the header has one;
#: a header row unless the first row is all numbers.
AUTO = "auto"
_AUTO_LABEL = "label"

#: Rows of a file read to its end that the numeric fast path parses in one call of numpy's parser, whose fixed
#: cost per call is that of parsing some 30 rows: they are handed on in batches, each with its exact position.
BLOCK_ROWS = 512

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Layout:
    ncols: int
    usecols: list[int]  # features, then the label
    names: list[str]
    labelled: bool


class CsvSource(LineSource):
    """Samples from CSV files: numeric feature columns and an optional label column.

    What a file must look like: UTF-8 text, one sample per row, fields separated by ``delimiter`` (quoted
    with ``"`` if need be); every feature column a number, the label an integer class (or a number with
    ``label_dtype="float32"``). The first row names the columns; when it is all numbers (and ``header`` is
    ``"auto"``) the file has no header: that row is data, the columns are named by their position
    (``"0"``, ``"1"``, ...) and an info log line says so. Each file of a directory or glob is judged by its
    own first row, and all must give the same number of features. Columns that are not features (a
    timestamp, an id) must be left out with ``columns``: a row with the wrong number of fields
    (``columns``), a field that is not a number (``parse``), a bad label (``label``) or a NaN/infinity
    (``nonfinite``) is skipped and counted under that reason. Blank lines are ignored.

    Parameters
    ----------
    path : str
        A ``.csv`` file, a directory of them or a glob; files are read in name order.
    label : str or None, default "auto"
        The label column's name, ``None`` for none, or ``"auto"`` (a column named "label" if there is one).
    columns : list of str or None, default None
        The feature columns (``None``: every other column).
    header : bool or "auto", default "auto"
        Whether the first row names the columns; ``"auto"``: unless it is all numbers.
    delimiter : str, default ","
        The field delimiter, one character.
    label_dtype : {"int64", "float32"}, default "int64"
        ``"int64"`` (class labels) or ``"float32"``.
    **kwargs
        :class:`~connectors.text.LineSource`'s keyword arguments: ``batch_size``, ``max_latency_ms``,
        ``position``, ``follow``, ``poll_interval``, ``max_line_bytes``, ``name``, ``shard`` (data row
        ``i``, counted after the header, is worker ``i % world_size``'s).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = pathlib.Path(d, "data.csv")
    ...     _ = path.write_text("a,b,label\\n1,2,0\\n3,oops,1\\n5,6,1\\n")
    ...     with CsvSource(str(path), batch_size=8) as src:
    ...         batch = src.read()
    >>> batch.x.tolist(), batch.y.tolist(), src.counters["rejected:parse"], src.failed_columns
    ([[1.0, 2.0], [5.0, 6.0]], [0, 1], 1, {'b': 1})

    A file with no header: every row is a sample, the columns are "0", "1", ...

    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = pathlib.Path(d, "bare.csv")
    ...     _ = path.write_text("1,2,0\\n3,4,1\\n")
    ...     with CsvSource(str(path), label="2", batch_size=8) as src:
    ...         batch = src.read()
    >>> batch.x.tolist(), batch.y.tolist()
    ([[1.0, 2.0], [3.0, 4.0]], [0, 1])
    """

    def __init__(
        self,
        path: str,
        *,
        label: str | None = AUTO,
        columns: list[str] | None = None,
        delimiter: str = ",",
        label_dtype: str = "int64",
        header: bool | str = AUTO,
        **kwargs,
    ) -> None:
        if len(delimiter) != 1:
            raise ValueError("delimiter must be one character")
        if header not in (True, False, AUTO):
            raise ValueError(f"header must be true, false or 'auto', got {header!r}")
        if label_dtype not in ("int64", "float32"):
            raise ValueError(f"label_dtype must be 'int64' or 'float32', got {label_dtype!r}")
        self._label = label
        self._columns = None if columns is None else list(columns)
        self._delimiter = delimiter
        self._delim_b = delimiter.encode()
        self._label_dtype = label_dtype
        self._header = header
        self._told_headerless: set[str] = set()
        self._failed_columns: dict[str, int] = {}
        self._layout: _Layout | Reject | None = None
        self._careful_until = 0  # up to this line a block with a bad row was seen: read a batch's worth at a time
        self._shape = SampleShape()
        super().__init__(path, ".csv", **kwargs)
        header = self._cursor.first_line() if self._cursor is not None else None
        if header:  # fail fast on a configuration that cannot fit the first file
            layout = self._layout_from(header, self._cursor.path)
            if isinstance(layout, Reject):
                self.close()
                raise ValueError(f"{self._cursor.path}: {layout.detail}")
            self._shape = SampleShape()

    @property
    def failed_columns(self) -> dict[str, int]:
        """The feature columns that held something other than a number, with the rows where they did."""
        return dict(self._failed_columns)

    @property
    def feature_columns(self) -> list[str] | None:
        """The feature columns of the file being read (``None``: not known yet, or the file does not fit)."""
        return list(self._layout.names) if isinstance(self._layout, _Layout) else None

    def _new_file(self, cursor: LineCursor) -> None:
        self._layout = None
        self._careful_until = 0

    def _lines_wanted(self, room: int) -> int:
        # Blocks only where nothing else is waiting (each batch then ends on a line of its own) and the file's
        # layout is known; a followed file is read as it comes (and split rows never ask: LineSource._fill).
        cursor = self._cursor
        if (self._follow or room < self._batcher.batch_size or not isinstance(self._layout, _Layout)
                or cursor is None or cursor.line < self._careful_until):
            return max(1, room)
        return max(room, BLOCK_ROWS)

    def _parse_block(self, cursor: LineCursor, lines: list[bytes], first: int) -> bool:
        """Push a block of rows that all take the fast path, cut into batches that each end on their own line
        (so that a batch's position is exact); ``False``, and nothing pushed, when a row needs more care."""
        layout = self._layout
        commas = layout.ncols - 1
        delim = self._delim_b
        for raw in lines:
            if raw.count(delim) != commas or not raw.strip():
                return False
        parsed = self._parse_fast(lines, [], layout)
        if parsed is None:
            return False
        x, y, _ = parsed
        if not (np.isfinite(x).all() and (y is None or y.dtype.kind != "f" or np.isfinite(y).all())):
            return False
        ends = cursor.line_offsets(lines)
        size = self._batcher.batch_size
        for start in range(0, len(x), size):
            stop = min(start + size, len(x))
            self._push(x[start:stop], None if y is None else y[start:stop],
                       end=cursor.position(ends[stop - 1], first + stop - 1))
        return True

    def _data_start(self, cursor: LineCursor) -> int:
        first = cursor.first_line()
        return 1 if first is not None and self._headerless(first) else 2

    def _fields(self, row: bytes) -> list[str] | None:
        try:
            text = row.decode("utf-8-sig").rstrip("\r")
        except UnicodeDecodeError:
            return None
        return [n.strip() for n in next(csv.reader([text], delimiter=self._delimiter), [])]

    def _headerless(self, first_row: bytes) -> bool:
        """Whether the first row is data: ``header=False``, or ``"auto"`` and every field a number."""
        if self._header != AUTO:
            return not self._header
        fields = self._fields(first_row)
        if not fields or fields == [""]:
            return False
        try:
            for field in fields:
                float(field)
        except ValueError:
            return False
        return True

    def _layout_from(self, header: bytes, path: str) -> _Layout | Reject:
        names = self._fields(header)
        if names is None:
            return Reject("encoding", "the header row is not UTF-8")
        if not names or names == [""]:
            return Reject("columns", "empty header row")
        if self._headerless(header):
            names = [str(i) for i in range(len(names))]
            if self._header == AUTO and path not in self._told_headerless:
                self._told_headerless.add(path)
                _log.info("%s: no header row (the first row is all numbers), so it is data and the columns are "
                          "numbered 0 to %d (header = true reads the first row as names)", path, len(names) - 1)
        label = self._label
        if label == AUTO:
            label = _AUTO_LABEL if _AUTO_LABEL in names else None
        if label is not None and label not in names:
            return Reject("columns", f"no label column {label!r} in the header {names}")
        wanted = self._columns if self._columns is not None else [n for n in names if n != label]
        missing = [c for c in wanted if c not in names]
        if missing or not wanted:
            return Reject("columns", f"feature columns {missing or wanted} not in the header {names}")
        usecols = [names.index(c) for c in wanted]
        if label is not None:
            usecols.append(names.index(label))
        try:
            self._shape.check((len(wanted),))
        except Reject as e:
            return e
        return _Layout(len(names), usecols, wanted, label is not None)

    def _parse(self, cursor: LineCursor, lines: list[bytes], first: int) -> None:
        room = self._batcher.room
        if len(lines) > room and not self._split_rows:  # a block (_lines_wanted)
            known = isinstance(self._layout, _Layout)  # (not at the start of another file of a glob)
            if known and self._parse_block(cursor, lines, first):
                return
            # A row that needs care: a batch's worth now, the rest read again, and no blocks until past it, so
            # that every reject is counted once and before the batch after it (a checkpoint then says both).
            if known:
                self._careful_until = first + len(lines) - 1
            cursor.rewind(cursor.line_offsets(lines)[room - 1], first + room - 1)
            lines = lines[:room]
        if self._layout is None:
            if first == 1:
                # Splitting rows, line 1 may be another worker's row, blanked: the file says what it was.
                head = (cursor.first_line() or b"") if self._split_rows else lines[0]
                self._layout = self._layout_from(head, cursor.path)
                if not self._headerless(head):
                    lines, first = lines[1:], 2
            else:
                self._layout = self._layout_from(cursor.first_line() or b"", cursor.path)
        layout = self._layout
        path = cursor.path
        if isinstance(layout, Reject):
            numbers = [first + i for i, raw in enumerate(lines) if raw.strip()]
            if numbers:
                self._reject(Reject(layout.reason, lines_detail(path, numbers, layout.detail), len(numbers)))
            return
        delim, quote = self._delim_b, b'"'
        good: list[bytes] = []
        numbers: list[int] = []
        wrong: list[int] = []
        for i, raw in enumerate(lines):
            if not raw.strip():
                continue
            if raw.count(delim) != layout.ncols - 1 and quote not in raw:
                wrong.append(first + i)
                continue
            good.append(raw)
            numbers.append(first + i)
        if wrong:
            self._reject(Reject("columns", lines_detail(path, wrong, f"not {layout.ncols} fields"), len(wrong)))
        if not good:
            return
        parsed = self._parse_fast(good, numbers, layout)
        if parsed is None:
            parsed = self._parse_slow(good, numbers, layout, path)
        x, y, numbers = parsed
        if len(x):
            x, y = self._drop_nonfinite(x, y, numbers, path)
        if len(x):
            self._push(x, y, end=cursor.position())

    def _parse_fast(self, lines: list[bytes], numbers: list[int], layout: _Layout):
        """All lines at once with numpy's C parser; ``None`` when any line needs the slow path."""
        try:
            text = [raw.decode() for raw in lines]
            m = np.loadtxt(
                text,
                delimiter=self._delimiter,
                dtype=np.float64 if layout.labelled else np.float32,
                comments=None,
                quotechar='"',
                usecols=layout.usecols,
                ndmin=2,
            )
        except (ValueError, UnicodeDecodeError, IndexError):
            return None
        if m.shape[0] != len(lines):
            return None
        nfeat = len(layout.names)
        x = np.ascontiguousarray(m[:, :nfeat], dtype=np.float32)
        if not layout.labelled:
            return x, None, numbers
        raw = m[:, nfeat]
        if self._label_dtype == "float32":
            return x, raw.astype(np.float32), numbers
        if not (np.isfinite(raw) & (raw == np.round(raw)) & (np.abs(raw) < 2.0**63)).all():
            return None
        return x, raw.astype(np.int64), numbers

    def _parse_slow(self, lines: list[bytes], numbers: list[int], layout: _Layout, path: str):
        rows: list[list[float]] = []
        labels: list[float | int] = []
        kept: list[int] = []
        nfeat = len(layout.names)
        for raw, number in zip(lines, numbers):
            try:
                fields = next(csv.reader([raw.decode().rstrip("\r")], delimiter=self._delimiter))
            except UnicodeDecodeError:
                self._reject(Reject("encoding", lines_detail(path, [number], "not UTF-8")))
                continue
            except csv.Error as e:
                self._reject(Reject("parse", lines_detail(path, [number], str(e))))
                continue
            if len(fields) != layout.ncols:
                self._reject(Reject("columns", lines_detail(path, [number], f"{len(fields)} fields")))
                continue
            values, failed = [], []
            for name, col in zip(layout.names, layout.usecols[:nfeat]):
                try:
                    values.append(float(fields[col]))
                except ValueError:
                    failed.append(f"column {name!r}: {fields[col][:40]!r}")
                    self._failed_columns[name] = self._failed_columns.get(name, 0) + 1
            if failed:
                detail = "; ".join(failed) + (" is not a number" if len(failed) == 1 else " are not numbers")
                self._reject(Reject("parse", lines_detail(path, [number], detail)))
            else:
                if layout.labelled:
                    label = self._label_value(fields[layout.usecols[-1]])
                    if label is None:
                        detail = f"label {fields[layout.usecols[-1]][:40]!r} is not a {self._label_dtype}"
                        self._reject(Reject("label", lines_detail(path, [number], detail)))
                        continue
                    labels.append(label)
                rows.append(values)
                kept.append(number)
        x = np.array(rows, dtype=np.float32).reshape(len(rows), nfeat)
        y = None
        if layout.labelled:
            y = np.array(labels, dtype=np.int64 if self._label_dtype == "int64" else np.float32)
        return x, y, kept

    def _label_value(self, text: str) -> float | int | None:
        try:
            if self._label_dtype == "float32":
                return float(text)
            value = float(text)
        except ValueError:
            return None
        if value != value or value in (float("inf"), float("-inf")) or value != round(value):
            return None
        if abs(value) >= 2.0**63:
            return None
        return int(value)
