"""Which files a file source reads: one path, every file with the scheme's extension in a directory, or
a glob; always in name order, so that date- or number-stamped files are read oldest first.

With a shard ``(rank, world_size)`` (a worker of a data-parallel run) a directory or glob is split by file:
file ``i`` of the name-ordered list goes to worker ``i % world_size``. A single file is split by row
instead, by the source that reads it (see :func:`row_share`). A position records the shard it was taken
in (``"shard": [rank, world_size]``), and :func:`check_position_shard` refuses one taken in another.

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as d:
...     for name in ("b.csv", "a.csv", "notes.txt"):
...         _ = pathlib.Path(d, name).write_text("x\\n1\\n")
...     series = FileSeries(d, ".csv")
...     [pathlib.Path(p).name for p in series.list()], pathlib.Path(series.after(series.list()[0])).name
(['a.csv', 'b.csv'], 'b.csv')
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

_GLOB_CHARS = frozenset("*?[")


def normalise_shard(shard: Sequence[int] | None) -> tuple[int, int] | None:
    """``(rank, world_size)`` checked, or ``None`` for no split (``None`` or a world of one worker).

    A world of one is the unsharded source itself, so that its positions stay those of a run that never
    heard of shards (and checkpoints taken before sharding existed resume).

    >>> normalise_shard((1, 3)), normalise_shard((0, 1)), normalise_shard(None)
    ((1, 3), None, None)
    >>> normalise_shard((3, 3))
    Traceback (most recent call last):
        ...
    ValueError: shard must be (rank, world_size) with 0 <= rank < world_size, got (3, 3)
    """
    if shard is None:
        return None
    try:
        rank, world = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise ValueError(f"shard must be (rank, world_size), got {shard!r}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard must be (rank, world_size) with 0 <= rank < world_size, got {tuple(shard)!r}")
    return None if world == 1 else (rank, world)


def check_position_shard(position: dict | None, shard: tuple[int, int] | None, name: str) -> None:
    """Raise ``ValueError`` when ``position`` was taken by a source split another way than ``shard``.

    A position without ``"shard"`` was taken by an unsplit source (a world of one). Resuming a worker
    from another worker's position, or after the number of workers changed, would read rows twice or
    never: what to do then (start over, reshard) is the caller's decision, not the source's.

    >>> check_position_shard({"row": 4, "shard": [0, 2]}, (0, 2), "d.npy")
    >>> check_position_shard({"row": 4}, (1, 2), "d.npy")
    Traceback (most recent call last):
        ...
    ValueError: d.npy: the saved position was taken as worker 0 of 1, not worker 1 of 2; ...
    """
    if not position:
        return
    saved = tuple(position.get("shard") or (0, 1))
    wanted = shard or (0, 1)
    if saved != wanted:
        raise ValueError(
            f"{name}: the saved position was taken as worker {saved[0]} of {saved[1]}, not worker {wanted[0]} "
            f"of {wanted[1]}; a resume needs the same world size and rank"
        )


def row_share(start: int, first: int, shard: tuple[int, int]) -> int:
    """The first data row at or after ``start`` that is this worker's: row ``i`` (counted from ``first``,
    the first data row) belongs to worker ``i % world_size``; rows before ``first`` (a header) to none.

    >>> [row_share(s, 0, (1, 3)) for s in range(6)]
    [1, 1, 4, 4, 4, 7]
    """
    rank, world = shard
    start = max(start, first)
    return start + (rank - (start - first)) % world


def is_pattern(path: str) -> bool:
    return any(c in _GLOB_CHARS for c in path)


def file_path(rest: str) -> str:
    """The path part of a file URI after its scheme: ``csv:data.csv``, ``csv:///abs/data.csv`` and
    ``csv:~/data.csv`` all work.

    >>> file_path("///tmp/data.csv"), file_path("data.csv")
    ('/tmp/data.csv', 'data.csv')
    >>> file_path("//data.csv")
    Traceback (most recent call last):
        ...
    ValueError: '//data.csv' names a host, not a file: write the path right after the scheme ...
    """
    if rest.startswith("//"):
        if not rest.startswith("///"):  # csv://data.csv: '//' starts a host, which a file has not
            raise ValueError(f"'//{rest[2:]}' names a host, not a file: write the path right after the scheme "
                             f"({rest[2:] or 'data.csv'} relative, ///{rest[2:].lstrip('/') or 'data.csv'} absolute), "
                             "as in csv:data.csv or csv:///srv/data.csv; '//' is for network schemes such as "
                             "zmq+pull://HOST:PORT")
        rest = rest[2:]
    if not rest:
        raise ValueError("a file URI needs a path, e.g. csv:data.csv")
    return os.path.expanduser(rest)


class FileSeries:
    """The files named by ``spec`` (a path, a directory, or a glob), in name order.

    The list is taken anew on every call, so files that appear later (a followed series of log files)
    are found; a single path is listed even before it exists.

    Parameters
    ----------
    spec : str
        A path, a directory (every file in it that ends with ``extension``) or a glob (``**`` recurses).
    extension : str
        The extension, with its dot (``".csv"``), of the files a directory contributes.
    shard : tuple of int or None, default None
        ``(rank, world_size)``: list only file ``i`` of the name-ordered files with
        ``i % world_size == rank``. A single path is never split here (its source splits its rows).
        Files are shared by their place in the list, so files that appear later must sort after those
        already there (date- or number-stamped names do), and files must not be removed while a run
        follows the series: either moves every later file to another worker.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     for name in ("2024-02.csv", "2024-01.csv"):
    ...         _ = pathlib.Path(d, name).write_text("x\\n1\\n")
    ...     series = FileSeries(f"{d}/2024-*.csv", ".csv")
    ...     first = series.after(None)
    ...     names = [pathlib.Path(p).name for p in (first, series.after(first))]
    ...     start, same = series.resume(str(pathlib.Path(d, "2023-12.csv")))
    >>> names, series.is_single
    (['2024-01.csv', '2024-02.csv'], False)
    >>> pathlib.Path(start).name, same  # a saved file that is gone: go on with the next one
    ('2024-01.csv', False)
    >>> FileSeries("data.csv", ".csv").list()
    ['data.csv']

    Worker 1 of 2 reads every second file:

    >>> with tempfile.TemporaryDirectory() as d:
    ...     for name in ("a.csv", "b.csv", "c.csv"):
    ...         _ = pathlib.Path(d, name).write_text("x\\n1\\n")
    ...     series = FileSeries(d, ".csv", shard=(1, 2))
    ...     [pathlib.Path(p).name for p in series.list()], len(series.list_all())
    (['b.csv'], 3)
    """

    def __init__(self, spec: str, extension: str, *, shard: tuple[int, int] | None = None) -> None:
        self.spec = spec
        self.extension = extension
        self.shard = normalise_shard(shard)
        if os.path.isdir(spec):
            self._pattern: str | None = os.path.join(glob.escape(spec), "*" + extension)
        elif is_pattern(spec):
            self._pattern = spec
        else:
            self._pattern = None

    @property
    def is_single(self) -> bool:
        return self._pattern is None

    @property
    def splits_rows(self) -> bool:
        """Whether the shard splits rows (a single file) rather than files (a directory or a glob)."""
        return self.shard is not None and self._pattern is None

    def list_all(self) -> list[str]:
        """Every matching file now, whatever the shard (a single path is listed even before it exists)."""
        if self._pattern is None:
            return [self.spec]
        return sorted(p for p in glob.glob(self._pattern, recursive=True) if os.path.isfile(p))

    def list(self) -> list[str]:
        """The matching files now that are this worker's (all of them without a shard)."""
        files = self.list_all()
        if self.shard is None or self._pattern is None:
            return files
        rank, world = self.shard
        return files[rank::world]

    def after(self, current: str | None) -> str | None:
        """The first file that sorts after ``current`` (the first file when ``current`` is ``None``)."""
        for path in self.list():
            if current is None or path > current:
                return path
        return None

    def resume(self, path: str | None) -> tuple[str | None, bool]:
        """Where to start for a saved position in ``path``: ``(file, same)``; ``same`` is true when the
        file is the one the position was taken in, otherwise the next file in order is given."""
        if self._pattern is None:
            return self.spec, path == self.spec
        files = self.list()
        if path is None:
            return (files[0] if files else None), False
        if path in files:
            return path, True
        later = [p for p in files if p > path]
        return (later[0] if later else None), False
