"""Checkpoints: the whole state of a service, written atomically, verified when read, the last few kept.

One checkpoint is one file (its format, the atomic write and the verification: :mod:`streammas.service.checkpoint_file`,
its digest: :mod:`streammas.service.digest`). This module keeps the directory of them: each new checkpoint numbered
one more than the last, the newest ``keep`` kept, and reading the newest that loads and verifies; each bad one is
reported (and, by the service, renamed ``*.corrupt`` so that it leaves the rotation but stays for inspection).

A lock file (``flock``, :mod:`streammas.service.statelock`) makes sure one process at a time writes to a directory;
:meth:`CheckpointStore.save` first checks that the directory and the lock are still there (one ``stat``),
creating them again if the directory was deleted, and refusing to write if another process took it meanwhile.

>>> import tempfile, torch
>>> with tempfile.TemporaryDirectory() as d:
...     store = CheckpointStore(d, keep=2)
...     for step in range(3):
...         _ = store.save({"w": torch.full((2,), float(step))}, {"samples_seen": step})
...     found = store.load_latest()
...     [p.name for p in store.paths()], found.meta["samples_seen"], found.learner["w"].tolist()
(['ckpt-00000002.pt', 'ckpt-00000003.pt'], 2, [2.0, 2.0])
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streammas.service.checkpoint_file import (
    Checkpoint,
    CorruptCheckpoint,
    fsync_dir,
    read_checkpoint,
    write_atomic,
    write_checkpoint,
)
from streammas.service.digest import content_digest
from streammas.service.statelock import LOCK_NAME, DirLock, StateDirLocked

__all__ = ["LOCK_NAME", "Checkpoint", "CheckpointStore", "CorruptCheckpoint", "LoadReport", "StateDirLocked",
           "content_digest", "read_checkpoint", "write_atomic"]

_log = logging.getLogger(__name__)

_NAME = re.compile(r"ckpt-(\d{8,})\.pt")
_ANY_SEQ = re.compile(r"ckpt-(\d{8,})\.pt(?:\.corrupt)?")


@dataclass
class LoadReport:
    """What :meth:`CheckpointStore.load_report` found: the checkpoint and the bad files it skipped.

    Parameters
    ----------
    checkpoint : Checkpoint or None
        The newest checkpoint that loads and verifies (``None``: there is none).
    corrupt : list of (Path, str), default []
        The newer files skipped on the way, newest first, each with the reason.

    Examples
    --------
    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = CheckpointStore(d)
    ...     _ = store.save({"w": torch.zeros(1)}, {})
    ...     damaged = store.save({"w": torch.ones(1)}, {})
    ...     _ = damaged.path.write_bytes(b"")
    ...     report = store.load_report()
    >>> report.checkpoint.seq, [(p.name, reason) for p, reason in report.corrupt]
    (1, [('ckpt-00000002.pt', 'the file is empty')])
    """

    checkpoint: Checkpoint | None
    corrupt: list[tuple[Path, str]] = field(default_factory=list)


class CheckpointStore:
    """The checkpoints of one state directory: atomic saves, rotation, and loading the newest valid one.

    ``keep`` checkpoints are kept; older ones are deleted after each successful save. Files named
    ``*.corrupt`` (set aside by :meth:`quarantine`) are neither loaded nor rotated. A writer takes the
    directory's lock with :meth:`lock` (and gives it back with :meth:`unlock`); :meth:`save` :meth:`ensure`-s
    first that the directory and the lock are still there.

    Parameters
    ----------
    directory : str or os.PathLike
        The state directory.
    keep : int, default 3
        How many checkpoints to keep (at least 1).
    create : bool, default True
        Create the directory (and its parents) if it does not exist.

    Examples
    --------
    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     store = CheckpointStore(d, keep=2)
    ...     store.lock()
    ...     for step in range(3):
    ...         _ = store.save({"w": torch.full((2,), float(step))}, {"samples_seen": 100 * step})
    ...     store.unlock()
    ...     names = [p.name for p in store.paths()]
    ...     latest = store.load_latest()
    >>> names
    ['ckpt-00000002.pt', 'ckpt-00000003.pt']
    >>> latest.seq, latest.meta["samples_seen"], latest.learner["w"].tolist()
    (3, 200, [2.0, 2.0])
    """

    def __init__(self, directory: str | os.PathLike, keep: int = 3, *, create: bool = True) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        self.directory = Path(directory)
        self.keep = int(keep)
        if create:
            self.directory.mkdir(parents=True, exist_ok=True)
        self._seq = self._max_seq()
        self._lock = DirLock(self.directory)

    # -- files -----------------------------------------------------------------------------------------------
    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.fullmatch(p.name))]
        return [p for _, p in sorted(found)]

    def _max_seq(self) -> int:
        if not self.directory.is_dir():
            return 0
        seqs = [int(m.group(1)) for p in self.directory.iterdir() if (m := _ANY_SEQ.fullmatch(p.name))]
        return max(seqs, default=0)

    def remove_temporary(self) -> list[Path]:
        """Delete ``*.tmp`` files a crash left behind; returns them."""
        removed = []
        for p in self.directory.glob("ckpt-*.pt.tmp"):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
                removed.append(p)
        return removed

    def quarantine(self, path: Path) -> Path:
        """Rename a bad checkpoint to ``*.corrupt`` (kept for inspection, out of the rotation)."""
        target = path.with_name(path.name + ".corrupt")
        os.replace(path, target)
        fsync_dir(self.directory)
        return target

    # -- save / load -------------------------------------------------------------------------------------------
    def save(self, learner_state: Mapping[str, Any], meta: Mapping[str, Any]) -> Checkpoint:
        """Write a new checkpoint atomically and rotate; returns it.

        The directory is :meth:`ensure`-d first: a store never writes into a directory whose lock another
        process holds.
        """
        self.ensure()
        self._seq = max(self._seq, self._max_seq()) + 1
        saved = write_checkpoint(self.directory / f"ckpt-{self._seq:08d}.pt", self._seq, meta, learner_state)
        self._rotate()
        return saved

    def _rotate(self) -> None:
        paths = self.paths()
        for old in paths[: max(0, len(paths) - self.keep)]:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()

    def iter_valid(self) -> Iterator[Checkpoint | tuple[Path, str]]:
        """Newest first: each checkpoint loaded, or ``(path, reason)`` for a bad one."""
        for path in reversed(self.paths()):
            try:
                yield read_checkpoint(path)
            except CorruptCheckpoint as e:
                yield path, str(e)

    def load_latest(self, *, quarantine: bool = False) -> Checkpoint | None:
        """The newest valid checkpoint (``None`` if there is none); bad ones are logged (and quarantined)."""
        return self.load_report(quarantine=quarantine).checkpoint

    def load_report(self, *, quarantine: bool = False) -> LoadReport:
        """Like :meth:`load_latest`, also listing the bad files skipped."""
        report = LoadReport(None)
        for item in self.iter_valid():
            if isinstance(item, Checkpoint):
                report.checkpoint = item
                break
            path, reason = item
            report.corrupt.append((path, reason))
            _log.warning("checkpoint %s is corrupt (%s); skipping it", path, reason)
            if quarantine:
                with contextlib.suppress(OSError):
                    self.quarantine(path)
        return report

    # -- one writer per directory -----------------------------------------------------------------------------
    def lock(self) -> None:
        """Take the directory's lock (raises :class:`StateDirLocked` if another process holds it)."""
        self._lock.acquire()

    def unlock(self) -> None:
        """Give the directory's lock back."""
        self._lock.release()

    def intact(self) -> bool:
        """Whether the directory is there and, if this store took its lock, still locked by it (one ``stat``)."""
        return self._lock.intact() if self._lock.wanted else self.directory.is_dir()

    def ensure(self) -> bool:
        """Make sure the directory exists and, if this store took its lock, that the lock is still its lock file.

        Returns ``True`` when the directory (or its lock) had vanished and was created (taken) again. Raises
        :class:`StateDirLocked` when another process took the directory meanwhile, and ``OSError`` when it
        cannot be created.
        """
        if self.intact():
            return False
        if self._lock.wanted:
            self._lock.reacquire()
        else:
            self.directory.mkdir(parents=True, exist_ok=True)
        return True
