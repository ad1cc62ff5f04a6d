"""The loop: source -> learner -> sink, until stopped or the source ends.

Each turn reads a micro-batch (waiting at most :data:`READ_TIMEOUT` seconds, so that signals and timers are
served promptly), learns it, writes each sample's prequential score to the sink and checkpoints when one is
due. A batch the learner fails on is counted (reason ``learner_error``) and skipped; after
:data:`MAX_CONSECUTIVE_ERRORS` failed batches in a row the service stops with exit status 1.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from connectors.base import Batch
from streammas.service import logs
from streammas.service.errors import why
from streammas.service.progress import Progress, want_bar

if TYPE_CHECKING:
    from streammas.service.app import Service

#: One logger for the whole service: its name is part of every log line.
log = logging.getLogger("streammas.service")

#: Longest wait for a batch before the loop looks at signals and timers again (seconds).
READ_TIMEOUT = 0.2
#: Consecutive failed batches after which the service gives up (exit status 1).
MAX_CONSECUTIVE_ERRORS = 100


def host_scores(scores: torch.Tensor) -> np.ndarray:
    """The one device-to-host copy per batch: the scores the sink writes.

    >>> host_scores(torch.tensor([0.5, 1.5])).tolist()
    [0.5, 1.5]
    """
    return scores.detach().to("cpu", torch.float64).numpy()


class Loop:
    """The service's main loop, and the two flags that steer it from other threads and signal handlers.

    It works on its :class:`~streammas.service.Service`'s source, learner, sink, counts and telemetry, and
    runs once the service has started. It is not used on its own; in prose::

        loop = Loop(service)          # made by the service
        loop.stop.set()               # what Service.request_stop does: finish the batch, leave run()
        loop.checkpoint_now.set()     # what Service.request_checkpoint (SIGHUP) does
        loop.run()                    # returns when stopped or when a finite source is exhausted

    Parameters
    ----------
    service : Service
        The service whose parts the loop drives.

    Attributes
    ----------
    stop, checkpoint_now : threading.Event
        Set to stop after the current batch, or to checkpoint after it.
    progress : Progress or None
        The progress bar or status lines, once :meth:`run` began (the service closes it at shutdown).

    Examples
    --------
    A service's loop over a 40-row CSV file, each sample's score written to a JSON Lines sink:

    >>> import json, pathlib, tempfile
    >>> from streammas.config import parse_config
    >>> from streammas.service import Service
    >>> with tempfile.TemporaryDirectory() as d:
    ...     rows = "".join(f"{i % 3},{i % 5}\\n" for i in range(40))
    ...     _ = pathlib.Path(d, "data.csv").write_text("a,b\\n" + rows)
    ...     cfg = parse_config(f'[source]\\nuri = "csv:{d}/data.csv"\\nbatch_size = 16\\n'
    ...                        f'[sink]\\nuri = "jsonl:{d}/scores.jsonl"\\n[state]\\ndir = "{d}/state"\\n'
    ...                        '[log]\\nstatus_every_seconds = 0\\nprogress = "never"\\n')
    ...     service = Service(cfg, handle_signals=False)
    ...     loop = service.loop  # made by the service; Service.run() starts everything, then runs it
    ...     status = service.run()
    ...     records = [json.loads(line) for line in pathlib.Path(d, "scores.jsonl").read_text().splitlines()]
    >>> isinstance(loop, Loop), status, service.stop_reason
    (True, 0, 'source finished')
    >>> service.tally.batches, service.tally.received, len(records), sorted(records[-1])
    (3, 40, 40, ['sample', 'score', 'seq'])
    """

    def __init__(self, service: Service) -> None:
        self.service = service
        self.stop = threading.Event()
        self.checkpoint_now = threading.Event()
        self.progress: Progress | None = None
        self.consecutive_errors = 0
        self._events: list[dict[str, Any]] = []
        self._sink_dropped = 0  # the sink's own count of records given up, as of the last batch

    def queue_event(self, record: dict[str, Any]) -> None:
        """Attach a learner event to the next batch's sink records."""
        self._events.append(record)

    def run(self) -> None:
        """Loop until :attr:`stop` is set or the source is finished (exceptions go to the caller)."""
        service = self.service
        cfg = service.config
        source = service.source
        assert source is not None, "the service opens the source before the loop runs"
        # The source knows whether it ends (a file not followed); a plug-in source written before
        # Source.finite existed may not subclass Source and lack the attribute: endless, then.
        finite = bool(getattr(source, "finite", False))
        total = getattr(source, "size_hint", None) if finite else None
        self.progress = Progress(bar=want_bar(cfg.log.progress, finite), status_every=cfg.log.status_every_seconds,
                                 logger=log, total=total if isinstance(total, int) else None)
        service.checkpoints.restart_clock()
        every = cfg.metrics.every_batches
        while True:
            service.poll_signals()
            service.notifier.watchdog()  # every turn: the notifier sends at most every WATCHDOG_USEC/2
            if self.stop.is_set():
                if service.exit_code == 0:  # stopped on request, not given up on errors
                    self.drain()
                break
            if self.checkpoint_now.is_set():
                self.checkpoint_now.clear()
                service.checkpoint("signal")
            batch = source.read(timeout=READ_TIMEOUT)
            if batch is None:
                if source.finished:
                    logs.log_event(log, "source_finished", samples=service.tally.received)
                    service.stop_reason = "source finished"
                    break
                if self.stale:  # idle: show what was learned, not what was true some batches ago
                    service.refresh()
                self.maybe_checkpoint()
                self.progress.tick()
                continue
            if len(batch) == 0:
                continue
            self.learn(batch)
            refreshed = service.tally.batches % every == 0 or self.progress.status_due()
            if refreshed:
                service.refresh()
            self.progress.update(len(batch), service.telemetry.status if refreshed else None)
            self.maybe_checkpoint()

    def drain(self) -> None:
        """Learn what the source already holds (a ZeroMQ socket's queue), for at most ``[source] drain_seconds``
        of reading, so that a SIGTERM loses nothing that had arrived; what is left is counted and logged."""
        service = self.service
        seconds = service.config.source.drain_seconds
        drain = getattr(service.source, "drain", None)  # plug-in sources may predate Source.drain
        if drain is None:
            return
        batches = [b for b in drain(seconds) if len(b)]
        for batch in batches:
            self.learn(batch)
        counters = getattr(service.source, "counters", {}) or {}
        left = int(counters.get("dropped_at_shutdown", 0))
        if left:
            service.tally.carried_rejected["dropped_at_shutdown"] = (
                service.tally.carried_rejected.get("dropped_at_shutdown", 0) + left)
        if batches or left:
            logs.log_event(log, "drained", logging.WARNING if left else logging.INFO,
                           samples=sum(len(b) for b in batches), batches=len(batches), dropped=left)

    @property
    def stale(self) -> bool:
        """Whether batches were processed since the telemetry was last refreshed."""
        return self.service.telemetry.refreshed_batches != self.service.tally.batches

    def maybe_checkpoint(self) -> None:
        """Write a checkpoint if the policy says one is due."""
        service = self.service
        if service.learner is None:
            return
        reason = service.checkpoints.due(service.learner.samples_seen, service.tally.received)
        if reason is not None:
            service.checkpoint(reason)

    def learn(self, batch: Batch) -> None:
        """Learn one batch (the first one creates the learner), count it, and write its scores to the sink."""
        service = self.service
        learner = service.learner if service.learner is not None else service.create_learner(batch.x.shape[1:])
        labels = batch.y if service.config.learner.objective == "classification" else None
        started = time.perf_counter()
        try:
            scores = learner.learn_many(batch.x, labels)
        except Exception as e:
            self._failed_batch(batch, e)
            scores = None
        else:
            self.consecutive_errors = 0
        service.metrics.observe_step(time.perf_counter() - started)
        tally = service.tally
        first = tally.received
        tally.received += len(batch)
        tally.batches += 1
        service.position = batch.position
        if scores is None:
            return
        service.telemetry.losses.add(scores)
        if service.sink is not None:
            self._write_sink(batch, host_scores(scores), first)

    def _failed_batch(self, batch: Batch, error: Exception) -> None:
        service = self.service
        service.tally.errors += len(batch)
        self.consecutive_errors += 1
        suppressed = service.telemetry.quiet("learner_error")
        if suppressed is not None:
            log.error("a batch of %d samples could not be learned (%s: %s)%s", len(batch), type(error).__name__,
                      error, f"; {suppressed} more since the last report" if suppressed else "",
                      exc_info=service.tally.errors == len(batch))
        if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
            service.exit_code = 1
            service.request_stop(f"{MAX_CONSECUTIVE_ERRORS} batches in a row failed")

    def _write_sink(self, batch: Batch, scores: np.ndarray, first: int) -> None:
        service = self.service
        assert service.sink is not None
        extra: dict[str, Any] = {"sample": np.arange(first, first + len(batch), dtype=np.int64)}
        if self._events:
            extra["events"], self._events = self._events, []
        # A sink that keeps what it could not write and retries it counts its own losses (``dropped``); for any
        # other sink, the records of a failed write are lost.
        accounts = isinstance(getattr(service.sink, "dropped", None), int)
        try:
            service.sink.write(batch, scores, extra)
        except Exception as e:  # a full disk, a closed pipe: the learning goes on, every lost record is counted
            if not accounts:
                service.tally.sink_failed += len(batch)
            suppressed = service.telemetry.quiet("sink_error")
            if suppressed is not None:
                logs.log_event(log, "sink_error", logging.ERROR, error=why(e), records=len(batch),
                               suppressed=suppressed)
        if accounts:
            self.count_sink_losses()

    def count_sink_losses(self) -> None:
        """Add what the sink gave up since the last call to the service's count (sinks that keep that count)."""
        service = self.service
        dropped = getattr(service.sink, "dropped", None)
        if isinstance(dropped, int):
            service.tally.sink_failed += dropped - self._sink_dropped
            self._sink_dropped = dropped
