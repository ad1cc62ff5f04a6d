"""Micro-batching: samples arrive in pieces of any size and leave in batches of at most ``batch_size``,
flushed early once the oldest waiting sample has waited ``max_latency_ms``.

:class:`BatchingSource` is the base of every built-in source (and a convenient one for plug-ins): a
subclass only says how to pull input (``_fill``) and where it stands (``_reader_position``); reading
with a timeout, the latency flush, counters, positions, iteration and closing are done here.
"""

from __future__ import annotations

import abc
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from connectors.base import Batch, Source
from connectors.counters import Counters, Reject

_log = logging.getLogger(__name__)


class _Chunk:
    __slots__ = ("x", "y", "arrival", "start", "end", "taken", "group")

    def __init__(self, x, y, arrival, start, end, group) -> None:
        self.x, self.y, self.arrival, self.start, self.end, self.group = x, y, arrival, start, end, group
        self.taken = 0


def skip_position(start: dict | None, taken: int) -> dict | None:
    """The position ``taken`` samples into a piece of input that began at ``start``: ``start`` with its
    ``"skip"`` (samples of that piece already delivered) raised by ``taken``.

    >>> skip_position({"offset": 10}, 3)
    {'offset': 10, 'skip': 3}
    """
    if start is None:
        return None
    return {**start, "skip": int(start.get("skip", 0)) + taken}


class MicroBatcher:
    """A FIFO of sample chunks cut into batches of at most ``batch_size`` samples.

    A batch never mixes labelled and unlabelled samples, nor chunks on either side of a :meth:`seal`
    (a source seals when it moves to another file): such a change ends the batch early. A chunk taken
    whole is handed on without a copy; a batch made of several chunks is one ``np.concatenate``.

    Chunks may carry positions: ``end``, where the input stands after the chunk, and ``start``, before
    it. A batch that ends on a chunk's end gets its ``end``; one that ends inside a chunk gets
    :func:`skip_position` of its ``start`` (``None`` when the chunk has no ``start``).

    Parameters
    ----------
    batch_size : int
        The most samples in a batch (at least 1).
    max_latency_s : float
        How long the oldest waiting sample may wait, in seconds, before a batch is due (:attr:`deadline`).
    clock : callable, default time.monotonic
        The clock that stamps each chunk's arrival.

    Attributes
    ----------
    pending : int
        Samples waiting to be taken.

    Examples
    --------
    >>> mb = MicroBatcher(batch_size=4, max_latency_s=0.05, clock=lambda: 10.0)
    >>> mb.add(np.arange(6, dtype=np.float32).reshape(3, 2), end={"row": 3})
    >>> mb.ready, mb.pending, mb.deadline
    (False, 3, 10.05)
    >>> mb.add(np.full((2, 2), 9, dtype=np.float32), start={"row": 3}, end={"row": 5})
    >>> x, y, position = mb.take()
    >>> x[:, 0].tolist(), y, position, mb.pending
    ([0.0, 2.0, 4.0, 9.0], None, {'row': 3, 'skip': 1}, 1)
    """

    def __init__(self, batch_size: int, max_latency_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_latency_s < 0:
            raise ValueError(f"max_latency must be >= 0, got {max_latency_s}")
        self.batch_size = int(batch_size)
        self.max_latency_s = float(max_latency_s)
        self._clock = clock
        self._chunks: deque[_Chunk] = deque()
        self._group = 0
        self._sealed = False
        self.pending = 0

    @property
    def room(self) -> int:
        """Samples that still fit in the batch being filled."""
        return max(0, self.batch_size - self.pending)

    @property
    def ready(self) -> bool:
        """A full batch can be cut (enough samples, or the first chunks form a complete group)."""
        chunks = self._chunks
        return self.pending >= self.batch_size or (bool(chunks) and chunks[0].group != chunks[-1].group)

    @property
    def deadline(self) -> float | None:
        """When the oldest waiting sample has waited ``max_latency_s`` (``None`` when nothing waits)."""
        return self._chunks[0].arrival + self.max_latency_s if self._chunks else None

    def seal(self) -> None:
        """End the current group: the next chunk starts a new batch."""
        self._sealed = True

    def add(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        *,
        start: dict | None = None,
        end: dict | None = None,
    ) -> None:
        n = x.shape[0]
        if n == 0:
            return
        if self._chunks and (self._sealed or (self._chunks[-1].y is None) != (y is None)):
            self._group += 1
        self._sealed = False
        self._chunks.append(_Chunk(x, y, self._clock(), start, end, self._group))
        self.pending += n

    def take(self) -> tuple[np.ndarray, np.ndarray | None, dict | None]:
        """Cut the next batch: ``(x, y, position)`` (see the class docstring for ``position``)."""
        if not self._chunks:
            raise IndexError("take from an empty batcher")
        need = self.batch_size
        group = self._chunks[0].group
        labelled = self._chunks[0].y is not None
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        position: dict | None = None
        while need and self._chunks and self._chunks[0].group == group:
            chunk = self._chunks[0]
            n = chunk.x.shape[0]
            if n <= need:
                self._chunks.popleft()
                xs.append(chunk.x)
                if labelled:
                    ys.append(chunk.y)
                need -= n
                position = chunk.end
            else:
                xs.append(chunk.x[:need])
                chunk.x = chunk.x[need:]
                if labelled:
                    ys.append(chunk.y[:need])
                    chunk.y = chunk.y[need:]
                chunk.taken += need
                position = skip_position(chunk.start, chunk.taken)
                need = 0
        self.pending -= self.batch_size - need
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        y = None if not labelled else ys[0] if len(ys) == 1 else np.concatenate(ys)
        return x, y, position

    def clear(self) -> None:
        self._chunks.clear()
        self.pending = 0


class BatchingSource(Source):
    """Base class for sources that pull input piece by piece and hand it out in micro-batches.

    Subclasses implement ``_fill(until)``, which moves the input available now into the batcher with
    :meth:`_push` (counting bad input with :meth:`_reject`) until the batcher is ``ready``, and returns
    as soon as no more is available; only when nothing at all was available does it wait for input, up
    to the monotonic time ``until`` (``None``: as long as it takes). At the end of a finite input it
    sets ``self._exhausted = True``. ``_release()`` frees resources on :meth:`close`.

    A resumable source implements ``_reader_position()`` (where it stands after everything it consumed,
    rejected input included). A batch that empties the batcher gets that position; any other batch gets
    the position its last chunk carries (see :class:`MicroBatcher`), so a source either pushes no more
    than ``self._batcher.room`` samples at a time or gives its chunks ``start``/``end`` positions.

    Parameters
    ----------
    name : str
        The source's name, in its log lines and its ``repr``.
    batch_size : int, default 32
        The most samples in a batch.
    max_latency_ms : float, default 50.0
        A batch is flushed early once its oldest sample has waited this long, in milliseconds.
    logger : logging.Logger or None, default None
        Where rejected input is logged (``None``: this module's logger).
    counter_keys : tuple of str, default ()
        Counters the source keeps besides ``samples`` and ``batches``.

    Examples
    --------
    >>> class Count(BatchingSource):
    ...     def __init__(self, n, **kw):
    ...         super().__init__("count", **kw)
    ...         self.n, self.i = n, 0
    ...     def _fill(self, until):
    ...         k = min(self._batcher.room, self.n - self.i)
    ...         self._push(np.arange(self.i, self.i + k, dtype=np.float32)[:, None])
    ...         self.i += k
    ...         self._exhausted = self.i == self.n
    ...     def _reader_position(self):
    ...         return {"i": self.i}
    >>> with Count(5, batch_size=2) as src:
    ...     [(b.x[:, 0].tolist(), b.position) for b in src]
    [([0.0, 1.0], {'i': 2}), ([2.0, 3.0], {'i': 4}), ([4.0], {'i': 5})]
    >>> src.counters["samples"], src.finished
    (5, True)
    """

    #: Whether input given out but never learned comes again after a restart without a position (a broker that
    #: redelivers what was not acknowledged, as MQTT at QoS 1 does); a resumable source reads it again anyway.
    #: A drain's leftovers of such a source are not counted as lost.
    redelivers = False

    def __init__(
        self,
        name: str,
        *,
        batch_size: int = 32,
        max_latency_ms: float = 50.0,
        logger: logging.Logger | None = None,
        counter_keys: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self._batcher = MicroBatcher(int(batch_size), float(max_latency_ms) / 1000.0)
        self._logger = logger or _log
        self._counters = Counters(self._logger, name, keys=("samples", "batches", *counter_keys))
        self._exhausted = False
        self._closed = False
        self._position: dict | None = None

    # -- hooks ---------------------------------------------------------------------------------------
    @abc.abstractmethod
    def _fill(self, until: float | None) -> None:
        """Pull input into the batcher (see the class docstring)."""

    def _reader_position(self) -> dict | None:
        """Where the reader stands after everything it consumed (``None``: not resumable)."""
        return None

    def _release(self) -> None:
        """Free sockets and files."""

    def _drain_input(self, until: float) -> bool:
        """Move into the batcher, before the monotonic time ``until``, the input that a stop would lose, until
        the batcher is ``ready``; return whether the input is quiet (nothing more is waiting). The default moves
        nothing: a file is not lost at a stop, it is read again from the last checkpoint's position."""
        return True

    def _count_queued(self) -> int:
        """Count (without decoding, at once) the input still queued at the end of a drain that will never be
        learned, in the source's counters; return its samples. The default has no such input."""
        return 0

    # -- helpers for subclasses ----------------------------------------------------------------------
    def _push(
        self,
        x: np.ndarray,
        y: np.ndarray | None = None,
        *,
        start: dict | None = None,
        end: dict | None = None,
    ) -> None:
        self._batcher.add(x, y, start=start, end=end)

    def _reject(self, error: Reject) -> None:
        self._counters.reject(error)

    # -- Source --------------------------------------------------------------------------------------
    def read(self, timeout: float | None = None) -> Batch | None:
        if self._closed:
            raise ValueError(f"read from closed source {self.name}")
        batcher = self._batcher
        clock = time.monotonic
        now = clock()
        deadline = None if timeout is None else now + max(0.0, timeout)
        tried = False
        while True:
            if batcher.pending:
                due = batcher.deadline
                if batcher.ready or self._exhausted or now >= due:
                    return self._cut()
            else:
                due = None
                if self._exhausted:
                    return None
            if tried and deadline is not None and now >= deadline:
                return None
            until = deadline if due is None else due if deadline is None else min(due, deadline)
            self._fill(until)
            tried = True
            now = clock()

    def drain(self, timeout: float) -> Iterator[Batch]:
        """The samples the source holds at a stop, as batches of at most ``batch_size``, made as they are
        taken (so that at most a batch is held at a time) for ``timeout`` seconds from the call; then what is
        still held is counted as ``dropped_at_shutdown`` (samples of a source that cannot read them again).

        The batches count as read (``samples``, ``batches``, ``position``), as those of :meth:`read` do.
        A consumer that learns each batch before taking the next is done within ``timeout`` plus one batch.
        """
        if self._closed:
            return
        until = time.monotonic() + max(0.0, timeout)
        batcher = self._batcher
        quiet = False
        while time.monotonic() < until:
            if not batcher.ready:
                quiet = self._drain_input(until)
            if batcher.ready or quiet and batcher.pending:
                yield self._cut()
            elif quiet:
                return
        left = self._count_queued()
        if self._reader_position() is None and not self.redelivers and batcher.pending:
            left += batcher.pending
            self._counters.add("dropped_at_shutdown", batcher.pending)
            batcher.clear()
        if left:
            self._logger.warning("%s: %d samples still held at shutdown were not learned (the drain's %.3g s "
                                 "were up)", self.name, left, timeout)

    def _cut(self) -> Batch:
        x, y, position = self._batcher.take()
        if not self._batcher.pending:
            position = self._reader_position()
        self._position = position
        counts = self._counters.counts
        counts["samples"] += x.shape[0]
        counts["batches"] += 1
        return Batch(x, y, position)

    @property
    def finished(self) -> bool:
        return self._exhausted and not self._batcher.pending

    @property
    def counters(self) -> Mapping[str, int]:
        return self._counters.snapshot()

    @property
    def reject_examples(self) -> dict[str, str]:
        """The first reject's detail for each reason (what the log said first), to sum up why input was skipped."""
        return dict(self._counters.examples)

    @property
    def position(self) -> dict | None:
        if not self._closed and not self._batcher.pending:
            return self._reader_position()
        return self._position

    def close(self) -> None:
        if self._closed:
            return
        self._position = self.position
        self._closed = True
        self._batcher.clear()
        self._release()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
