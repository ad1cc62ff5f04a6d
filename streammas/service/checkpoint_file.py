"""One checkpoint file: its format, written atomically and verified when read.

A checkpoint is one file ``ckpt-<seq>.pt`` written by ``torch.save`` and read with
``torch.load(weights_only=True)``: a dict of plain data and tensors,

``{"format": "streammas.service.checkpoint", "version": 1, "seq": int, "created": unix time, "meta": {...},
"learner": OnlineMAS.state_dict(), "digest": "sha256:..."}``

where ``meta`` carries what is needed to rebuild the model before loading the learner's state (the model's
kind or factory, its options, the sample shape), the source's position and the service's counters.
``digest`` is :func:`~streammas.service.digest.content_digest` over everything else, so that a damaged file is
detected even where the zip container would load it.

Writing: a temporary file in the same directory, ``fsync``, ``rename`` over the final name, ``fsync`` of the
directory; a crash at any moment leaves either the old file or the new one, never a half file under a
checkpoint's name. The directory of checkpoints (their sequence, rotation and lock) is
:class:`streammas.service.checkpoint.CheckpointStore`'s.

>>> import tempfile, pathlib, torch
>>> with tempfile.TemporaryDirectory() as d:
...     written = write_checkpoint(pathlib.Path(d, "ckpt-00000001.pt"), 1, {"samples_seen": 4}, {"w": torch.ones(2)})
...     read = read_checkpoint(written.path)
>>> read.seq, read.meta, read.learner["w"].tolist(), read.nbytes == written.nbytes
(1, {'samples_seen': 4}, [1.0, 1.0], True)
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streammas.service.digest import content_digest

__all__ = ["FORMAT", "VERSION", "Checkpoint", "CorruptCheckpoint", "fsync_dir", "read_checkpoint",
           "write_atomic", "write_checkpoint"]

FORMAT = "streammas.service.checkpoint"
VERSION = 1


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
    streammas.service.checkpoint.CorruptCheckpoint: not a checkpoint: not the zip archive torch.save writes (its first
    bytes are text)
    """


#: Where users import it from, as tracebacks show it.
CorruptCheckpoint.__module__ = "streammas.service.checkpoint"


@dataclass
class Checkpoint:
    """One loaded, verified checkpoint.

    Returned by :meth:`CheckpointStore.save`, :meth:`CheckpointStore.load_latest`, :func:`read_checkpoint`
    and :func:`write_checkpoint`.

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
    >>> import tempfile, pathlib, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     saved = write_checkpoint(pathlib.Path(d, "ckpt-00000001.pt"), 1, {"samples_seen": 10}, {"w": torch.ones(2)})
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


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened for it)."""
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
    fsync_dir(path.parent)


def write_checkpoint(path: Path, seq: int, meta: Mapping[str, Any], learner_state: Mapping[str, Any]) -> Checkpoint:
    """Write checkpoint number ``seq`` to ``path`` atomically, with its digest; returns it."""
    obj: dict[str, Any] = {"format": FORMAT, "version": VERSION, "seq": seq, "created": time.time(),
                           "meta": dict(meta), "learner": dict(learner_state)}
    obj["digest"] = content_digest(obj)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    write_atomic(path, data)
    return Checkpoint(path, seq, obj["created"], obj["meta"], obj["learner"], len(data))


#: The first bytes of a zip archive: what ``torch.save`` writes.
_ZIP_MAGIC = b"PK\x03\x04"


def unloadable(path: Path, error: Exception) -> str:
    """Why ``torch.load`` could not load ``path``, in the project's words: torch's own message is not repeated,
    since it may suggest loading with ``weights_only=False``, which would run any code the file holds.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     zeros = Path(d, "ckpt.pt"); _ = zeros.write_bytes(bytes(64))
    ...     print(unloadable(zeros, RuntimeError("Invalid magic number; corrupt file?")))
    not a checkpoint: not the zip archive torch.save writes (its first bytes are all zeros)
    """
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return f"cannot read it: {e.strerror or e}"
    if not head.startswith(_ZIP_MAGIC):
        text = all(32 <= c < 127 or c in b"\t\r\n" for c in head)
        what = "all zeros" if not any(head) else "text" if text else "something else"
        return f"not a checkpoint: not the zip archive torch.save writes (its first bytes are {what})"
    if isinstance(error, pickle.UnpicklingError) and "weights_only" in str(error):
        return ("it holds objects other than plain data and tensors, so it was not loaded (checkpoints are "
                "loaded with weights_only=True, which runs no code from the file); it was not written by streammas")
    if isinstance(error, EOFError) or "central directory" in str(error):
        return f"the archive is cut short (a write that did not finish?; {type(error).__name__})"
    return f"the archive is damaged ({type(error).__name__})"


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
        raise CorruptCheckpoint(unloadable(path, e)) from None
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
