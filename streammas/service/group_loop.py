"""The loop of one worker of a data-parallel group: the single-process :class:`~streammas.service.loop.Loop`,
moving in step with the other workers.

Each turn a worker reads at most one batch of its shard, then the workers agree (:meth:`Peers.agree`) and act
alike: all learn when any has rows (an empty batch where a worker has none), all checkpoint when any was
asked to or rank 0's policy says so, all stop when any was asked to, and all finish when every source is
finished. A worker whose source is idle still takes part every turn, at most ``READ_TIMEOUT`` apart, so no
worker waits on another longer than that; while rows flow, reads do not wait at all. An error inside a step
(a peer gone) fails the worker, and the launcher restarts the group from its newest checkpoint; an error of
a worker's source stops the whole group in the same turn.

In the averaging mode (``[distributed] mode = "average"``), once the learner exists, the workers agree once per
*round* instead: each takes ``average_every`` local steps (an empty one where it has no batch), which is the
learner's averaging period, and then they agree as above, so the agreement costs once per period too.

:class:`GroupLoop` wraps the worker's :class:`~streammas.service.loop.Loop`: the loop learns, counts and drains,
the wrapper decides the turns. It knows the group through :class:`Peers`
(:class:`~streammas.service.group.Group` is one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from connectors.base import Batch
from streammas.service import logs
from streammas.service.errors import ServiceError
from streammas.service.loop import READ_TIMEOUT, Loop, Outcome
from streammas.service.telemetry import Tally

if TYPE_CHECKING:
    from streammas.collective import DistributedContext

log = logging.getLogger("streammas.service")


@dataclass
class Turn:
    """What the workers agreed on for one turn of the loop.

    Examples
    --------
    >>> Turn(counts=[3, 0], stop=False, checkpoint=True, finished=False).rows
    3
    """

    counts: list[int]
    stop: bool
    checkpoint: bool
    finished: bool
    failed: list[int] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(self.counts)


class Peers(Protocol):
    """What the group loop needs of the worker's group."""

    ctx: DistributedContext
    #: Set when this worker left a turn half-way (an error): no collective can meet any more.
    broken: bool

    @property
    def is_main(self) -> bool: ...

    def received(self, tally: Tally) -> int: ...

    def agree(self, rows: int, stop: bool, checkpoint: bool, finished: bool, due: bool,
              failed: bool = False) -> Turn: ...

    def sample_shape(self, batch: Batch | None) -> tuple[int, ...]: ...


class GroupLoop:
    """A worker's :class:`~streammas.service.loop.Loop`, in step with the other workers (see the module's
    docstring).

    Parameters
    ----------
    loop : Loop
        This worker's loop, over its own source, sink and counts.
    group : Peers
        The other workers.

    Examples
    --------
    Made by a service started with ``distributed=`` (:meth:`Group.run <streammas.service.group.Group.run>`);
    in prose::

        outcome = GroupLoop(loop, group).run()  # returns on every worker in the same turn: stopped, or every
                                                # source finished
    """

    def __init__(self, loop: Loop, group: Peers) -> None:
        self.loop = loop
        self.group = group
        self._turns = 0
        self._every = 1
        self._finite = False

    def run(self) -> Outcome:
        """Loop in step until stopped or every source is finished. An error in the middle of a turn marks the
        group broken (no collective can meet any more); one other than a :class:`ServiceError` is handed back
        in the outcome, to be raised once the service has shut down without a checkpoint, so that the
        launcher restarts the group from its newest one."""
        loop = self.loop
        try:
            self._run()
        except ServiceError as e:
            logs.log_event(log, "error", logging.ERROR, msg=str(e))
            loop.exit_code = 2
            self.group.broken = True
        except Exception as e:
            self.group.broken = True
            log.error("worker %d stopped on an error (%s: %s); the group restarts from its newest checkpoint",
                      self.group.ctx.rank, type(e).__name__, e)
            loop.fail(f"{type(e).__name__}: {e}", 1)
            return loop.outcome(error=e)
        return loop.outcome()

    def _run(self) -> None:
        loop, group = self.loop, self.group
        source = loop.ports.source
        progress = loop.begin(finite=False)
        self._every = loop.ports.config.metrics.every_batches
        # A file not followed always has its next batch at hand: waiting for it keeps the workers' batches in
        # the same turns (the union batch is then the one a single worker would read); a live source is read
        # without waiting while rows flow, so that a quiet worker does not hold the others back.
        self._finite = bool(getattr(source, "finite", False))
        self._turns = 0
        busy = False
        averaging = group.ctx.mode == "average"
        while True:
            loop.ports.between_batches()
            if averaging and loop.learner is not None:
                turn, busy = self._round(busy)
            else:
                turn, busy = self._turn(busy)
            if turn.stop:
                if loop.stop_reason is None:
                    loop.reason = f"worker {turn.failed[0]} failed" if turn.failed else "a worker was asked to stop"
                if not turn.failed:  # the same on every worker: all drain, or none
                    loop.drain(self._in_step)
                break
            if turn.finished and not turn.rows:
                logs.log_event(log, "source_finished", samples=loop.ports.tally.received)
                loop.reason = "source finished"
                break
            progress.tick()

    def _read(self, busy: bool, timeout: float = READ_TIMEOUT) -> tuple[Batch | None, bool]:
        """This worker's next batch (or ``None``), and whether its source failed (the failure is logged and kept
        for the turn's agreement, so that the whole group stops together with its final checkpoint)."""
        try:
            return self.loop.ports.source.read(timeout=0.0 if busy and not self._finite else timeout), False
        except Exception as e:
            self._failed(e)
            return None, True

    def _agree(self, rows: int, finished: bool, failed: bool) -> Turn:
        """The group's agreement on what it does next, then the checkpoint it agreed on (the state as of the
        last step, as a single service checkpoints after its batch)."""
        loop, group = self.loop, self.group
        control = loop.control
        stop, asked = control.stop.is_set(), control.checkpoint_now.is_set()
        control.checkpoint_now.clear()
        policy = None
        if loop.learner is not None and group.is_main and not failed:
            try:
                policy = loop.ports.policy.due(loop.learner.samples_seen, group.received(loop.ports.tally))
            except Exception as e:  # the state directory was taken: this worker stops the group
                failed = True
                self._failed(e)
        turn = group.agree(rows=rows, stop=stop, checkpoint=asked, finished=finished, due=policy is not None,
                           failed=failed)
        if turn.checkpoint:
            if turn.stop:  # the shutdown checkpoint follows, after the drain: one checkpoint, and named so
                control.checkpoint_now.set()
            else:
                loop.ports.checkpoint(policy or "signal")
        return turn

    def _turn(self, busy: bool) -> tuple[Turn, bool]:
        """One turn in step with the others: read at most one batch, agree, then all learn when any has rows
        (the exact mode's step, whose collectives need every worker; and the turn that makes the learner)."""
        # read even when asked to stop: another worker, signalled a moment later, reads its batch of this
        # turn, and the group learns both before it stops (the union batch stays the one of one worker)
        batch, failed = self._read(busy)
        turn = self._agree(len(batch) if batch is not None else 0,
                           batch is None and bool(self.loop.ports.source.finished), failed)
        busy = turn.rows > 0
        if busy:
            self.step(batch)
            self._stepped(len(batch) if batch is not None else 0)
        elif self.loop.stale:
            self.loop.ports.refresh()
        return turn, busy

    def _round(self, busy: bool) -> tuple[Turn, bool]:
        """The averaging mode: ``average_every`` local steps (the learner's period, an empty one where this
        worker has no batch), then one agreement. A quiet round takes at most ``READ_TIMEOUT`` seconds."""
        loop = self.loop
        every = self.group.ctx.average_every
        loop.learner.flush()  # start the period with the round (nothing to do when no step is pending)
        rows, failed, batch = 0, False, None
        for _ in range(every):
            batch = None
            if not failed:
                batch, failed = self._read(busy, READ_TIMEOUT / every)
            self.step(batch)
            if batch is not None and len(batch):
                rows += len(batch)
                self._stepped(len(batch))
        finished = not failed and batch is None and bool(loop.ports.source.finished)
        turn = self._agree(rows, finished, failed)
        if not turn.rows and loop.stale:
            loop.ports.refresh()
        return turn, turn.rows > 0

    def _stepped(self, rows: int) -> None:
        loop = self.loop
        self._turns += 1
        if self._turns % self._every == 0 or loop.progress.status_due():
            loop.ports.refresh()
        loop.progress.update(rows, loop.ports.telemetry.status)

    def _failed(self, error: Exception) -> None:
        if isinstance(error, ServiceError):
            logs.log_event(log, "error", logging.ERROR, msg=str(error))
            code = 2
        else:
            log.error("the source failed: %s: %s", type(error).__name__, error, exc_info=True)
            code = 1
        self.loop.fail(f"{type(error).__name__}: {error}", code)

    def step(self, batch: Batch | None) -> None:
        """One learning step of the group: this worker's rows, or none."""
        loop = self.loop
        if loop.learner is None:
            shape = self.group.sample_shape(batch)
            # the group's shape, for a worker that has no row of its own yet; every worker builds the same
            # model, so a refused one is refused by all, each counting its own rows
            mine = batch if batch is not None else self._empty_batch(shape)
            learner = loop.make_learner(mine, shape)
            if learner is None:
                return
            learner.adopt_sample_shape(shape)
        if batch is None or len(batch) == 0:
            batch = self._empty_batch()
        loop.learn(batch, in_step=True)

    def _empty_batch(self, shape: tuple[int, ...] | None = None) -> Batch:
        """A batch of no rows, for a worker without data in a step where others have some."""
        loop = self.loop
        shape = shape if shape is not None else loop.learner.sample_shape
        assert shape is not None
        labels = np.zeros(0, np.int64) if loop.ports.config.learner.objective == "classification" else None
        return Batch(np.zeros((0, *shape), np.float32), labels, position=loop.position)

    def _in_step(self, batches: Iterator[Batch]) -> int:
        """Learn the drained batches in step, a turn per batch, until no worker has one left (each worker's
        drain ends on its own clock, so the group's ends within the drain's time and one turn)."""
        group = self.group
        learned = 0
        while True:
            mine = next(batches, None)
            rows = len(mine) if mine is not None else 0
            turn = group.agree(rows=rows, stop=True, checkpoint=False, finished=False, due=False)
            if not turn.rows:
                return learned
            self.step(mine)
            learned += rows
