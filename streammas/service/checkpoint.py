"""Checkpoints: the whole state of a service, written atomically, verified when read, the last few kept.

A checkpoint is one file ``ckpt-<seq>.pt`` written by ``torch.save`` and read with
``torch.load(weights_only=True)``: a dict of plain data and tensors,

``{"format": "streammas.service.checkpoint", "version": 1, "seq": int, "created": unix time, "meta": {...},
"learner": OnlineMAS.state_dict(), "digest": "sha256:..."}``

where ``meta`` carries what is needed to rebuild the model before loading the learner's state (the model's
kind or factory, its options, the sample shape), the source's position and the service's counters.
``digest`` is a SHA-256 over the content of everything else (every tensor's dtype, shape and bytes, every
number and string), so that a damaged file is detected even where the zip container would load it
(``torch.load`` does not verify the tensors' bytes).

Writing: a temporary file in the same directory, ``fsync``, ``rename`` over the final name, ``fsync`` of the
directory; a crash at any moment leaves either the old set of checkpoints or the new one, never a half file
under a checkpoint's name. Reading: the newest checkpoint that loads and verifies; each bad one is reported
(and, by the service, renamed ``*.corrupt`` so that it leaves the rotation but stays for inspection).

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
import hashlib
import io
import logging
import os
import re
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from streammas.service.statelock import LOCK_NAME, DirLock, StateDirLocked

__all__ = ["LOCK_NAME", "Checkpoint", "CheckpointStore", "CorruptCheckpoint", "LoadReport", "StateDirLocked",
           "content_digest", "read_checkpoint", "write_atomic"]

_log = logging.getLogger(__name__)

FORMAT = "streammas.service.checkpoint"
VERSION = 1
_NAME = re.compile(r"ckpt-(\d{8,})\.pt")
_ANY_SEQ = re.compile(r"ckpt-(\d{8,})\.pt(?:\.corrupt)?")


class CorruptCheckpoint(Exception):
    """A checkpoint file that cannot be loaded or does not verify.

    Raised by :func:`read_checkpoint`, with the reason as its message; :meth:`CheckpointStore.load_report`
    catches it, skips the file and lists it in :attr:`LoadReport.corrupt`.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = pathlib.Path(d, "ckpt-00000001.pt")
    ...     _ = path.write_bytes(b"not a checkpoint")
    ...     read_checkpoint(path)
    Traceback (most recent call last):
        ...
    streammas.service.checkpoint.CorruptCheckpoint: cannot load it (...)
    """


@dataclass
class Checkpoint:
    """One loaded, verified checkpoint.

    Returned by :meth:`CheckpointStore.save`, :meth:`CheckpointStore.load_latest` and
    :func:`read_checkpoint`.

    Parameters
    ----------
    path : Path
        The checkpoint's file, ``ckpt-<seq>.pt``.
    seq : int
        Its sequence number, one more than the previous checkpoint's.
    created : float
        When it was written (Unix time).
    meta : dict
        What rebuilds the model, the source's position and the service's counters.
    learner : dict
        The learner's state (:meth:`streammas.OnlineMAS.state_dict`).
    nbytes : int, default 0
        The file's size in bytes.

    Examples
    --------
    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     saved = CheckpointStore(d).save({"w": torch.ones(2)}, {"samples_seen": 10})
    ...     loaded = read_checkpoint(saved.path)
    >>> loaded.path.name, loaded.seq, loaded.meta, loaded.learner["w"].tolist(), loaded.nbytes == saved.nbytes
    ('ckpt-00000001.pt', 1, {'samples_seen': 10}, [1.0, 1.0], True)
    """

    path: Path
    seq: int
    created: float
    meta: dict[str, Any]
    learner: dict[str, Any]
    nbytes: int = 0


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


# -- content digest ----------------------------------------------------------------------------------------------
def _feed(h: Any, value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, Mapping):
        h.update(b"D%d" % len(value))
        for key in sorted(value, key=repr):
            _feed(h, key)
            _feed(h, value[key])
    elif isinstance(value, (list, tuple)):
        h.update(b"L%d" % len(value) if isinstance(value, list) else b"U%d" % len(value))
        for item in value:
            _feed(h, item)
    elif isinstance(value, bool) or value is None:
        h.update(repr(value).encode())
    elif isinstance(value, int):
        h.update(b"I" + str(value).encode() + b";")
    elif isinstance(value, float):
        h.update(b"F" + struct.pack("<d", value))
    elif isinstance(value, str):
        data = value.encode("utf-8", "surrogatepass")
        h.update(b"S%d:" % len(data) + data)
    elif isinstance(value, bytes):
        h.update(b"B%d:" % len(value) + value)
    elif isinstance(value, (torch.dtype, torch.device, torch.Size)):
        h.update(b"O" + repr(value).encode() + b";")
    else:
        raise TypeError(f"cannot checkpoint a value of type {type(value).__name__}")


def content_digest(value: Any) -> str:
    """SHA-256 over the content of nested dicts, lists, tensors and scalars (stable across save/load).

    >>> content_digest({"a": torch.zeros(2), "b": [1, 2.5, "x"]}) == content_digest({"b": [1, 2.5, "x"],
    ...                                                                          "a": torch.zeros(2)})
    True
    >>> content_digest({"a": torch.zeros(2)}) == content_digest({"a": torch.ones(2)})
    False
    """
    h = hashlib.sha256()
    _feed(h, value)
    return "sha256:" + h.hexdigest()


# -- reading and writing -----------------------------------------------------------------------------------------
def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened for fsync elsewhere
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: temporary file, fsync, rename, fsync of the directory."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Load and verify one checkpoint file (``weights_only=True``); raises :class:`CorruptCheckpoint`."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise CorruptCheckpoint("the file is empty")
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except CorruptCheckpoint:
        raise
    except OSError as e:
        raise CorruptCheckpoint(f"cannot read it: {e.strerror or e}") from None
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, UnicodeDecodeError, EOFError ...
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CorruptCheckpoint(f"cannot load it ({type(e).__name__}{': ' + first if first else ''})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CorruptCheckpoint("not a streammas checkpoint")
    if obj.get("version") != VERSION:
        raise CorruptCheckpoint(f"checkpoint version {obj.get('version')!r}, this streammas reads {VERSION}")
    digest = obj.pop("digest", None)
    try:
        actual = content_digest(obj)
    except TypeError as e:
        raise CorruptCheckpoint(str(e)) from None
    if digest != actual:
        raise CorruptCheckpoint("its content does not match its digest (the file is damaged)")
    for key, kind in (("meta", dict), ("learner", dict), ("seq", int), ("created", float)):
        if not isinstance(obj.get(key), kind):
            raise CorruptCheckpoint(f"missing or malformed {key!r}")
    return Checkpoint(path, obj["seq"], obj["created"], obj["meta"], obj["learner"], size)


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
        _fsync_dir(self.directory)
        return target

    # -- save / load -------------------------------------------------------------------------------------------
    def save(self, learner_state: Mapping[str, Any], meta: Mapping[str, Any]) -> Checkpoint:
        """Write a new checkpoint atomically and rotate; returns it.

        The directory is :meth:`ensure`-d first: a store never writes into a directory whose lock another
        process holds.
        """
        self.ensure()
        self._seq = max(self._seq, self._max_seq()) + 1
        obj: dict[str, Any] = {"format": FORMAT, "version": VERSION, "seq": self._seq, "created": time.time(),
                               "meta": dict(meta), "learner": dict(learner_state)}
        obj["digest"] = content_digest(obj)
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        data = buffer.getbuffer()
        path = self.directory / f"ckpt-{self._seq:08d}.pt"
        write_atomic(path, data)
        self._rotate()
        return Checkpoint(path, self._seq, obj["created"], obj["meta"], obj["learner"], len(data))

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
