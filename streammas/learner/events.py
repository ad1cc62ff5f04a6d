"""What a learner noticed, as events: kept in a bounded history and handed to the user's callback."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    """Something the learner noticed, at a step and a count of samples seen.

    A ``plateau``, a ``peak``, a ``consolidation``, a ``skipped_update``, ``rejected`` input or a ``recovered``
    model.

    Parameters
    ----------
    kind : str
        What was noticed, one of the kinds above.
    step : int
        The learner's step when it was noticed.
    samples_seen : int
        The count of samples seen by then.
    value : float or None, default None
        A number that goes with it, if any.

    Examples
    --------
    >>> Event("plateau", step=120, samples_seen=3840, value=0.02).as_dict()["kind"]
    'plateau'
    """

    kind: str
    step: int
    samples_seen: int
    value: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class EventLog:
    """The last ``maxlen`` events as plain dicts (what a checkpoint stores), and a callback for each new one.

    The learner's clock (its steps and samples seen) is read through ``clock`` when an event is emitted, so
    the parts that emit events need not know it.

    Parameters
    ----------
    maxlen : int
        How many events the history keeps, the last ones.
    clock : callable
        Returns the learner's clock, ``(step, samples_seen)``; read when an event is emitted.
    callback : callable or None, default None
        Called with each new :class:`Event`.

    Examples
    --------
    >>> log = EventLog(maxlen=2, clock=lambda: (5, 160))
    >>> for kind in ("plateau", "peak", "consolidation"):
    ...     log.emit(kind)
    >>> [e["kind"] for e in log]
    ['peak', 'consolidation']
    """

    def __init__(self, maxlen: int, clock: Callable[[], tuple[int, int]],
                 callback: Callable[[Event], None] | None = None) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._clock = clock
        self.callback = callback

    def emit(self, kind: str, value: float | None = None) -> None:
        step, samples_seen = self._clock()
        event = Event(kind, step, samples_seen, value)
        self._events.append(event.as_dict())
        if self.callback is not None:
            self.callback(event)

    def __iter__(self):
        return iter(self._events)

    def __len__(self) -> int:
        return len(self._events)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._events[index]

    def replace(self, events: Iterable[dict[str, Any]]) -> None:
        """Put a saved history back (from a state dict)."""
        self._events.clear()
        self._events.extend(events)
