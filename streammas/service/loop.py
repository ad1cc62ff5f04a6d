"""The loop: source -> learner -> sink, until stopped or the source ends.

Each turn reads a micro-batch (waiting at most :data:`READ_TIMEOUT` seconds, so that signals and timers are
served promptly), learns it, writes each sample's prequential score to the sink and checkpoints when one is
due. A batch the learner fails on is counted (reason ``learner_error``) and skipped; after
:data:`MAX_CONSECUTIVE_ERRORS` failed batches in a row the service stops with exit status 1.

The loop works on narrow :class:`Ports` (the source, the sink, the counts, the checkpoint policy, callables
that make the learner and write a checkpoint), is steered by a :class:`Control` and returns an
:class:`Outcome`: what to do about it is the service's business. A group's worker wraps the same loop
(:class:`~streammas.service.group_loop.GroupLoop`), which learns and counts its batches through it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from connectors.base import Batch, Sink
from streammas.learner import OnlineMAS
from streammas.service import logs
from streammas.service.errors import ModelRefused, ServiceError, why
from streammas.service.finish import source_finished
from streammas.service.ports import Control, Outcome, Ports
from streammas.service.progress import Progress, want_bar

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
    """The service's main loop over its :class:`Ports`, steered by a :class:`Control`.

    :meth:`run` is the loop of a service alone; its steps (:meth:`learn`, :meth:`drain`, ...) are also what a
    group's worker runs in step with the others. In prose::

        loop = Loop(ports, control)   # made by the service once its source is open
        control.request_stop("...")   # what Service.request_stop does: finish the batch, leave run()
        control.checkpoint_now.set()  # what Service.request_checkpoint (SIGHUP) does
        outcome = loop.run()          # when stopped or when a finite source is exhausted

    Parameters
    ----------
    ports : Ports
        What the loop works on.
    control : Control, optional
        Its flags (a new one by default).
    learner : OnlineMAS or None, default None
        The learner resumed from a checkpoint (``None``: the first batch makes it).
    position : dict or None, default None
        Where the source was opened.

    Attributes
    ----------
    learner : OnlineMAS or None
        The learner, once made.
    position : dict or None
        The source's position after the last batch learned (what a checkpoint records).
    reason : str or None
        Why the loop stopped, where the loop knows better than :attr:`Control.reason`.
    exit_code : int
        What the loop ends with, so far.
    progress : Progress or None
        The progress bar or status lines, once begun (the service closes it at shutdown).

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
    ...     status = service.run()  # starts everything, makes the loop, runs it, acts on its outcome
    ...     records = [json.loads(line) for line in pathlib.Path(d, "scores.jsonl").read_text().splitlines()]
    >>> isinstance(service.loop, Loop), status, service.stop_reason
    (True, 0, 'source finished')
    >>> service.tally.batches, service.tally.received, len(records), sorted(records[-1])
    (3, 40, 40, ['sample', 'score', 'seq'])
    """

    def __init__(self, ports: Ports, control: Control | None = None, *, learner: OnlineMAS | None = None,
                 position: dict | None = None) -> None:
        self.ports = ports
        self.control = control if control is not None else Control()
        self.learner = learner
        self.position = position
        self.reason: str | None = None
        self.exit_code = 0
        self.progress: Progress | None = None
        self.consecutive_errors = 0
        self._events: list[dict[str, Any]] = []
        self._sink_dropped = 0  # the sink's own count of records given up, as of the last batch
        self._refused: dict[tuple[int, ...], str] = {}  # sample shapes no model could be made for, and why

    def queue_event(self, record: dict[str, Any]) -> None:
        """Attach a learner event to the next batch's sink records."""
        self._events.append(record)

    def fail(self, reason: str, exit_code: int) -> None:
        """Record why the loop gives up, and its exit status."""
        self.reason, self.exit_code = reason, exit_code

    @property
    def stop_reason(self) -> str | None:
        """Why the loop stopped: its own reason, else the one the stop was requested with."""
        return self.reason if self.reason is not None else self.control.reason

    def outcome(self, error: Exception | None = None) -> Outcome:
        """How the loop ended (or stands, if it was interrupted)."""
        return Outcome(stop_reason=self.stop_reason, exit_code=self.exit_code, position=self.position, error=error)

    def run(self) -> Outcome:
        """Loop until stopped or the source is finished. An error ends the loop with exit status 2 (a
        :class:`ServiceError`) or 1, logged, so that the service checkpoints what was learned and says why."""
        try:
            self._run()
        except ServiceError as e:
            logs.log_event(log, "error", logging.ERROR, msg=str(e))
            self.exit_code = 2
        except Exception as e:  # a source that broke, say
            log.error("the service stopped on an unexpected error: %s: %s", type(e).__name__, e, exc_info=True)
            self.fail(f"{type(e).__name__}: {e}", 1)
        return self.outcome()

    def begin(self, finite: bool, total: int | None = None) -> Progress:
        """Start the progress display (a bar only for a ``finite`` source) and the checkpoint clock."""
        cfg = self.ports.config
        self.progress = Progress(bar=want_bar(cfg.log.progress, finite), status_every=cfg.log.status_every_seconds,
                                 logger=log, total=total)
        self.ports.policy.restart_clock()
        return self.progress

    def _run(self) -> None:
        ports, control = self.ports, self.control
        source = ports.source
        # The source knows whether it ends (a file not followed); a plug-in source written before
        # Source.finite existed may not subclass Source and lack the attribute: endless, then.
        finite = bool(getattr(source, "finite", False))
        total = getattr(source, "size_hint", None) if finite else None
        progress = self.begin(finite, total if isinstance(total, int) else None)
        every = ports.config.metrics.every_batches
        while True:
            ports.between_batches()
            if control.stop.is_set():
                if self.exit_code == 0:  # stopped on request, not given up on errors
                    self.drain()
                break
            if control.checkpoint_now.is_set():
                control.checkpoint_now.clear()
                ports.checkpoint("signal")
            batch = source.read(timeout=READ_TIMEOUT)
            if batch is None:
                if source.finished:
                    self.reason, self.exit_code, self.position = source_finished(
                        source, ports.tally, self.learner, self.position, ports.config.source.uri)
                    break
                if self.stale:  # idle: show what was learned, not what was true some batches ago
                    ports.refresh()
                self.maybe_checkpoint()
                progress.tick()
                continue
            if len(batch) == 0:
                continue
            self.learn(batch)
            refreshed = ports.tally.batches % every == 0 or progress.status_due()
            if refreshed:
                ports.refresh()
            progress.update(len(batch), ports.telemetry.status if refreshed else None)
            self.maybe_checkpoint()

    @property
    def stale(self) -> bool:
        """Whether batches were processed, or input turned away, since the telemetry was last refreshed."""
        return self.ports.telemetry.stale(self.ports.tally, self.ports.source)

    def maybe_checkpoint(self) -> None:
        """Write a checkpoint if the policy says one is due."""
        if self.learner is None:
            return
        reason = self.ports.policy.due(self.learner.samples_seen, self.ports.tally.received)
        if reason is not None:
            self.ports.checkpoint(reason)

    def learner_for(self, sample_shape: tuple[int, ...]) -> OnlineMAS:
        """The learner, made for ``sample_shape`` if there is none yet."""
        if self.learner is None:
            self.learner = self.ports.make_learner(sample_shape)
        return self.learner

    def make_learner(self, batch: Batch, shape: tuple[int, ...] | None = None) -> OnlineMAS | None:
        """The learner made for ``shape`` (by default the batch's), or ``None`` when no model can be made for
        samples the stream decided (:class:`ModelRefused`): the batch is counted (reason ``model``), the
        source may take another shape, and the stream goes on."""
        shape = tuple(int(d) for d in (batch.x.shape[1:] if shape is None else shape))
        refused = self._refused.get(shape)
        if refused is None:
            try:
                return self.learner_for(shape)
            except ModelRefused as e:
                refused = self._refused[shape] = str(e)
        carried = self.ports.tally.carried_rejected
        carried["model"] = carried.get("model", 0) + len(batch)
        suppressed = self.ports.telemetry.quiet("model_refused")
        if suppressed is not None:
            logs.log_event(log, "model_refused", logging.ERROR, samples=len(batch), shape=list(shape),
                           msg=refused, suppressed=suppressed)
        forget = getattr(self.ports.source, "forget_sample_shape", None)  # plug-in sources may lack it
        if forget is not None:
            forget()
        return None

    # -- the accounting, the same for a service alone and a group's worker ------------------------------------
    def drain(self, learn: Callable[[Iterator[Batch]], int] | None = None) -> None:
        """Learn what the source already holds (a ZeroMQ socket's queue), for at most ``[source] drain_seconds``
        of reading and learning together, so that a SIGTERM loses nothing that had arrived and still ends in
        bounded time and memory (the source gives a batch at a time); what is left is counted and logged.

        ``learn`` learns the drained batches (a group's workers: in step) and returns how many samples it
        learned; by default one by one.
        """
        source = self.ports.source
        drain = getattr(source, "drain", None)  # plug-in sources may predate Source.drain
        given = drain(self.ports.config.source.drain_seconds) if drain is not None else ()
        batches = (b for b in given if len(b))
        before = int((getattr(source, "counters", {}) or {}).get("dropped_at_shutdown", 0))
        if learn is not None:
            samples = learn(batches)
        else:
            samples = 0
            for batch in batches:
                self.learn(batch)
                samples += len(batch)
        left = int((getattr(source, "counters", {}) or {}).get("dropped_at_shutdown", 0)) - before
        if left:
            carried = self.ports.tally.carried_rejected
            carried["dropped_at_shutdown"] = carried.get("dropped_at_shutdown", 0) + left
        if samples or left:
            logs.log_event(log, "drained", logging.WARNING if left else logging.INFO,
                           samples=samples, dropped=left)

    def learn(self, batch: Batch, *, in_step: bool = False) -> None:
        """Learn one batch (the first one makes the learner), count it, and write its scores to the sink.

        ``in_step``: a step of a group, which may have no rows (this worker's part of a step where others have
        some: it changes no count), and whose error is not caught: one in the middle of a step (a peer gone,
        most often) leaves the others inside its collectives, so the worker fails and the launcher restarts
        the group from its newest checkpoint.
        """
        ports = self.ports
        learner = self.learner if self.learner is not None else self.make_learner(batch)
        if learner is None:
            return
        labels = batch.y if ports.config.learner.objective == "classification" else None
        started = time.perf_counter()
        try:
            scores = learner.learn_many(batch.x, labels)
        except Exception as e:
            if in_step:
                raise
            self._failed_batch(batch, e)
            scores = None
        else:
            self.consecutive_errors = 0
        if len(batch) == 0:
            return
        ports.observe_step(time.perf_counter() - started)
        tally = ports.tally
        first = tally.first_sample + tally.received
        tally.received += len(batch)
        tally.batches += 1
        self.position = batch.position
        if scores is None:
            return
        if ports.sink is None:
            ports.telemetry.losses.add(scores)  # summed on the device: no copy to the host
            return
        host = host_scores(scores)
        ports.telemetry.losses.add(host)
        self._write_sink(ports.sink, batch, host, first)

    def _failed_batch(self, batch: Batch, error: Exception) -> None:
        tally = self.ports.tally
        tally.errors += len(batch)
        self.consecutive_errors += 1
        suppressed = self.ports.telemetry.quiet("learner_error")
        if suppressed is not None:
            log.error("a batch of %d samples could not be learned (%s: %s)%s", len(batch), type(error).__name__,
                      error, f"; {suppressed} more since the last report" if suppressed else "",
                      exc_info=tally.errors == len(batch))
        if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
            self.exit_code = 1
            self.control.request_stop(f"{MAX_CONSECUTIVE_ERRORS} batches in a row failed")

    def _write_sink(self, sink: Sink, batch: Batch, scores: np.ndarray, first: int) -> None:
        extra: dict[str, Any] = {"sample": np.arange(first, first + len(batch), dtype=np.int64)}
        if self._events:
            extra["events"], self._events = self._events, []
        # A sink that keeps what it could not write and retries it counts its own losses (``dropped``); for any
        # other sink, the records of a failed write are lost.
        accounts = isinstance(getattr(sink, "dropped", None), int)
        try:
            sink.write(batch, scores, extra)
        except Exception as e:  # a full disk, a closed pipe: the learning goes on, every lost record is counted
            if not accounts:
                self.ports.tally.sink_failed += len(batch)
            suppressed = self.ports.telemetry.quiet("sink_error")
            if suppressed is not None:
                logs.log_event(log, "sink_error", logging.ERROR, error=why(e), records=len(batch),
                               suppressed=suppressed)
        if accounts:
            self.count_sink_losses()

    def count_sink_losses(self) -> None:
        """Add what the sink gave up since the last call to the counts (sinks that keep that count)."""
        dropped = getattr(self.ports.sink, "dropped", None)
        if isinstance(dropped, int):
            self.ports.tally.sink_failed += dropped - self._sink_dropped
            self._sink_dropped = dropped
