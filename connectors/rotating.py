"""An append-only file of lines that can be written for weeks: rotation by size and by time, room for
logrotate, and writes that fail loudly but lose nothing they can keep.

*Rotation*: before a write that would take the file past ``max_bytes``, or the first write in a new period
of ``rotate_seconds`` (periods are aligned on the epoch, so ``86400`` rotates at midnight UTC; a file last
written in an earlier period, by an earlier process, is rotated too), the file becomes ``name.1``, ``name.1``
becomes ``name.2`` and so on; ``name.<keep>`` is the oldest kept. Rotation happens between whole lines.

*logrotate*: the file is opened with ``O_APPEND``, so every write lands at the file's end as it is *now*:
after ``copytruncate`` the next line goes to offset 0 (no hole of zero bytes where the old content was),
and the size that rotation goes by is read from the file each time. When the path names another file or
none (logrotate's default ``create`` moved it away), the next write, at most ``check_every`` seconds later,
opens the path anew.

*Failures* (a full disk): :meth:`RotatingFile.write` raises the ``OSError``, so the caller can count it,
and keeps the bytes not written to write first the next time; beyond ``max_pending`` bytes the oldest
whole lines are dropped (counted in ``dropped``). A line cut by the failure is completed by the retry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def tail_line(path: str, chunk: int = 1 << 16) -> bytes | None:
    """The last complete line of ``path`` (without its newline), or of ``path.1`` when ``path`` has none:
    where a file that is appended to left off.

    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = pathlib.Path(d, "a.log").write_bytes(b"one\\ntwo\\nthr")
    ...     tail_line(f"{d}/a.log"), tail_line(f"{d}/missing.log")
    (b'two', None)
    """
    for candidate in (path, f"{path}.1"):
        if not os.path.isfile(candidate):  # a pipe or a device (/dev/stdout) has no last line to read
            continue
        try:
            with open(candidate, "rb") as f:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(0, end - chunk))
                text = f.read(chunk)
        except OSError:
            continue
        lines = text.split(b"\n")[:-1]  # the part after the last newline is not a complete line
        if lines and (len(lines) > 1 or end <= chunk):  # the first piece may be cut short by the seek
            return lines[-1]
    return None


class RotatingFile:
    """Lines appended to ``path`` with ``O_APPEND``, rotated by size and/or time (see the module doc).

    Parameters
    ----------
    path : str
        The file (its directory is created).
    max_bytes : int or None, default None
        Rotate before a write would take the file past this size (a single larger write still goes in
        whole, to a fresh file).
    rotate_seconds : float or None, default None
        Rotate at the first write in a new period of this many seconds, aligned on the epoch.
    keep : int, default 5
        Rotated files kept, ``path.1`` (the newest) to ``path.<keep>``; ``0`` deletes the file at rotation.
    fsync : bool, default False
        Force each write to disk.
    truncate : bool, default False
        Empty an existing file on opening it (otherwise its lines are kept and appended to).
    max_pending : int, default 1 MiB
        The most bytes kept after a failed write for the next write to retry.
    check_every : float, default 1.0
        The longest time between two checks that ``path`` still names the open file (seconds).
    clock : callable, default time.time
        The wall clock that time rotation reads.

    Attributes
    ----------
    rotations : int
        Rotations done by this object.
    dropped : int
        Lines given up after failed writes, when more than ``max_pending`` bytes waited.
    pending : int
        Bytes that wait for the next write after a failure.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with RotatingFile(f"{d}/out.log", max_bytes=8, keep=2) as f:
    ...         for line in (b"one\\n", b"two\\n", b"three\\n", b"four\\n"):
    ...             f.write(line)
    ...     sorted((p.name, p.read_bytes()) for p in pathlib.Path(d).iterdir()), f.rotations
    ([('out.log', b'four\\n'), ('out.log.1', b'three\\n'), ('out.log.2', b'one\\ntwo\\n')], 2)
    """

    def __init__(self, path: str, *, max_bytes: int | None = None, rotate_seconds: float | None = None,
                 keep: int = 5, fsync: bool = False, truncate: bool = False, max_pending: int = 1 << 20,
                 check_every: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if rotate_seconds is not None and rotate_seconds <= 0:
            raise ValueError(f"rotate_seconds must be > 0, got {rotate_seconds}")
        if keep < 0:
            raise ValueError(f"keep must be >= 0, got {keep}")
        self.path = path
        self.max_bytes = max_bytes
        self.rotate_seconds = rotate_seconds
        self.keep = int(keep)
        self.fsync = bool(fsync)
        self.max_pending = int(max_pending)
        self.check_every = float(check_every)
        self.rotations = 0
        self.dropped = 0
        self._clock = clock
        self._pending = bytearray()
        self._partial = False  # the file ends inside a line that the pending bytes complete
        self._checked = time.monotonic()
        self._fd: int | None = None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._open(truncate)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _open(self, truncate: bool = False) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(self.path, flags | (os.O_TRUNC if truncate else 0), 0o644)
        old, self._fd = self._fd, fd
        if old is not None:
            os.close(old)
        st = os.fstat(fd)
        self._period = self._period_of(st.st_mtime if st.st_size else self._clock())
        if st.st_size and not self._pending:
            with open(self.path, "rb") as f:
                f.seek(st.st_size - 1)
                if f.read(1) != b"\n":  # a line cut by a crash: end it, so that the next line stands alone
                    self._pending += b"\n"
                    self._partial = True

    def _period_of(self, t: float) -> int | None:
        return None if self.rotate_seconds is None else int(t // self.rotate_seconds)

    def _moved(self) -> bool:
        now = time.monotonic()
        if now - self._checked < self.check_every:
            return False
        self._checked = now
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        mine = os.fstat(self._fd)
        return (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino)

    def _rotation_due(self, size: int) -> bool:
        if size == 0 or self._partial:
            return False
        if self.max_bytes is not None and size + len(self._pending) > self.max_bytes:
            return True
        return self.rotate_seconds is not None and self._period_of(self._clock()) != self._period

    def rotate(self) -> None:
        """Move the file to ``path.1`` (shifting the older ones) and start a new one."""
        try:
            if self.keep == 0:
                os.unlink(self.path)
            else:
                for k in range(self.keep - 1, 0, -1):
                    if os.path.exists(f"{self.path}.{k}"):
                        os.replace(f"{self.path}.{k}", f"{self.path}.{k + 1}")
                os.replace(self.path, f"{self.path}.1")
        except FileNotFoundError:  # someone else moved it away already: start the new file all the same
            pass
        self._open()
        self.rotations += 1

    def write(self, data: bytes) -> None:
        """Append ``data`` (whole lines) after anything a failed write left; raises ``OSError`` on failure."""
        if self._fd is None:
            raise ValueError(f"write to closed file {self.path}")
        self._pending += data
        try:
            if not self._partial and self._moved():
                self._open()
            rotating = self.max_bytes is not None or self.rotate_seconds is not None
            if rotating and self._rotation_due(os.fstat(self._fd).st_size):
                self.rotate()
            self._drain()
        except OSError:
            self._trim()
            raise

    def _drain(self) -> None:
        done = 0
        view = memoryview(self._pending)
        try:
            while done < len(view):
                done += os.write(self._fd, view[done:])
        finally:
            if done:
                self._partial = view[done - 1] != ord("\n")
            view.release()
            del self._pending[:done]
        if self.fsync:
            os.fsync(self._fd)

    def _trim(self) -> None:
        """Drop the oldest whole lines beyond ``max_pending`` bytes (never the rest of a line already cut)."""
        excess = len(self._pending) - self.max_pending
        if excess <= 0:
            return
        head = self._pending.find(b"\n") + 1 if self._partial else 0
        if head == 0 and self._partial:
            return
        cut = self._pending.find(b"\n", head + excess - 1) + 1
        if cut == 0:
            cut = len(self._pending)
        self.dropped += self._pending.count(b"\n", head, cut)
        del self._pending[head:cut]

    def close(self) -> None:
        """Try once more to write what waits, then close (idempotent; raises if that last write failed)."""
        if self._fd is None:
            return
        try:
            if self._pending:
                self._drain()
        except OSError:
            self.dropped += self._pending.count(b"\n")
            self._pending.clear()
            raise
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)

    def __enter__(self) -> RotatingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
