"""The JSON Lines source: one JSON sample, or a list of samples, per line (the wire format's JSON form)."""

from __future__ import annotations

import json

from connectors.counters import Reject
from connectors.lines import LineCursor
from connectors.samples import SampleShape, json_samples
from connectors.text import LineSource, lines_detail


class JsonlSource(LineSource):
    """Samples from JSON Lines files, one sample or several per line.

    Each line is ``{"x": sample}`` / ``{"x": sample, "y": label}``, a bare ``sample`` list, or several
    samples ``{"x": [sample, ...], "y": [label, ...]}``. A line holding several samples may straddle two
    batches: the position then counts the samples of that line already delivered (``"skip"``).

    Parameters
    ----------
    path : str
        A ``.jsonl`` file, a directory of them or a glob; files are read in name order.
    sample_shape : list of int or None, default None
        Fixes the samples' shape (``None``: the first accepted line does; see
        :func:`connectors.samples.json_samples`).
    shape_origin : {"configured", "checkpoint"}, default "configured"
        Where ``sample_shape`` came from, as the message about a line of another shape says.
    **kwargs
        :class:`~connectors.text.LineSource`'s keyword arguments: ``batch_size``, ``max_latency_ms``,
        ``position``, ``follow``, ``poll_interval``, ``max_line_bytes``, ``name``, ``shard`` (line ``i``
        is worker ``i % world_size``'s, all the samples it holds).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = pathlib.Path(d, "data.jsonl")
    ...     _ = path.write_text('{"x": [1, 2], "y": 0}\\nnot json\\n{"x": [3, 4], "y": 1}\\n')
    ...     with JsonlSource(str(path), batch_size=8) as src:
    ...         batch = src.read()
    >>> batch.x.tolist(), batch.y.tolist(), src.counters["rejected:json"]
    ([[1.0, 2.0], [3.0, 4.0]], [0, 1], 1)
    """

    def __init__(self, path: str, *, sample_shape: list[int] | None = None, shape_origin: str = "configured",
                 **kwargs) -> None:
        self._shape = SampleShape(sample_shape, shape_origin)
        super().__init__(path, ".jsonl", **kwargs)

    def forget_sample_shape(self) -> None:
        self._shape.forget()

    def _parse(self, cursor: LineCursor, lines: list[bytes], first: int) -> None:
        ends = cursor.line_offsets(lines)
        path = cursor.path
        start = cursor.position(cursor.block_start, first - 1)
        for k, raw in enumerate(lines):
            end = cursor.position(ends[k], first + k)
            if raw.strip():
                self._parse_line(raw, first + k, path, start, end)
            start = end

    def _parse_line(self, raw: bytes, number: int, path: str, start: dict, end: dict) -> None:
        if self._skip and start.get("offset") != self._resume_offset:
            self._skip = 0  # the line a skip was saved for is gone; nothing of this one was delivered
        try:
            try:
                obj = json.loads(raw)
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                raise Reject("json", f"not JSON ({str(e)[:60]})") from None
            x, y = json_samples(obj, self._shape)
        except Reject as e:
            self._reject(Reject(e.reason, lines_detail(path, [number], e.detail), e.count))
            return
        x, y = self._drop_nonfinite(x, y, [number] * len(x), path)
        skip, self._skip = self._skip, 0
        if skip:  # resuming inside this line: its first samples were delivered before
            x, y = x[skip:], None if y is None else y[skip:]
            start = {**start, "skip": skip}
        self._push(x, y, start=start, end=end)
