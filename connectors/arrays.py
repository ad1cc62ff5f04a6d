"""Sources that read samples from numpy files: ``.npy`` (memory-mapped, so a file larger than memory
streams) and ``.npz`` (arrays ``x`` and optional labels ``y``). Never unpickles.

A path, a directory or a glob (files in name order) can be given; the position is the file and the
row, so a resume re-reads nothing and skips nothing. Samples holding a NaN or an infinity are counted
(``nonfinite``) and skipped; a file that cannot be read as the scheme says is counted (``file``) and
skipped, except the first, which raises so that a wrong path or option shows at once.

A worker of a data-parallel run (``shard=(rank, world_size)``) reads every ``world_size``-th file of a
directory or glob, or of a single file every ``world_size``-th row (``x[rank::world_size]``); the
position keeps the row of the whole file, with ``"shard": [rank, world_size]``.
"""

from __future__ import annotations

import logging
import time
import zipfile

import numpy as np

from connectors.batching import BatchingSource
from connectors.counters import Reject
from connectors.paths import FileSeries, check_position_shard, normalise_shard, row_share
from connectors.samples import SampleShape, as_labels, drop_nonfinite

_log = logging.getLogger(__name__)

#: The most bytes a .npz array may take decompressed, by default (a .npy file is memory-mapped instead).
DEFAULT_MAX_ARRAY_BYTES = 256 << 20


class ArraySource(BatchingSource):
    """Base of the numpy-file sources: subclasses say how to open one file (``_load``).

    ``_load(path)`` returns ``(x, y)``: the samples, an array whose first axis is the sample axis (a
    memory map is fine), and their labels, a 1-D numeric array of the same length or ``None``. Files are
    read in name order, one batch never mixes two files, and a position is ``{"path": ..., "row": ...}``.
    :class:`NpySource` and :class:`NpzSource` are the built-in subclasses.

    Parameters
    ----------
    path : str
        A file, a directory (every file with ``extension`` in it) or a glob; files are read in name order.
    extension : str
        The files' extension with its dot (``".npy"``), used when ``path`` is a directory.
    batch_size : int, default 32
        Most samples per batch.
    max_latency_ms : float, default 50.0
        How long the oldest waiting sample may wait before a smaller batch is handed out.
    position : dict or None, default None
        A :attr:`~connectors.base.Batch.position` to resume from (``None``: from the first file's start).
    follow : bool, default False
        Must be false: a numpy file cannot be followed (``ValueError`` otherwise).
    name : str or None, default None
        The source's name in logs and metrics (``None``: ``path``).
    shard : tuple of int or None, default None
        ``(rank, world_size)``: read only this worker's share (see the module docstring); a ``position``
        taken with another shard raises ``ValueError``. ``None`` or a world of one: everything, with
        positions as without a shard.

    Examples
    --------
    A subclass for whitespace-separated text files, reading a directory of two of them:

    >>> import tempfile, pathlib
    >>> class TxtSource(ArraySource):
    ...     def __init__(self, path, **kwargs):
    ...         super().__init__(path, ".txt", **kwargs)
    ...     def _load(self, path):
    ...         return np.loadtxt(path, ndmin=2), None
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = pathlib.Path(d, "a.txt").write_text("1 2\\n3 4\\n")
    ...     _ = pathlib.Path(d, "b.txt").write_text("5 6\\n")
    ...     with TxtSource(d, batch_size=8) as src:
    ...         batches = [b.x.tolist() for b in src]
    ...         position = src.position
    ...     with TxtSource(d, position={"path": str(pathlib.Path(d, "a.txt")), "row": 1}) as resumed:
    ...         rest = [b.x.tolist() for b in resumed]
    >>> batches  # a batch never spans two files
    [[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0]]]
    >>> pathlib.Path(position["path"]).name, position["row"]
    ('b.txt', 1)
    >>> rest  # resumed after the first row of a.txt
    [[[3.0, 4.0]], [[5.0, 6.0]]]

    Worker 1 of 2 reads every second file of the directory (here b.txt), or every second row of a file:

    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = pathlib.Path(d, "a.txt").write_text("1 2\\n3 4\\n")
    ...     _ = pathlib.Path(d, "b.txt").write_text("5 6\\n")
    ...     with TxtSource(d, shard=(1, 2)) as src:
    ...         files = [b.x.tolist() for b in src]
    ...     with TxtSource(str(pathlib.Path(d, "a.txt")), shard=(1, 2)) as src:
    ...         rows = [b.x.tolist() for b in src]
    ...         position = src.position
    >>> files, rows, position["row"], position["shard"]
    ([[[5.0, 6.0]]], [[[3.0, 4.0]]], 2, [1, 2])
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
        name: str | None = None,
        shard: tuple[int, int] | None = None,
    ) -> None:
        if follow:
            raise ValueError(f"{extension} files cannot be followed; follow works for CSV and JSON Lines")
        super().__init__(name or path, batch_size=batch_size, max_latency_ms=max_latency_ms, logger=_log)
        self._shard = normalise_shard(shard)
        check_position_shard(position, self._shard, name or path)
        self._files = FileSeries(path, extension, shard=self._shard)
        self._split_rows = self._files.splits_rows
        self._shape = SampleShape()
        self._x: np.ndarray | None = None
        self._y: np.ndarray | None = None
        self._path: str | None = None
        self._row = 0
        start, same = self._files.resume(position.get("path") if position else None)
        if start is None:
            if not self._files.list_all():
                raise FileNotFoundError(f"no file matches {path!r}")
            self._exhausted = True  # the glob matches files, none of them this worker's
            return
        self._open(start, strict=True)
        if same and position:
            row = int(position.get("row", 0))
            if 0 <= row <= len(self._x):
                self._row = row
            else:
                _log.warning(
                    "%s has %d rows, fewer than the saved position's %d; reading it from the start",
                    start,
                    len(self._x),
                    row,
                )
        elif position and position.get("path"):
            _log.warning("%s is gone; going on with %s", position.get("path"), start)

    @property
    def finite(self) -> bool:
        """Always true: a numpy file is read once, to its end (it cannot be followed)."""
        return True

    @property
    def size_hint(self) -> int | None:
        """Samples left to read (an upper bound: non-finite rows are skipped), when a single file."""
        if self._x is None or not self._files.is_single:
            return None
        if self._split_rows:
            return len(range(row_share(self._row, 0, self._shard), len(self._x), self._shard[1]))
        return len(self._x) - self._row

    def _load(self, path: str) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def _open(self, path: str, strict: bool = False) -> bool:
        try:
            x, y = self._load(path)
            if x.ndim < 1 or x.dtype.kind not in "biuf":
                raise Reject("file", f"{path}: x must be a numeric array with a sample axis, got {x.dtype}{x.shape}")
            if y is not None and (y.ndim != 1 or len(y) != len(x) or y.dtype.kind not in "biuf"):
                raise Reject("file", f"{path}: y must be {len(x)} numeric labels, got {y.dtype}{y.shape}")
            # no value per sample, or no sample axis beyond the first: nothing a model can learn
            self._shape.admit(x.shape[1:], count=max(1, len(x)))
            self._shape.fix(x.shape[1:])
        except Reject as e:
            if strict:
                raise ValueError(f"{path}: {e.detail}") from None
            self._reject(Reject(e.reason, f"{path}: {e.detail}" if path not in e.detail else e.detail, e.count))
            return False
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
            if strict:
                raise
            self._reject(Reject("file", f"{path}: {e}"))
            return False
        self._release()
        self._x, self._y, self._path, self._row = x, y, path, 0
        return True

    def _fill(self, until: float | None) -> None:
        batcher = self._batcher
        while not batcher.ready:
            if self._x is None or self._row >= len(self._x):
                if not self._advance():
                    self._exhausted = True
                    return
                continue
            start, step = self._row, 1
            if self._split_rows:
                step = self._shard[1]
                start = row_share(start, 0, self._shard)
                if start >= len(self._x):
                    self._row = len(self._x)
                    continue
            stop = min(len(self._x), start + (max(1, batcher.room) - 1) * step + 1)
            x = np.array(self._x[start:stop:step], dtype=np.float32, order="C")
            y = None if self._y is None else as_labels(np.asarray(self._y[start:stop:step]))
            self._row = stop
            x2, y2, dropped = drop_nonfinite(x, y)
            if dropped:
                bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1)) * step + start
                rows = ", ".join(map(str, bad[:5].tolist())) + (", ..." if len(bad) > 5 else "")
                self._reject(Reject("nonfinite", f"{self._path} rows {rows}: NaN or infinity", dropped))
            self._push(x2, y2, end=self._where(stop))
            if until is not None and time.monotonic() >= until:
                return

    def _advance(self) -> bool:
        current = self._path
        while True:
            nxt = self._files.after(current) if not self._files.is_single else None
            if nxt is None:
                return False
            if self._open(nxt):
                self._batcher.seal()
                return True
            current = nxt

    def _where(self, row: int) -> dict:
        position = {"path": self._path, "row": row}
        if self._shard is not None:
            position["shard"] = list(self._shard)
        return position

    def _reader_position(self) -> dict | None:
        return self._where(self._row)

    def _release(self) -> None:
        self._x = self._y = None  # drops the memory map


class NpySource(ArraySource):
    """Samples from ``.npy`` files, memory-mapped: row ``i`` of the array is sample ``i``.

    Parameters
    ----------
    path : str
        A ``.npy`` file, a directory of them or a glob; files are read in name order.
    **kwargs
        :class:`ArraySource`'s keyword arguments: ``batch_size``, ``max_latency_ms``, ``position``, ``name``,
        ``shard``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = str(pathlib.Path(d, "x.npy"))
    ...     np.save(path, np.arange(10, dtype=np.float64).reshape(5, 2))
    ...     with NpySource(path, batch_size=2) as src:
    ...         first = src.read()
    ...         print(first.x.tolist(), first.position["row"], sum(len(b) for b in src))
    [[0.0, 1.0], [2.0, 3.0]] 2 3
    """

    def __init__(self, path: str, **kwargs) -> None:
        super().__init__(path, ".npy", **kwargs)

    def _load(self, path: str) -> tuple[np.ndarray, np.ndarray | None]:
        return np.load(path, mmap_mode="r", allow_pickle=False), None


class NpzSource(ArraySource):
    """Samples from ``.npz`` files: array ``x_key`` and labels ``y_key``.

    ``x_key`` defaults to ``"x"``, or the only array; ``y_key`` to ``"y"``, used when present.

    Parameters
    ----------
    path : str
        A ``.npz`` file, a directory of them or a glob; files are read in name order.
    x_key : str, default "x"
        The array of samples (a file with a single array: that one, whatever its name).
    y_key : str or None, default "y"
        The array of labels, used when the file has it (``None``: no labels).
    max_array_bytes : int, default 256 MiB
        The most bytes an array may take once decompressed (checked from its declared sizes before anything is
        decompressed): a larger one is refused and counted (reason ``file``), so that a small file cannot
        take the machine's memory. A ``.npy`` file is memory-mapped, with no such bound.
    **kwargs
        :class:`ArraySource`'s keyword arguments: ``batch_size``, ``max_latency_ms``, ``position``, ``name``,
        ``shard``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = str(pathlib.Path(d, "d.npz"))
    ...     np.savez(path, x=np.ones((3, 2)), y=np.array([0, 1, 0]))
    ...     with NpzSource(path, batch_size=8) as src:
    ...         b = src.read()
    >>> b.x.shape, b.y.tolist()
    ((3, 2), [0, 1, 0])
    """

    def __init__(self, path: str, *, x_key: str = "x", y_key: str | None = "y",
                 max_array_bytes: int = DEFAULT_MAX_ARRAY_BYTES, **kwargs) -> None:
        if max_array_bytes < 1:
            raise ValueError("max_array_bytes must be >= 1")
        self._x_key, self._y_key = x_key, y_key
        self._max = int(max_array_bytes)
        super().__init__(path, ".npz", **kwargs)

    def _member(self, archive: zipfile.ZipFile, name: str) -> None:
        """Refuse (``Reject("file")``) an array that would take more than ``max_array_bytes`` once decompressed,
        by its declared sizes (the zip entry's and the array header's), before anything is decompressed."""
        info = archive.getinfo(name + ".npy")
        with archive.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
        largest = max(declared, info.file_size)
        if largest > self._max:
            raise Reject("file", f"array {name!r} would take {largest:,} bytes decompressed, over max_array_bytes "
                                 f"= {self._max:,} (a .npy file is memory-mapped instead, with no such bound)")

    def _load(self, path: str) -> tuple[np.ndarray, np.ndarray | None]:
        with np.load(path, allow_pickle=False) as z:
            names = list(z.files)
            if self._x_key in names:
                x_name = self._x_key
            elif len(names) == 1:
                x_name = names[0]
            else:
                raise Reject("file", f"no array {self._x_key!r} among {names}")
            y_name = self._y_key if self._y_key and self._y_key in names and self._y_key != x_name else None
            for name in (x_name, y_name) if y_name else (x_name,):
                self._member(z.zip, name)
            x = z[x_name]
            y = z[y_name] if y_name else None
        return x, y
