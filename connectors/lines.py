"""A resumable cursor over the lines of a file that can follow it like ``tail -F``.

Lines come out complete (without their ``\\n``), numbered from 1 per file, with the byte offset after
the last one. With ``follow=True`` an unterminated last line waits for its newline, and at the end of
the data the cursor notices

* a *rotation* (the path now names another file, e.g. ``mv data.csv data.csv.1`` then a new
  ``data.csv``): it finishes the old file, then continues with the new one from its start;
* a *truncation* (the file shrank below what was read, e.g. ``copytruncate``): it starts again from
  the beginning;
* a *rewrite* in place (truncated and written again, longer, between two looks): the size alone cannot
  tell it from an append, so the cursor keeps the first bytes it read (up to :data:`HEAD_BYTES`) and the
  last few (:data:`TAIL_BYTES`) and, before each read of a followed file, checks that the file still holds
  them; when it does not, it starts again from the beginning of the new content (logged).

A position records the path, the offset, the line number and a checksum of the file's first bytes, so
that a resume continues exactly where it stopped, and starts from the beginning (with a warning) when
the file at that path is no longer the same file.
"""

from __future__ import annotations

import logging
import os
import zlib

_log = logging.getLogger(__name__)

#: How many leading bytes identify a file across a restart.
HEAD_BYTES = 1024
#: How many of the last bytes read a followed file must still hold where they were read (else: rewritten).
TAIL_BYTES = 64
#: Longer lines are skipped (and reported) rather than held in memory.
MAX_LINE_BYTES = 16 << 20


def _pread(fd: int, n: int, offset: int) -> bytes:
    if hasattr(os, "pread"):
        return os.pread(fd, n, offset)
    here = os.lseek(fd, 0, os.SEEK_CUR)  # pragma: no cover - platforms without pread
    try:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, n)
    finally:
        os.lseek(fd, here, os.SEEK_SET)


def file_head(fd: int, n: int) -> int:
    """CRC-32 of the first ``n`` bytes of an open file."""
    return zlib.crc32(_pread(fd, n, 0))


class LineCursor:
    """Lines of one path, from an optional position; see the module docstring for ``follow``.

    Lines come out complete (without their ``\\n``), numbered from 1 per file, with the byte offset after the
    last one. A position records the path, the offset, the line number and a checksum of the file's first
    bytes.

    Parameters
    ----------
    path : str
        The file.
    follow : bool, default False
        Follow the file like ``tail -F`` (rotations and truncations included); ``path`` need not exist yet.
    position : dict or None, default None
        A :meth:`position` to resume from (``None``: the file's start).
    read_size : int, default 65536
        Bytes read from the file at a time.
    max_line_bytes : int, default MAX_LINE_BYTES
        Longer lines are skipped (and reported) rather than held in memory.

    Attributes
    ----------
    line : int
        Lines consumed in the current file.
    at_end : bool
        A finite file was read to its end.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = pathlib.Path(d, "a.txt")
    ...     _ = path.write_bytes(b"one\\ntwo\\nthree")
    ...     with LineCursor(str(path)) as cur:
    ...         print(cur.read_lines(2), cur.position())
    ...         print(cur.read_lines(5), cur.at_end)
    ([b'one', b'two'], 1) {'path': '...a.txt', 'offset': 8, 'line': 2, 'head': [8, ...]}
    ([b'three'], 3) True
    """

    def __init__(
        self,
        path: str,
        *,
        follow: bool = False,
        position: dict | None = None,
        read_size: int = 1 << 16,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self.path = path
        self.follow = follow
        self._read_size = read_size
        self._fd: int | None = None
        self._ino: tuple[int, int] | None = None
        self._data = b""  # bytes read and not yet consumed ...
        self._base = 0  # ... starting at this file offset
        self._start = 0  # index in _data of the first unconsumed byte
        self.line = 0  # lines consumed in the current file
        self.at_end = False  # a finite file was read to its end
        self.generation = 0  # counts the files (or restarts of a truncated one) begun so far
        self._head_bytes = b""  # the file's first bytes read so far (up to HEAD_BYTES) ...
        self._tail_bytes = b""  # ... and the last ones (up to TAIL_BYTES): what a rewrite would change
        self._head_sum = (0, 0)  # (n, CRC-32 of the first n bytes) of the last position()
        self._ends: list[int] = []
        self.block_start = 0
        self._discarding = False  # inside a line longer than max_line_bytes
        self.max_line_bytes = int(max_line_bytes)
        self.oversized: list[int] = []  # numbers of lines dropped for their length; the reader clears it
        self._resume = position
        if not follow or os.path.exists(path):
            self._open()

    @property
    def offset(self) -> int:
        """File offset after the last line returned."""
        return self._base + self._start

    # -- opening and closing -------------------------------------------------------------------------
    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            if not self.follow:
                raise
            return False
        st = os.fstat(fd)
        self._fd, self._ino = fd, (st.st_dev, st.st_ino)
        self._data, self._base, self._start, self.line = b"", 0, 0, 0
        self._head_bytes = self._tail_bytes = b""
        self._head_sum = (0, 0)
        self._discarding = False
        self.generation += 1
        position, self._resume = self._resume, None
        if position and int(position.get("offset", 0)) > 0:
            self._seek(position, st.st_size)
        return True

    def _seek(self, position: dict, size: int) -> None:
        offset = int(position["offset"])
        n, crc = position.get("head") or (0, 0)
        if size < offset or (n and file_head(self._fd, n) != crc):
            _log.warning(
                "%s is not the file the saved position was taken in (shorter, or other leading bytes); "
                "reading it from the start",
                self.path,
            )
            return
        os.lseek(self._fd, offset, os.SEEK_SET)
        self._base, self.line = offset, int(position.get("line", 0))
        self._head_bytes = _pread(self._fd, min(offset, HEAD_BYTES), 0)
        n = min(offset, TAIL_BYTES)
        self._tail_bytes = _pread(self._fd, n, offset - n)

    def _reopen(self) -> None:
        self.close()
        self._open()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> LineCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -------------------------------------------------------------------------------------
    def _fill_buffer(self) -> bool:
        if self.follow and self._rewritten():
            return False  # nothing more of this content: _changed() says what happened
        end = self._base + len(self._data)
        chunk = os.read(self._fd, self._read_size)
        if not chunk:
            return False
        if end < HEAD_BYTES:
            self._head_bytes += chunk[: HEAD_BYTES - end]
        self._tail_bytes = chunk[-TAIL_BYTES:] if len(chunk) >= TAIL_BYTES else (self._tail_bytes + chunk)[-TAIL_BYTES:]
        data, start = self._data, self._start
        self._data = data[start:] + chunk if start < len(data) else chunk
        self._base += start
        self._start = 0
        return True

    def _rewritten(self) -> bool:
        """Whether the open file no longer holds the bytes read from it where they were read."""
        head, tail = self._head_bytes, self._tail_bytes
        if head and _pread(self._fd, len(head), 0) != head:
            return True
        end = self._base + len(self._data)
        return bool(tail) and end > len(head) and _pread(self._fd, len(tail), end - len(tail)) != tail

    def _changed(self) -> str | None:
        """In follow mode at the end of the data: ``"rotated"``, ``"truncated"``, ``"rewritten"`` or ``None``."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None  # moved away and not yet replaced: the writer may still append to the old one
        if (st.st_dev, st.st_ino) != self._ino:
            return "rotated"
        if os.fstat(self._fd).st_size < self._base + len(self._data):
            return "truncated"
        if self._rewritten():
            return "rewritten"
        return None

    def read_lines(self, max_lines: int) -> tuple[list[bytes], int]:
        """Up to ``max_lines`` complete lines of the current file, and the number of the first one.

        Returns an empty list at the end of the data (``at_end`` then tells a finished finite file).
        One call never returns lines of two files: after a rotation the next call starts the new file
        at line 1 (``generation`` tells that it changed). :meth:`line_offsets` gives where each line
        returned ends, ``block_start`` where the first one starts. A line longer than
        ``max_line_bytes`` is never held in memory: it comes out empty and its number is added to
        ``oversized``.
        """
        out: list[bytes] = []
        ends: list[int] = []
        self._ends = ends
        if self._fd is None and not (self.follow and self._open()):
            return out, self.line + 1
        self.block_start = self.offset
        while len(out) < max_lines:
            nl = self._data.find(b"\n", self._start)
            if nl >= 0:
                if self._discarding or nl - self._start > self.max_line_bytes:
                    self._discarding = False
                    self.oversized.append(self.line + len(out) + 1)
                    out.append(b"")
                else:
                    out.append(self._data[self._start : nl])
                self._start = nl + 1
                ends.append(self._base + self._start)
                continue
            if len(self._data) - self._start > self.max_line_bytes:
                self._discarding = True
            if self._discarding:  # drop what is held of a line too long to keep
                self._base += len(self._data)
                self._data, self._start = b"", 0
            if self._fill_buffer():
                continue
            if not self.follow:
                self._take_tail(out, ends)  # the last line of a finished file needs no newline
                self.at_end = True
                break
            if out:
                break
            change = self._changed()
            if change is None:
                break
            if change != "rotated":
                _log.warning(
                    "%s was %s; reading it again from the start",
                    self.path,
                    "truncated" if change == "truncated" else "rewritten (its bytes read so far changed)",
                )
                self._reopen()
                self.block_start = self.offset
                continue
            # Rotated: what the old file still holds comes first, its unterminated tail as a line.
            if self._fill_buffer():
                continue
            if self._take_tail(out, ends):
                break
            _log.info("%s was rotated; reading the new file", self.path)
            self._reopen()
            if self._fd is None:
                break
            self.block_start = self.offset
        first = self.line + 1
        self.line += len(out)
        return out, first

    def _take_tail(self, out: list[bytes], ends: list[int]) -> bool:
        """Take the unterminated rest of a file that will not grow as its last line, if any."""
        if self._start >= len(self._data) and not self._discarding:
            return False
        if self._discarding or len(self._data) - self._start > self.max_line_bytes:
            self._discarding = False
            self.oversized.append(self.line + len(out) + 1)
            out.append(b"")
        else:
            out.append(self._data[self._start :])
        self._start = len(self._data)
        ends.append(self._base + self._start)
        return True

    def line_offsets(self, lines: list[bytes]) -> list[int]:
        """The file offset after each of ``lines``, the result of the last :meth:`read_lines`."""
        assert len(lines) == len(self._ends), "line_offsets takes the lines of the last read_lines"
        return list(self._ends)

    def rewind(self, offset: int, line: int) -> None:
        """Go back to ``offset``, the end of line ``line`` of the current file, as :meth:`line_offsets` gave it:
        the lines after it come out again (a reader that took more lines than it could use at once)."""
        if self._fd is None or offset > self._base + len(self._data):
            raise ValueError(f"rewind to an offset not read: {offset}")
        os.lseek(self._fd, offset, os.SEEK_SET)
        self._data, self._base, self._start, self.line = b"", offset, 0, int(line)
        self._discarding = False
        self.at_end = False
        self.oversized = [n for n in self.oversized if n <= line]  # the lines after come out, and count, again
        # the first bytes are kept as they were read, up to where reading resumes, so that a refill adds no
        # bytes twice; the last ones are those before the offset
        self._head_bytes = self._head_bytes[:offset]
        n = min(offset, TAIL_BYTES)
        self._tail_bytes = _pread(self._fd, n, offset - n)

    def first_line(self) -> bytes | None:
        """The first line of the current file (a CSV header), read without moving the cursor."""
        if self._fd is None:
            return None
        head = b""
        while b"\n" not in head and len(head) <= self.max_line_bytes:
            more = _pread(self._fd, 1 << 16, len(head))
            if not more:
                break
            head += more
        line = head.split(b"\n", 1)[0]
        return b"" if len(line) > self.max_line_bytes else line

    def position(self, offset: int | None = None, line: int | None = None) -> dict:
        """Where the cursor stands (or stood at an ``offset`` and ``line`` of the current file):
        JSON-serialisable, for ``LineCursor(path, position=...)``."""
        if self._fd is None and self._resume:
            return dict(self._resume)
        offset = self.offset if offset is None else offset
        line = self.line if line is None else line
        n = min(offset, len(self._head_bytes))  # every offset given was read: the bytes before it are known
        if n != self._head_sum[0]:
            self._head_sum = (n, zlib.crc32(self._head_bytes[:n]) if n else 0)
        head = list(self._head_sum)
        return {"path": self.path, "offset": offset, "line": line, "head": head}
