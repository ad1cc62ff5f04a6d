"""The loop of one worker of a data-parallel group: the single-process :class:`~streammas.service.loop.Loop`,
moving in step with the other workers.

Each turn a worker reads at most one batch of its shard, then the workers agree (:meth:`Group.agree`) and act
alike: all learn when any has rows (an empty batch where a worker has none), all checkpoint when any was
asked to or rank 0's policy says so, all stop when any was asked to, and all finish when every source is
finished. A worker whose source is idle still takes part every turn, at most ``READ_TIMEOUT`` apart, so no
worker waits on another longer than that; while rows flow, reads do not wait at all. An error inside a step
(a peer gone) fails the worker, and the launcher restarts the group from its newest checkpoint; an error of
a worker's source stops the whole group in the same turn.

In the averaging mode (``[distributed] mode = "average"``), once the learner exists, the workers agree once per
*round* instead: each takes ``average_every`` local steps (an empty one where it has no batch), which is the
learner's averaging period, and then they agree as above, so the agreement costs once per period too.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import numpy as np

from connectors.base import Batch
from streammas.service import logs
from streammas.service.errors import ServiceError
from streammas.service.loop import READ_TIMEOUT, Loop
from streammas.service.progress import Progress, want_bar

if TYPE_CHECKING:
    from streammas.service.group import Group, Turn

log = logging.getLogger("streammas.service")


class GroupLoop(Loop):
    """The service's loop as one worker of a group (see the module's docstring).

    Parameters
    ----------
    service : Service
        This worker's service; its ``group`` (:class:`~streammas.service.group.Group`) is the other workers.

    Examples
    --------
    Made by a service started with ``distributed=``; in prose::

        loop = GroupLoop(service)
        loop.run()      # returns on every worker in the same turn: stopped, or every source finished
    """

    def run(self) -> None:
        service = self.service
        group: Group = service.group
        source = service.source
        assert source is not None and group is not None
        cfg = service.config
        self.progress = Progress(bar=want_bar(cfg.log.progress, False), status_every=cfg.log.status_every_seconds,
                                 logger=log)
        service.checkpoints.restart_clock()
        self._every = cfg.metrics.every_batches
        # A file not followed always has its next batch at hand: waiting for it keeps the workers' batches in
        # the same turns (the union batch is then the one a single worker would read); a live source is read
        # without waiting while rows flow, so that a quiet worker does not hold the others back.
        self._finite = bool(getattr(source, "finite", False))
        self._turns = 0
        busy = False
        averaging = group.ctx.mode == "average"
        while True:
            service.poll_signals()
            service.notifier.watchdog()
            if averaging and service.learner is not None:
                turn, busy = self._round(busy)
            else:
                turn, busy = self._turn(busy)
            if turn.stop:
                if turn.failed and service.stop_reason is None:
                    service.stop_reason = f"worker {turn.failed[0]} failed"
                if service.stop_reason is None:
                    service.stop_reason = "a worker was asked to stop"
                if not turn.failed:  # the same on every worker: all drain, or none
                    self.drain()
                break
            if turn.finished and not turn.rows:
                logs.log_event(log, "source_finished", samples=service.tally.received)
                service.stop_reason = "source finished"
                break
            self.progress.tick()

    def _read(self, busy: bool, timeout: float = READ_TIMEOUT) -> tuple[Batch | None, bool]:
        """This worker's next batch (or ``None``), and whether its source failed (the failure is logged and kept
        for the turn's agreement, so that the whole group stops together with its final checkpoint)."""
        try:
            return self.service.source.read(timeout=0.0 if busy and not self._finite else timeout), False
        except Exception as e:
            self._failed(e)
            return None, True

    def _agree(self, rows: int, finished: bool, failed: bool) -> Turn:
        """The group's agreement on what it does next, then the checkpoint it agreed on (the state as of the
        last step, as a single service checkpoints after its batch)."""
        service = self.service
        stop, asked = self.stop.is_set(), self.checkpoint_now.is_set()
        self.checkpoint_now.clear()
        policy = None
        if service.learner is not None and service.group.is_main and not failed:
            try:
                policy = service.checkpoints.due(service.learner.samples_seen, service.group.received)
            except Exception as e:  # the state directory was taken: this worker stops the group
                failed = True
                self._failed(e)
        turn = service.group.agree(rows=rows, stop=stop, checkpoint=asked, finished=finished,
                                   due=policy is not None, failed=failed)
        if turn.checkpoint:
            if turn.stop:  # the shutdown checkpoint follows, after the drain: one checkpoint, and named so
                self.checkpoint_now.set()
            else:
                service.checkpoint(policy or "signal")
        return turn

    def _turn(self, busy: bool) -> tuple[Turn, bool]:
        """One turn in step with the others: read at most one batch, agree, then all learn when any has rows
        (the exact mode's step, whose collectives need every worker; and the turn that makes the learner)."""
        service = self.service
        # read even when asked to stop: another worker, signalled a moment later, reads its batch of this
        # turn, and the group learns both before it stops (the union batch stays the one of one worker)
        batch, failed = self._read(busy)
        turn = self._agree(len(batch) if batch is not None else 0, batch is None and bool(service.source.finished),
                           failed)
        busy = turn.rows > 0
        if busy:
            self.step(batch, turn)
            self._stepped(len(batch) if batch is not None else 0)
        elif self.stale:
            service.refresh()
        return turn, busy

    def _round(self, busy: bool) -> tuple[Turn, bool]:
        """The averaging mode: ``average_every`` local steps (the learner's period, an empty one where this
        worker has no batch), then one agreement. A quiet round takes at most ``READ_TIMEOUT`` seconds."""
        service = self.service
        learner = service.learner
        every = service.group.ctx.average_every
        if learner.averager is not None and learner.averager.pending:  # start the period with the round
            learner.flush()
        rows, failed, batch = 0, False, None
        for _ in range(every):
            batch = None
            if not failed:
                batch, failed = self._read(busy, READ_TIMEOUT / every)
            self.step(batch, None)
            if batch is not None and len(batch):
                rows += len(batch)
                self._stepped(len(batch))
        finished = not failed and batch is None and bool(service.source.finished)
        turn = self._agree(rows, finished, failed)
        if not turn.rows and self.stale:
            service.refresh()
        return turn, turn.rows > 0

    def _stepped(self, rows: int) -> None:
        self._turns += 1
        if self._turns % self._every == 0 or self.progress.status_due():
            self.service.refresh()
        self.progress.update(rows, self.service.telemetry.status)

    def _failed(self, error: Exception) -> None:
        service = self.service
        if isinstance(error, ServiceError):
            logs.log_event(log, "error", logging.ERROR, msg=str(error))
            service.exit_code = 2
        else:
            log.error("the source failed: %s: %s", type(error).__name__, error, exc_info=True)
            service.exit_code = 1
        service.stop_reason = f"{type(error).__name__}: {error}"

    def step(self, batch: Batch | None, turn: Turn | None) -> None:
        """One learning step of the group: this worker's rows, or none."""
        service = self.service
        if service.learner is None:
            shape = service.group.sample_shape(batch)
            learner = service.create_learner(shape)
            if learner.guard.sample_shape is None:  # the group's shape, for a worker that has no row of its own yet
                learner.guard.sample_shape = tuple(shape)
        if batch is None or len(batch) == 0:
            batch = service.group.empty_batch()
            if service.config.learner.objective == "classification":
                batch = Batch(batch.x, np.zeros(0, np.int64), position=batch.position)
            self.learn_rows(batch)
            return
        self.learn_rows(batch)

    def learn_rows(self, batch: Batch) -> None:
        """Learn ``batch`` (possibly empty) in step with the others; a batch with no rows changes no count."""
        service = self.service
        learner = service.learner
        assert learner is not None
        labels = batch.y if service.config.learner.objective == "classification" else None
        started = time.perf_counter()
        # No error is caught here: one in the middle of a step (a peer gone, most often) leaves the others inside
        # its collectives, so the worker fails and the launcher restarts the group from its newest checkpoint.
        scores = learner.learn_many(batch.x, labels)
        if len(batch) == 0:
            return
        service.metrics.observe_step(time.perf_counter() - started)
        tally = service.tally
        first = tally.received
        tally.received += len(batch)
        tally.batches += 1
        service.position = batch.position
        service.telemetry.losses.add(scores)
        if service.sink is not None:
            self._write_sink(batch, scores.detach().to("cpu").double().numpy(), first)

    def drain(self) -> None:
        """Learn what every worker's source already holds, in step: as many turns as the longest drain."""
        service = self.service
        group = service.group
        seconds = service.config.source.drain_seconds
        drain = getattr(service.source, "drain", None)
        batches = [b for b in drain(seconds) if len(b)] if drain is not None else []
        longest = max(n[0] for n in group.ctx.gather_ints([len(batches)]))
        for i in range(longest):
            mine = batches[i] if i < len(batches) else None
            turn = group.agree(rows=len(mine) if mine is not None else 0, stop=True, checkpoint=False,
                               finished=False, due=False)
            if turn.rows:
                self.step(mine, turn)
        left = int((getattr(service.source, "counters", {}) or {}).get("dropped_at_shutdown", 0))
        if left:
            carried = service.tally.carried_rejected
            carried["dropped_at_shutdown"] = carried.get("dropped_at_shutdown", 0) + left
        if batches or left:
            logs.log_event(log, "drained", logging.WARNING if left else logging.INFO,
                           samples=sum(len(b) for b in batches), batches=len(batches), dropped=left)
