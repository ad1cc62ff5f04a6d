"""What the service's loop works on and is steered by: its :class:`Ports` (the source, the sink, the counts, the
checkpoint policy, callables that make the learner and write a checkpoint), its :class:`Control` (flags set by
signals and the service) and the :class:`Outcome` it returns."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from connectors.base import Sink, Source
from streammas.config import Config
from streammas.learner import OnlineMAS
from streammas.service import logs
from streammas.service.telemetry import Tally, Telemetry

__all__ = ["CheckpointPolicy", "Control", "Outcome", "Ports"]

log = logging.getLogger("streammas.service")


class CheckpointPolicy(Protocol):
    """When a checkpoint is due (:class:`~streammas.service.checkpointing.Checkpointer` is one)."""

    def restart_clock(self) -> None: ...

    def due(self, samples_seen: int, received: int) -> str | None: ...


@dataclass(frozen=True)
class Ports:
    """What the loop works on, each part as narrow as the loop uses it (the service makes them)."""

    #: The whole configuration (the loop reads ``[source]``, ``[log]``, ``[metrics]`` and the objective).
    config: Config
    #: Open; read until stopped or finished.
    source: Source
    #: Where each sample's score goes.
    sink: Sink | None
    #: The counts the loop keeps up to date (a checkpoint carries them over).
    tally: Tally
    #: The loss windows, the status line and the rate limit on repeated warnings.
    telemetry: Telemetry
    #: Says when a checkpoint is due.
    policy: CheckpointPolicy
    #: ``checkpoint(reason)`` writes one now (in a group, every worker calls it at once).
    checkpoint: Callable[[str], object]
    #: ``make_learner(sample_shape)`` makes the learner, from the first batch when none was resumed.
    make_learner: Callable[[tuple[int, ...]], OnlineMAS]
    #: Publishes the learner's current values (the metrics and the status line).
    refresh: Callable[[], None]
    #: Called every turn: acts on the signals that arrived and tells the watchdog the service is alive.
    between_batches: Callable[[], None]
    #: ``observe_step(seconds)``: the time a batch took, for the metrics.
    observe_step: Callable[[float], None]


@dataclass(frozen=True)
class Outcome:
    """How a loop ended.

    Attributes
    ----------
    stop_reason : str or None
        Why it stopped (``None``: it did not say; the stop line reads ``error``).
    exit_code : int
        0 stopped or finished normally, 1 gave up on errors, 2 could not go on.
    position : dict or None
        The source's position after the last batch learned (what the last checkpoint records).
    error : Exception or None
        An error the caller raises again once it has shut down (a group's worker that left a turn half-way,
        so that the launcher restarts the group from its newest checkpoint).
    """

    stop_reason: str | None
    exit_code: int
    position: dict | None
    error: Exception | None = None


class Control:
    """The flags that steer a loop from other threads and signal handlers.

    Examples
    --------
    >>> control = Control()
    >>> control.request_stop("SIGTERM"); control.request_stop("SIGINT")  # the second is only logged
    >>> control.stop.is_set(), control.reason
    (True, 'SIGTERM')
    """

    def __init__(self) -> None:
        #: Set to stop after the current batch, or to checkpoint after it.
        self.stop = threading.Event()
        self.checkpoint_now = threading.Event()
        #: Why a stop was requested (the first reason given).
        self.reason: str | None = None

    def request_stop(self, reason: str = "requested") -> None:
        """Stop after the current batch: checkpoint, close, return from the loop."""
        if self.stop.is_set():
            logs.log_event(log, "stopping", reason=reason, msg="already stopping; finishing the checkpoint")
            return
        self.reason = reason
        self.stop.set()
