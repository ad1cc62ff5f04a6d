"""The contracts every connector keeps: :class:`Batch`, :class:`Source` and :class:`Sink`.

A source yields micro-batches of samples; a sink takes each batch back with one score per sample.
Sources are not thread-safe: one consumer calls ``read`` (reading ``counters`` from another thread is
fine). Nothing here imports ZeroMQ or touches a file. Connectors are opened by URI with
:func:`connectors.registry.open_source` and :func:`connectors.registry.open_sink`, which import a
connector only when a URI asks for it.

In a data-parallel run each worker opens its own source with ``shard=(rank, world_size)``, and the
workers' sources together yield each sample once. A connector says it can split its input by naming
``rank`` and ``world_size`` in its ``open_source`` (see :class:`connectors.registry.Connector`); one that
does not is run by a single worker. A split source's positions resume its own part only, and say which
part it is (the built-in file sources: ``"shard": [rank, world_size]``).

A source fed by a broker that keeps what it delivered until told (a Redis Streams consumer group) must
not acknowledge input before a checkpoint that covers it is on disk: the service calls
:meth:`Source.commit` with the position a checkpoint just written records (in a group, every worker with
its own, once rank 0's write succeeded). The default does nothing.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np

#: How long one ``read`` inside ``for batch in source`` waits before checking ``finished`` again.
ITERATION_POLL_S = 0.5


@dataclass
class Batch:
    """A micro-batch: samples, their optional labels, and the source's position after this batch.

    ``len(batch)`` is the number of samples ``B``.

    Parameters
    ----------
    x : numpy.ndarray
        The samples, of shape ``[B, ...]`` (float32, C-contiguous).
    y : numpy.ndarray or None, default None
        Optional labels, of shape ``[B]``.
    position : dict or None, default None
        The source's position after this batch (JSON-serialisable; hand it back to
        ``connectors.registry.open_source(uri, position=...)`` to resume right after this batch).

    Examples
    --------
    >>> b = Batch(np.zeros((3, 2), dtype=np.float32), y=np.array([0, 1, 0]))
    >>> len(b), b.x.shape, b.y.tolist(), b.position
    (3, (3, 2), [0, 1, 0], None)
    """

    x: np.ndarray
    y: np.ndarray | None = None
    position: dict | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


class Source(abc.ABC):
    """Where samples come from: an iterable of :class:`Batch` that can be read with a timeout.

    Subclasses implement :meth:`read` and :meth:`close`; most build on
    :class:`connectors.batching.BatchingSource`, which adds micro-batching, counters and positions.
    Iteration ends when a finite source is exhausted; an endless source (ZeroMQ, a followed file)
    iterates until closed from the loop body or interrupted. :attr:`finite` tells the two apart before
    reading: ``False`` (the default) for a stream that may never end, ``True`` for one that will (the
    file sources, CSV, JSON Lines, ``.npy`` and ``.npz``, unless they follow their files).

    Examples
    --------
    >>> class Three(Source):
    ...     def __init__(self):
    ...         self.left = 3
    ...     def read(self, timeout=None):
    ...         if not self.left:
    ...             return None
    ...         self.left -= 1
    ...         return Batch(np.full((1, 2), self.left, dtype=np.float32))
    ...     @property
    ...     def finished(self):
    ...         return self.left == 0
    ...     def close(self):
    ...         pass
    >>> with Three() as source:
    ...     [float(b.x[0, 0]) for b in source]
    [2.0, 1.0, 0.0]
    >>> source.finite  # the default: nothing promises that a source ends
    False
    >>> source.drain(timeout=1.0)  # the default: nothing held back at a stop
    []
    >>> source.commit({"row": 3})  # the default: nothing to acknowledge
    """

    #: Whether the source will end (and ``finished`` become true): a file not followed. ``False``, the
    #: default, for a stream that may never end (ZeroMQ, a followed file, a plug-in that does not say).
    #: Callers only read it; a subclass overrides it with a property (the file sources) or its own value.
    finite: bool = False

    @abc.abstractmethod
    def read(self, timeout: float | None = None) -> Batch | None:
        """The next micro-batch, or ``None`` if none was ready within ``timeout`` seconds (``None``: wait
        until one is, or until the source is finished). Returns within about ``timeout`` seconds."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release sockets and files. Idempotent."""

    @property
    def finished(self) -> bool:
        """True once a finite source is exhausted; never true for an endless one."""
        return False

    def drain(self, timeout: float) -> Iterable[Batch]:
        """The samples the source already holds, as batches, for a consumer that is about to stop.

        Called once a stop was requested and before the last checkpoint, so that input already taken
        from the producers is learned rather than lost. Gives its batches within about ``timeout`` seconds
        (best lazily, a batch at a time, so that memory stays bounded and the consumer's learning counts
        against the same time); what the source still holds then is not given, and a source that can
        count it says so in its counters (``dropped_at_shutdown``). The default holds nothing back: ``[]``.
        ``read`` may still be called afterwards.
        """
        return []

    def forget_sample_shape(self) -> None:
        """Let the next samples fix the stream's sample shape again, where the first samples fixed it (not a
        configured one): the consumer could not use that shape (a model too large for it), and the stream
        must go on. The default keeps no shape: nothing to do."""
        return None

    def commit(self, position: dict | None) -> None:
        """A checkpoint that records ``position`` (one this source gave out) is now on disk.

        Everything up to ``position`` is learned for good: a source whose broker redelivers what was not
        acknowledged (Redis Streams) acknowledges it now, and only now, so that a crash at any moment
        neither loses input nor learns it twice. Called between batches, by the thread that reads; must
        not raise for a broker that is away (keep what is left to acknowledge for the next call). The
        default does nothing: a file is read again from the position, a socket cannot be told.
        """
        return None

    @property
    def counters(self) -> Mapping[str, int]:
        """At least ``samples``, ``batches`` and ``rejected:<reason>`` per reason seen."""
        return {"samples": 0, "batches": 0}

    @property
    def position(self) -> dict | None:
        """Where the source stands after the last batch returned (``None``: not resumable)."""
        return None

    def __iter__(self) -> Iterator[Batch]:
        while True:
            batch = self.read(timeout=ITERATION_POLL_S)
            if batch is not None:
                yield batch
            elif self.finished:
                return

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Sink(abc.ABC):
    """Where results go: one record per sample, carrying its score and anything in ``extra``.

    ``extra`` maps names to values: a numpy array whose first dimension is the batch size is split per
    sample; any other JSON-serialisable value belongs to the batch and is attached once, to its last
    record (an event such as a consolidation happens after the batch that caused it).

    Examples
    --------
    >>> class Collect(Sink):
    ...     def __init__(self):
    ...         self.scores = []
    ...     def write(self, batch, scores, extra=None):
    ...         self.scores.extend(np.asarray(scores).tolist())
    ...     def close(self):
    ...         pass
    >>> with Collect() as sink:
    ...     sink.write(Batch(np.zeros((2, 1), dtype=np.float32)), np.array([0.5, 1.5]))
    >>> sink.scores
    [0.5, 1.5]
    """

    @abc.abstractmethod
    def write(self, batch: Batch, scores: np.ndarray, extra: dict | None = None) -> None:
        """Emit one record per sample of ``batch``: ``scores[k]`` plus ``extra`` (see the class doc)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Flush and release. Idempotent."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

