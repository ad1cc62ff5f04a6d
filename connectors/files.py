"""The file connectors the registry serves: ``csv:``, ``jsonl:``, ``npy:`` and ``npz:`` sources, and
the ``jsonl:`` sink.

The part after the scheme is a path, a directory (every file with the scheme's extension in it) or a
glob; ``csv:///abs/path.csv`` and ``~`` work too. Options are the source classes' keyword arguments:
``follow``, ``poll_interval`` (CSV, JSON Lines), ``label``, ``columns``, ``delimiter``, ``label_dtype``
(CSV), ``sample_shape`` (JSON Lines), ``x_key``, ``y_key`` (npz); ``fsync`` for the sink. A file source
is ``finite`` unless it follows its files.

A worker of a data-parallel run opens its share with ``open_source(uri, shard=(rank, world_size))``:
every ``world_size``-th file of a directory or glob, or every ``world_size``-th data row of a single file
(see :class:`~connectors.text.LineSource` and :class:`~connectors.arrays.ArraySource`).

>>> import tempfile, pathlib
>>> from connectors.registry import open_source
>>> with tempfile.TemporaryDirectory() as d:
...     _ = pathlib.Path(d, "a.csv").write_text("f1,f2\\n1,2\\n3,4\\n")
...     with open_source(f"csv:{d}/*.csv", batch_size=16) as src:
...         print(src.read().x.tolist(), src.finite)
...     with open_source(f"csv:{d}/*.csv", follow=True) as followed:
...         print(followed.finite)  # a followed file may grow for ever
[[1.0, 2.0], [3.0, 4.0]] True
False
"""

from __future__ import annotations

from typing import Any

from connectors.arrays import NpySource, NpzSource
from connectors.base import Sink, Source
from connectors.csv_source import CsvSource
from connectors.jsonl_sink import JsonlSink
from connectors.jsonl_source import JsonlSource
from connectors.options import keyword_defaults
from connectors.paths import file_path


class FileConnector:
    """Opens one file scheme's source (and sink, when it has one) from a URI.

    The registry serves the built-in file schemes with the instances ``CSV``, ``JSONL``, ``NPY`` and
    ``NPZ`` of this class. ``open_source(uri, *, batch_size, max_latency_ms, position, rank=0,
    world_size=1, **options)`` builds ``source_cls`` on the URI's path, with ``shard=(rank, world_size)``;
    ``open_sink(uri, **options)`` builds ``sink_cls`` on it (``-``: standard output) and raises
    ``ValueError`` when the scheme has no sink.

    Parameters
    ----------
    source_cls : type[Source]
        The source class, called as ``source_cls(path, batch_size=..., max_latency_ms=..., position=...,
        shard=..., **options)`` (``shard=None`` for a world of one worker).
    sink_cls : type[Sink] or None, default None
        The sink class, called as ``sink_cls(path, **options)`` (``None``: the files can only be read).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from connectors.csv_source import CsvSource
    >>> connector = FileConnector(CsvSource)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = pathlib.Path(d, "a.csv").write_text("f1,f2\\n1,2\\n")
    ...     with connector.open_source(f"csv:{d}/a.csv", batch_size=4, max_latency_ms=0, position=None) as src:
    ...         print(src.read().x.tolist())
    [[1.0, 2.0]]
    >>> sorted(connector.source_options())[:4], connector.sink_options() is None
    (['columns', 'delimiter', 'follow', 'header'], True)
    >>> connector.open_sink("csv:out.csv")
    Traceback (most recent call last):
        ...
    ValueError: 'csv' files can be read, not written
    """

    def __init__(self, source_cls: type[Source], sink_cls: type[Sink] | None = None) -> None:
        self._source_cls = source_cls
        self._sink_cls = sink_cls

    @staticmethod
    def _path(uri: str) -> str:
        return file_path(uri.split(":", 1)[1])

    def open_source(
        self,
        uri: str,
        *,
        batch_size: int,
        max_latency_ms: float,
        position: dict | None,
        rank: int = 0,
        world_size: int = 1,
        **options: Any,
    ) -> Source:
        if world_size != 1 or rank != 0:
            options["shard"] = (rank, world_size)  # only when split, so a world of one is exactly as before
        return self._source_cls(
            self._path(uri), batch_size=batch_size, max_latency_ms=max_latency_ms, position=position, **options
        )

    def source_options(self) -> dict[str, Any]:
        """The options ``open_source`` accepts: the source class's keyword arguments, with their defaults."""
        return keyword_defaults(self._source_cls, skip=("batch_size", "max_latency_ms", "position", "shard", "name"))

    def sink_options(self) -> dict[str, Any] | None:
        """The options ``open_sink`` accepts (``None``: these files are not written)."""
        return None if self._sink_cls is None else keyword_defaults(self._sink_cls)

    def open_sink(self, uri: str, **options: Any) -> Sink:
        if self._sink_cls is None:
            raise ValueError(f"{uri.split(':', 1)[0]!r} files can be read, not written")
        rest = uri.split(":", 1)[1]
        return self._sink_cls(rest if rest == "-" else file_path(rest), **options)


CSV = FileConnector(CsvSource)
JSONL = FileConnector(JsonlSource, JsonlSink)
NPY = FileConnector(NpySource)
NPZ = FileConnector(NpzSource)
