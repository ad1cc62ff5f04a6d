"""The base of the sources that read samples from lines of text (:mod:`connectors.csv_source`,
:mod:`connectors.jsonl_source`).

It reads a path, a directory or a glob (files in name order), can follow a growing file like
``tail -F`` (appends, rotation, truncation), and resumes from a position (path, byte offset, line
number, a checksum of the file's first bytes) re-reading nothing and skipping nothing. Subclasses parse
blocks of lines; a bad line is counted by reason, logged with its file and line number at a bounded
rate, and skipped.

A worker of a data-parallel run (``shard=(rank, world_size)``) reads its share: every
``world_size``-th file of a directory or glob, or of a single file every ``world_size``-th data row
(a header row is read by every worker), lines appended later included. The lines of the other workers
are read past as blank lines, so that line numbers, offsets and positions stay those of the whole file.
"""

from __future__ import annotations

import abc
import logging
import time

import numpy as np

from connectors.batching import BatchingSource
from connectors.counters import Reject
from connectors.lines import MAX_LINE_BYTES, LineCursor
from connectors.paths import FileSeries, check_position_shard, normalise_shard, row_share
from connectors.samples import drop_nonfinite

_log = logging.getLogger(__name__)


def lines_detail(path: str, numbers: list[int], what: str) -> str:
    """How a reject names its lines.

    >>> lines_detail("d.csv", [3, 9], "not 3 fields")
    'd.csv lines 3, 9: not 3 fields'
    """
    shown = ", ".join(map(str, numbers[:5])) + (", ..." if len(numbers) > 5 else "")
    return f"{path} line{'s' if len(numbers) > 1 else ''} {shown}: {what}"


class LineSource(BatchingSource):
    """Base of the line-oriented sources: files, following, positions; subclasses parse lines.

    A subclass implements ``_parse(cursor, lines, first)``: it turns ``lines`` (bytes, without their
    newline, numbered from ``first`` in ``cursor.path``) into samples handed to ``_push(x, y,
    end=cursor.position())`` and counts bad lines with ``_reject``; ``_new_file(cursor)`` resets per-file
    state (a CSV header). :class:`~connectors.csv_source.CsvSource` and
    :class:`~connectors.jsonl_source.JsonlSource` are the built-in subclasses.

    Parameters
    ----------
    path : str
        A file, a directory (every file with ``extension`` in it) or a glob; files are read in name order.
    extension : str
        The files' extension with its dot (``".csv"``), used when ``path`` is a directory.
    batch_size : int, default 32
        Most samples per batch.
    max_latency_ms : float, default 50.0
        How long the oldest waiting sample may wait before a smaller batch is handed out.
    position : dict or None, default None
        A :attr:`~connectors.base.Batch.position` to resume from (``None``: from the first file's start).
    follow : bool, default False
        Follow the files like ``tail -F``: wait for appended lines, rotated and later files; the source is
        then not ``finite``, and ``path`` need not exist yet.
    poll_interval : float, default 0.1
        Seconds between two looks at a followed file that has no new line.
    max_line_bytes : int, default MAX_LINE_BYTES
        Longer lines are skipped without being held in memory, and counted as ``too_large``.
    name : str or None, default None
        The source's name in logs and metrics (``None``: ``path``).
    shard : tuple of int or None, default None
        ``(rank, world_size)``: read only this worker's share (see the module docstring); positions then
        carry ``"shard": [rank, world_size]``, and a ``position`` taken with another shard raises
        ``ValueError``. ``None`` or a world of one: everything, with positions as without a shard.

    Examples
    --------
    A subclass that reads one number per line:

    >>> import tempfile, pathlib
    >>> class Numbers(LineSource):
    ...     def __init__(self, path, **kwargs):
    ...         super().__init__(path, ".txt", **kwargs)
    ...     def _parse(self, cursor, lines, first):
    ...         good = []
    ...         for number, raw in enumerate(lines, first):
    ...             try:
    ...                 good.append(float(raw))
    ...             except ValueError:
    ...                 self._reject(Reject("parse", lines_detail(cursor.path, [number], "not a number")))
    ...         if good:
    ...             self._push(np.array(good, dtype=np.float32)[:, None], end=cursor.position())
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = str(pathlib.Path(d, "n.txt"))
    ...     _ = pathlib.Path(path).write_text("1\\n2\\nx\\n4\\n")
    ...     with Numbers(path, batch_size=8) as src:
    ...         batch = src.read()
    >>> batch.x[:, 0].tolist(), batch.position["line"], src.counters["rejected:parse"], src.finite
    ([1.0, 2.0, 4.0], 4, 1, True)

    Two workers share the file's rows:

    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = str(pathlib.Path(d, "n.txt"))
    ...     _ = pathlib.Path(path).write_text("1\\n2\\n3\\n4\\n5\\n")
    ...     shares = []
    ...     for rank in (0, 1):
    ...         with Numbers(path, batch_size=8, shard=(rank, 2)) as src:
    ...             shares.append([b.x[:, 0].tolist() for b in src])
    ...     last = src.position
    >>> shares, last["line"], last["shard"]
    ([[[1.0, 3.0, 5.0]], [[2.0, 4.0]]], 5, [1, 2])
    """

    def __init__(
        self,
        path: str,
        extension: str,
        *,
        batch_size: int = 32,
        max_latency_ms: float = 50.0,
        position: dict | None = None,
        follow: bool = False,
        poll_interval: float = 0.1,
        max_line_bytes: int = MAX_LINE_BYTES,
        name: str | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(name or path, batch_size=batch_size, max_latency_ms=max_latency_ms, logger=_log)
        self._shard = normalise_shard(shard)
        check_position_shard(position, self._shard, name or path)
        self._shard_tag = None if self._shard is None else list(self._shard)
        self._max_line = int(max_line_bytes)
        self._files = FileSeries(path, extension, shard=self._shard)
        self._split_rows = self._files.splits_rows
        self._first_row: int | None = None  # line number of the current file's first data row, when splitting rows
        self._follow = bool(follow)
        self._poll = float(poll_interval)
        self._resume = position
        self._skip = 0
        self._resume_offset = 0
        self._generation: tuple[int, int] | None = None
        self._opened = 0
        self._cursor: LineCursor | None = None
        self._start_cursor()
        if self._cursor is None and not self._follow and not self._files.list_all():
            # (a worker whose share of a matching glob is empty is simply finished)
            raise FileNotFoundError(f"no file matches {path!r}")

    @property
    def finite(self) -> bool:
        """True unless the source follows its files (``follow=True``), waiting for lines never to come."""
        return not self._follow

    # -- files ---------------------------------------------------------------------------------------
    def _start_cursor(self) -> None:
        position, self._resume = self._resume, None
        path, same = self._files.resume(position.get("path") if position else None)
        if path is None:
            self._resume = position  # nothing there yet (follow mode): try again later
            return
        if not same:
            position = None
        self._skip = int(position.get("skip", 0)) if position else 0
        self._resume_offset = int(position.get("offset", 0)) if position else 0
        self._open_cursor(path, position)

    def _open_cursor(self, path: str, position: dict | None = None) -> None:
        self._cursor = LineCursor(path, follow=self._follow, position=position, max_line_bytes=self._max_line)
        self._opened += 1

    def _next_file(self) -> bool:
        nxt = self._files.after(self._cursor.path)
        if nxt is None:
            return False
        if not self._cursor.at_end:
            # Followed, and a later file has appeared: this one is complete; read it to its end, an
            # unterminated last line included, before moving on.
            self._cursor.follow = False
            return True
        self._cursor.close()
        self._open_cursor(nxt)
        return True

    # -- BatchingSource ------------------------------------------------------------------------------
    def _fill(self, until: float | None) -> None:
        batcher = self._batcher
        progressed = False
        while not batcher.ready:
            if self._cursor is None:
                self._start_cursor()
                if self._cursor is None and not self._follow:
                    self._exhausted = True  # an empty share of the files: nothing is this worker's
                    return
            cursor = self._cursor
            if cursor is not None:
                # Splitting rows, room * world_size lines hold exactly room of this worker's.
                wanted = max(1, batcher.room) * self._shard[1] if self._split_rows else self._lines_wanted(batcher.room)
                lines, first = cursor.read_lines(wanted)
                generation = (self._opened, cursor.generation)
                if generation != self._generation and (lines or cursor.generation):
                    if self._generation is not None:
                        batcher.seal()
                    self._generation = generation
                    self._first_row = None
                    self._new_file(cursor)
                if self._split_rows and lines:
                    lines = self._own_rows(cursor, lines, first)
                if lines:
                    self._parse(cursor, lines, first)  # which may take fewer lines and read the rest again
                if cursor.oversized:
                    numbers, cursor.oversized = cursor.oversized, []
                    detail = lines_detail(cursor.path, numbers, f"longer than {cursor.max_line_bytes} bytes")
                    self._reject(Reject("too_large", detail, len(numbers)))
                if lines:
                    progressed = True
                    if until is not None and time.monotonic() >= until:
                        return  # a long run of bad lines must not hold the caller past its timeout
                    continue
                if (cursor.at_end or self._follow) and not self._files.is_single and self._next_file():
                    continue
                if cursor.at_end:
                    self._exhausted = True
                    return
            if progressed:
                return
            now = time.monotonic()
            if until is not None and now >= until:
                return
            time.sleep(self._poll if until is None else min(self._poll, until - now))
            if until is None:
                return

    def _own_rows(self, cursor: LineCursor, lines: list[bytes], first: int) -> list[bytes]:
        """``lines`` with those of the other workers blanked (the parsers skip blank lines), so that
        numbers, offsets and positions stay those of the whole file."""
        if self._first_row is None:
            # Asked once lines are there, never of a file still empty: whether a CSV file has a header
            # must not depend on when a worker first looked at it.
            self._first_row = self._data_start(cursor)
        head = min(len(lines), max(0, self._first_row - first))  # a header is every worker's
        out = lines[:head] + [b""] * (len(lines) - head)
        own = row_share(first, self._first_row, self._shard) - first  # index of the first line that is ours
        world = self._shard[1]
        out[own::world] = lines[own::world]
        if cursor.oversized:  # another worker's overlong line is that worker's to count
            rank, start = self._shard[0], self._first_row
            cursor.oversized = [n for n in cursor.oversized if n < start or (n - start) % world == rank]
        return out

    def _push(self, x, y=None, *, start: dict | None = None, end: dict | None = None) -> None:
        if self._shard_tag is not None:  # every position says which shard it belongs to
            start = None if start is None else {**start, "shard": self._shard_tag}
            end = None if end is None else {**end, "shard": self._shard_tag}
        super()._push(x, y, start=start, end=end)

    def _reader_position(self) -> dict | None:
        if self._cursor is None:
            position = self._resume
            if self._shard_tag is not None:
                position = {**(position or {}), "shard": self._shard_tag}
            return position
        position = self._cursor.position()
        if self._skip:
            position["skip"] = self._skip
        if self._shard_tag is not None:
            position["shard"] = self._shard_tag
        return position

    def _release(self) -> None:
        if self._cursor is not None:
            self._cursor.close()

    # -- parsing -------------------------------------------------------------------------------------
    def _lines_wanted(self, room: int) -> int:
        """Lines to read for a batch with ``room`` samples still to fill (a subclass may read ahead and hand the
        samples on in batches, each with its own position)."""
        return max(1, room)

    def _new_file(self, cursor: LineCursor) -> None:
        """A new file (or a restarted one) begins: reset per-file state."""

    def _data_start(self, cursor: LineCursor) -> int:
        """The line number of the current file's first data row (after a header), for splitting rows."""
        return 1

    @abc.abstractmethod
    def _parse(self, cursor: LineCursor, lines: list[bytes], first: int) -> None:
        """Push the samples of ``lines`` (numbered from ``first``) and reject the bad ones."""

    def _drop_nonfinite(
        self, x: np.ndarray, y: np.ndarray | None, numbers: list[int], path: str
    ) -> tuple[np.ndarray, np.ndarray | None]:
        x2, y2, dropped = drop_nonfinite(x, y)
        if dropped:
            bad = np.ones(len(x), dtype=bool)
            bad[np.isfinite(x.reshape(len(x), -1)).all(axis=1)] = False
            if y is not None and y.dtype.kind == "f":
                bad |= ~np.isfinite(y)
            lines = [numbers[i] for i in np.flatnonzero(bad)]
            self._reject(Reject("nonfinite", lines_detail(path, lines, "NaN or infinity"), dropped))
        return x2, y2
