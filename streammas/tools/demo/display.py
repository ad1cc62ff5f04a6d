"""The demo's progress while the service learns: a bar on a terminal, else one line per regime segment."""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from streammas.service.progress import close_bar, make_bar, want_bar
from streammas.tools.demo.report import LETTERS, segment_of


class Display:
    """A bar on a terminal; otherwise one line per regime segment, once the segment is learned."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.total = len(stream.x)
        self._segment = 0
        self._bar = None
        if want_bar("auto", True):
            with contextlib.suppress(ImportError):
                self._bar = make_bar(total=self.total, description="learning")

    def update(self, learned: int, consolidated: list[int]) -> None:
        """``consolidated``: the samples seen at each consolidation so far."""
        if self._bar is not None:
            self._bar.set_postfix(regime=self._regime(learned), consolidations=len(consolidated), refresh=False)
            self._bar.update(learned - self._bar.n)
            return
        segments = self.stream.segments
        # The last segment waits for close(): its last consolidation may be recorded after its last sample.
        while self._segment < len(segments) - 1 and learned >= segments[self._segment][1]:
            self._line(consolidated)

    def _line(self, consolidated: list[int]) -> None:
        # Polled every 0.1 s, ``learned`` may be hundreds of samples into the next segment, with a consolidation
        # there already: count those of this segment and before, placed as the report places them.
        index = self._segment
        start, end, r = self.stream.segments[index]
        so_far = sum(1 for at in consolidated if segment_of(at, self.stream.segments) <= index)
        print(f"  segment {index + 1}/{len(self.stream.segments)} learned: regime {LETTERS[r]} "
              f"({self.stream.regime_names[r]}), samples {start}-{end}, consolidations so far {so_far}",
              file=sys.stderr, flush=True)
        self._segment += 1

    def _regime(self, learned: int) -> str:
        return LETTERS[self.stream.segments[segment_of(learned, self.stream.segments)][2]]

    def close(self, learned: int, consolidated: list[int]) -> None:
        """The lines still due, once the service has stopped and its history is complete."""
        if self._bar is not None:
            close_bar(self._bar)
            self._bar = None
            return
        while self._segment < len(self.stream.segments) and learned >= self.stream.segments[self._segment][1]:
            self._line(consolidated)
