"""Which files a file source reads: one path, every file with the scheme's extension in a directory, or
a glob; always in name order, so that date- or number-stamped files are read oldest first.

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

_GLOB_CHARS = frozenset("*?[")


def is_pattern(path: str) -> bool:
    return any(c in _GLOB_CHARS for c in path)


def file_path(rest: str) -> str:
    """The path part of a file URI after its scheme: ``csv:data.csv``, ``csv:///abs/data.csv`` and
    ``csv:~/data.csv`` all work.

    >>> file_path("///tmp/data.csv"), file_path("data.csv")
    ('/tmp/data.csv', 'data.csv')
    """
    if rest.startswith("//"):
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
    """

    def __init__(self, spec: str, extension: str) -> None:
        self.spec = spec
        self.extension = extension
        if os.path.isdir(spec):
            self._pattern: str | None = os.path.join(glob.escape(spec), "*" + extension)
        elif is_pattern(spec):
            self._pattern = spec
        else:
            self._pattern = None

    @property
    def is_single(self) -> bool:
        return self._pattern is None

    def list(self) -> list[str]:
        """The matching files now (a single path is listed even before it exists)."""
        if self._pattern is None:
            return [self.spec]
        return sorted(p for p in glob.glob(self._pattern, recursive=True) if os.path.isfile(p))

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
