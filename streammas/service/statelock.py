"""One writer per state directory: the lock file, held with ``flock``, and noticing when it is lost.

``flock`` locks a file (an inode), not a name. If the state directory is deleted while a process holds its
lock, that process keeps a lock on a file nobody can open any more, and a second process could create the
directory again, lock the new file and write beside the first. So the holder remembers which file it
locked, and :meth:`DirLock.intact` (one ``stat``) tells whether the path still names it; when it does not,
:meth:`DirLock.reacquire` creates the directory again and takes the new file's lock, or raises
:class:`StateDirLocked` when another process got there first: then the holder must stop writing.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "lock"
#: Attempts at locking a lock file that is being replaced under us before giving up.
_ATTEMPTS = 5


class StateDirLocked(Exception):
    """Another process holds the state directory.

    Raised by :meth:`DirLock.acquire` (and :meth:`~streammas.service.checkpoint.CheckpointStore.lock`) when the
    directory's lock file is held, by another process or by another lock on the same directory; the message
    names the holder's pid.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     first = DirLock(d)
    ...     first.acquire()
    ...     try:
    ...         DirLock(d).acquire()
    ...     except StateDirLocked as e:
    ...         print("locked:", e)
    ...     finally:
    ...         first.release()
    locked: state directory ... is in use by pid ...
    """


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class DirLock:
    """The lock file of a directory: taken, checked that it is still the directory's, taken again.

    Parameters
    ----------
    directory : str or os.PathLike
        The directory; its lock file is ``directory/lock``. It must exist when :meth:`acquire` is called
        (:meth:`reacquire` creates it).

    Attributes
    ----------
    held : bool
        This object holds a lock (maybe on a file that is no longer the directory's: see :meth:`intact`).
    wanted : bool
        :meth:`acquire` succeeded once and :meth:`release` was not called since: the directory is meant to
        be this process's, even while :meth:`reacquire` fails.

    Examples
    --------
    >>> import tempfile, shutil, pathlib
    >>> with tempfile.TemporaryDirectory() as parent:
    ...     d = pathlib.Path(parent, "state")
    ...     d.mkdir()
    ...     lock = DirLock(d)
    ...     lock.acquire()
    ...     before = lock.intact()
    ...     shutil.rmtree(d)  # the directory goes, the lock on the deleted file stays
    ...     after = lock.intact()
    ...     lock.reacquire()  # creates the directory again and locks its new lock file
    ...     print(before, after, lock.intact(), (d / "lock").read_text().split()[0])
    ...     lock.release()
    True False True pid
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.wanted = False
        self._file: Any = None
        self._identity: tuple[int, int] | None = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> None:
        """Take the lock (raises :class:`StateDirLocked` if another process or lock holds it)."""
        if fcntl is None or self._file is not None:  # pragma: no cover - nothing to lock with, or held
            self.wanted = True
            return
        for _ in range(_ATTEMPTS):
            f = open(self.path, "a+")  # noqa: SIM115 - held until release()
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                f.close()
                raise StateDirLocked(f"state directory {self.directory} is in use by {holder}") from None
            # Between open and flock the file may have been deleted or replaced (a holder that found its
            # own lock lost, say): a lock on it would guard nothing; take the file the path names now.
            mine = _identity(os.fstat(f.fileno()))
            try:
                current = _identity(os.stat(self.path))
            except FileNotFoundError:
                current = None
            if current == mine:
                break
            f.close()
        else:
            raise StateDirLocked(f"state directory {self.directory}: its lock file keeps being replaced")
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        self._file, self._identity, self.wanted = f, mine, True

    def intact(self) -> bool:
        """Whether the directory's lock file is still the one held (``False`` when none is held)."""
        if fcntl is None:  # pragma: no cover - no locking: only the directory itself can be lost
            return self.directory.is_dir()
        if self._file is None:
            return False
        try:
            return _identity(os.stat(self.path)) == self._identity
        except OSError:  # gone, or the directory replaced by a file
            return False

    def reacquire(self) -> None:
        """Give up the lock held (on a file that is no longer the directory's), create the directory again
        and take its lock file's lock; raises :class:`StateDirLocked` if another process holds it, and
        ``OSError`` if the directory cannot be created. :attr:`wanted` stays set either way."""
        self._drop()
        self.wanted = True
        self.directory.mkdir(parents=True, exist_ok=True)
        self.acquire()

    def release(self) -> None:
        """Give the lock back (a no-op when none is held)."""
        self._drop()
        self.wanted = False

    def _drop(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file, self._identity = None, None
