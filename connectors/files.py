"""The file connectors the registry serves: ``csv:``, ``jsonl:``, ``npy:`` and ``npz:`` sources, and
the ``jsonl:`` sink.

The part after the scheme is a path, a directory (every file with the scheme's extension in it) or a
glob; ``csv:///abs/path.csv`` and ``~`` work too. Options are the source classes' keyword arguments:
``follow``, ``poll_interval`` (CSV, JSON Lines), ``label``, ``columns``, ``delimiter``, ``label_dtype``
(CSV), ``sample_shape`` (JSON Lines), ``x_key``, ``y_key`` (npz); ``fsync`` for the sink.

>>> import tempfile, pathlib
>>> from connectors.base import open_source
>>> with tempfile.TemporaryDirectory() as d:
...     _ = pathlib.Path(d, "a.csv").write_text("f1,f2\\n1,2\\n3,4\\n")
...     with open_source(f"csv:{d}/*.csv", batch_size=16) as src:
...         print(src.read().x.tolist())
[[1.0, 2.0], [3.0, 4.0]]
"""

from __future__ import annotations

from typing import Any

from connectors.arrays import NpySource, NpzSource
from connectors.base import Sink, Source
from connectors.csv_source import CsvSource
from connectors.jsonl_sink import JsonlSink
from connectors.jsonl_source import JsonlSource
from connectors.paths import file_path


class FileConnector:
    """Opens one file scheme's source (and sink, when it has one) from a URI."""

    def __init__(self, source_cls: type[Source], sink_cls: type[Sink] | None = None) -> None:
        self._source_cls = source_cls
        self._sink_cls = sink_cls

    @staticmethod
    def _path(uri: str) -> str:
        return file_path(uri.split(":", 1)[1])

    def open_source(
        self, uri: str, *, batch_size: int, max_latency_ms: float, position: dict | None, **options: Any
    ) -> Source:
        return self._source_cls(
            self._path(uri), batch_size=batch_size, max_latency_ms=max_latency_ms, position=position, **options
        )

    def open_sink(self, uri: str, **options: Any) -> Sink:
        if self._sink_cls is None:
            raise ValueError(f"{uri.split(':', 1)[0]!r} files can be read, not written")
        rest = uri.split(":", 1)[1]
        return self._sink_cls(rest if rest == "-" else file_path(rest), **options)


CSV = FileConnector(CsvSource)
JSONL = FileConnector(JsonlSource, JsonlSink)
NPY = FileConnector(NpySource)
NPZ = FileConnector(NpzSource)
