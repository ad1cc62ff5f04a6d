"""An example streammas connector plug-in.

* ``synth:`` a synthetic stream whose mean jumps every ``regime`` samples, e.g.
  ``synth:?features=8&samples=10000&regime=2000&seed=0`` (finite with ``samples``, endless without);
  resumable: its position is the index of the next sample, and sample ``i`` is the same on every run.
* ``null:`` a sink that only counts what it is given (for measuring a pipeline without output cost).

A connector is any object with ``open_source(uri, *, batch_size, max_latency_ms, position, **options)``
and/or ``open_sink(uri, **options)``; ``pyproject.toml`` names it in the entry-point group
``streammas.connectors`` under the URI scheme it serves.

>>> source = synth.open_source("synth:?features=3&samples=5", batch_size=2, max_latency_ms=50, position=None)
>>> [len(b) for b in source], source.position
([2, 2, 1], {'index': 5})
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl

import numpy as np

from connectors.base import Batch, Sink
from connectors.batching import BatchingSource

_BLOCK = 256


class SynthSource(BatchingSource):
    """Gaussian samples whose mean moves to another of three levels every ``regime`` samples."""

    def __init__(
        self,
        *,
        features: int = 8,
        samples: int | None = None,
        regime: int = 2000,
        seed: int = 0,
        position: dict | None = None,
        batch_size: int = 32,
        max_latency_ms: float = 50.0,
    ) -> None:
        super().__init__("synth", batch_size=batch_size, max_latency_ms=max_latency_ms)
        self.features, self.samples, self.regime, self.seed = features, samples, regime, seed
        self._index = int(position["index"]) if position else 0

    def _samples(self, start: int, stop: int) -> np.ndarray:
        """Samples ``start`` to ``stop`` (deterministic: generated per block of 256 from the seed)."""
        out = []
        for block in range(start // _BLOCK, (stop - 1) // _BLOCK + 1):
            rng = np.random.default_rng([self.seed, block])
            noise = rng.standard_normal((_BLOCK, self.features), dtype=np.float32)
            lo, hi = max(start, block * _BLOCK), min(stop, (block + 1) * _BLOCK)
            out.append(noise[lo - block * _BLOCK : hi - block * _BLOCK])
        x = np.concatenate(out)
        level = (np.arange(start, stop) // self.regime) % 3 * 2.0
        return np.ascontiguousarray(x + level[:, None].astype(np.float32))

    def _fill(self, until: float | None) -> None:
        n = self._batcher.room
        if self.samples is not None:
            n = min(n, self.samples - self._index)
        if n > 0:
            self._push(self._samples(self._index, self._index + n))
            self._index += n
        if self.samples is not None and self._index >= self.samples:
            self._exhausted = True

    def _reader_position(self) -> dict:
        return {"index": self._index}


class NullSink(Sink):
    """Counts samples and batches, keeps nothing."""

    def __init__(self) -> None:
        self.samples = 0
        self.batches = 0

    def write(self, batch: Batch, scores: np.ndarray, extra: dict | None = None) -> None:
        self.samples += len(batch)
        self.batches += 1

    def close(self) -> None:
        pass


def _query(uri: str) -> dict[str, str]:
    return dict(parse_qsl(uri.partition("?")[2]))


class _Synth:
    @staticmethod
    def open_source(
        uri: str, *, batch_size: int, max_latency_ms: float, position: dict | None, **options: Any
    ) -> SynthSource:
        query = {k: int(v) for k, v in _query(uri).items()}
        return SynthSource(
            batch_size=batch_size, max_latency_ms=max_latency_ms, position=position, **{**query, **options}
        )


class _Null:
    @staticmethod
    def open_sink(uri: str, **options: Any) -> NullSink:
        return NullSink()


synth = _Synth()
null = _Null()
