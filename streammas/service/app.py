"""Start-up wiring: from a configuration to a running service.

:class:`Service` checks the device, the model factory and the learner's settings, locks the state directory
(resuming from its newest checkpoint), serves the metrics, opens the sink and the source, then hands over
to the :class:`~streammas.service.loop.Loop` (run by its :class:`~streammas.service.group.Group`, or alone)
and acts on its outcome; at the end it writes the last checkpoint and closes everything. The learner itself
is created from the first batch's sample shape (or from the checkpoint's).
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch

from connectors.base import Sink, Source
from connectors.prefetch import ProcessSource
from connectors.registry import accepts_option, check_uri_options, open_sink, open_source
from streammas.config import Config
from streammas.learner import OnlineMAS
from streammas.service import logs
from streammas.service.checkpoint import Checkpoint, CheckpointStore
from streammas.service.checkpointing import Checkpointer, run_meta
from streammas.service.errors import ModelRefused, ServiceError, why
from streammas.service.factory import FactoryError, ModelSpec, resolve_device
from streammas.service.group import Alone, Group
from streammas.service.loop import Loop
from streammas.service.metrics import MetricsPortInUse, ServiceMetrics
from streammas.service.notify import SystemdNotifier, status_line
from streammas.service.ports import Control, Outcome, Ports
from streammas.service.signals import SignalHandlers
from streammas.service.telemetry import Tally, Telemetry

if TYPE_CHECKING:
    from collections.abc import Callable

    from streammas.collective import DistributedContext

#: One logger for the whole service: its name is part of every log line.
log = logging.getLogger("streammas.service")


class Service:
    """The service: :meth:`run` starts it, loops until stopped or the source ends, and shuts it down.

    It checks the device, the model factory and the learner's settings, locks the state directory (resuming
    from its newest checkpoint), serves the metrics, opens the sink and the source, then hands over to the
    :class:`~streammas.service.loop.Loop` and acts on its outcome; at the end it writes the last checkpoint and
    closes everything.

    Parameters
    ----------
    config : Config
        The whole configuration (:func:`streammas.config.load_config`).
    handle_signals : bool, default True
        Install the SIGTERM/SIGINT/SIGHUP handlers (only possible in the main thread; a service run in
        another thread is stopped with :meth:`request_stop`).

    Attributes
    ----------
    started : threading.Event
        Set once the source is open (its ``address`` is then known, for a ZeroMQ source bound to port ``*``).
    learner : OnlineMAS or None
        Created from the first batch, or from the checkpoint resumed from.
    group : Group or Alone
        This worker's group, or its one-worker form for a service alone.
    loop : Loop or None
        The loop, made once the source is open.
    exit_code : int
        What :meth:`run` returns: 0 stopped or finished normally, 1 gave up on errors, 2 could not go on.
    stop_reason : str or None
        Why it stopped, once :meth:`run` returned.

    Examples
    --------
    A finite source (a file not followed) ends the run once it is exhausted, with a checkpoint:

    >>> import tempfile, numpy as np, pathlib
    >>> from streammas.config import parse_config
    >>> with tempfile.TemporaryDirectory() as d:
    ...     np.save(f"{d}/x.npy", np.random.default_rng(0).random((100, 4), dtype=np.float32))
    ...     cfg = parse_config(f'[source]\\nuri = "npy:{d}/x.npy"\\n[state]\\ndir = "{d}/state"\\n'
    ...                        '[log]\\nstatus_every_seconds = 0\\n')
    ...     service = Service(cfg, handle_signals=False)
    ...     service.run(), service.learner.samples_seen, len(list(pathlib.Path(d, "state").glob("ckpt-*.pt")))
    (0, 100, 1)
    """

    def __init__(self, config: Config, *, handle_signals: bool = True,
                 distributed: DistributedContext | None = None) -> None:
        self.config = config
        self.handle_signals = handle_signals
        self.learner: OnlineMAS | None = None
        self.source: Source | None = None
        self.sink: Sink | None = None
        self.metrics = ServiceMetrics()
        self.started = threading.Event()
        self.resumed_from: Checkpoint | None = None
        self.spec = ModelSpec(kind=config.model.kind, factory=config.model.factory,
                              options=dict(config.model.options),
                              search=[os.path.dirname(os.path.abspath(config.path))] if config.path else [])
        self.device = "cpu"
        self.exit_code = 0
        self.stop_reason: str | None = None
        #: Where the source opens: the position of the checkpoint resumed from (``None``: its start).
        self.opened_at: dict | None = None
        self.tally = Tally()
        self.telemetry = Telemetry(self.metrics)
        self.checkpoints = Checkpointer(config.state, self.metrics)
        self.notifier = SystemdNotifier()
        self.group: Group | Alone = (Group(distributed, config, self.write_checkpoint) if distributed is not None
                                     else Alone(config, self.write_checkpoint))
        self.control = Control()
        self.loop: Loop | None = None
        self._closed: set[str] = set()
        self._signals = SignalHandlers(stop=self.request_stop, checkpoint=self.request_checkpoint,
                                       repeated=self._repeated_stop)

    # -- control (thread-safe; also what the signal handlers call) ---------------------------------------------
    def request_stop(self, reason: str = "requested") -> None:
        """Stop after the current batch: checkpoint, close, return from :meth:`run`."""
        self.control.request_stop(reason)

    def request_checkpoint(self) -> None:
        """Write a checkpoint after the current batch."""
        self.control.checkpoint_now.set()

    def between_batches(self) -> None:
        """Act on the signals that arrived since the last call, and tell the watchdog the service is alive (the
        loop calls it every turn; the notifier sends at most every WATCHDOG_USEC/2)."""
        self._signals.poll()
        self.notifier.watchdog()

    def _repeated_stop(self, count: int) -> None:
        logs.log_event(log, "stopping", signals=count, msg="already stopping; finishing the checkpoint")

    @property
    def source_address(self) -> str | None:
        """The address a ZeroMQ source is bound to (``None`` for other sources)."""
        return getattr(self.source, "address", None)

    @property
    def position(self) -> dict | None:
        """The source's position after the last batch learned (what a checkpoint records)."""
        return self.loop.position if self.loop is not None else self.opened_at

    @property
    def store(self) -> CheckpointStore | None:
        """The state directory, once :meth:`start` locked it."""
        return self.checkpoints.store

    @property
    def last_checkpoint(self) -> Checkpoint | None:
        """The checkpoint written (or resumed from) last."""
        return self.checkpoints.last

    # -- start-up ---------------------------------------------------------------------------------------------
    def check(self) -> None:
        """What can be checked without opening anything: the connectors' options, the device and the model factory
        (raises :class:`ServiceError`; the learner's settings were checked with the configuration)."""
        for kind, part in (("source", self.config.source), ("sink", self.config.sink)):
            try:
                if part.uri is not None:
                    check_uri_options(part.uri, kind, part.connector_options() if kind == "source" else part.options)
            except (ValueError, ImportError) as e:
                raise ServiceError(f"[{kind}] {part.uri}: {e}") from None
        self.device = resolve_device(self.config.learner.device)
        try:
            self.spec.check()
        except FactoryError as e:
            raise ServiceError(f"[model] {e}") from None

    def start(self) -> None:
        """Open everything (raises :class:`ServiceError`); :meth:`run` calls it."""
        cfg = self.config
        if cfg.learner.threads:
            torch.set_num_threads(cfg.learner.threads)
        self.check()
        self.device = self.group.worker_device(self.device)
        self.metrics.device = self.device
        ckpt = self.group.open_state(self.checkpoints.open)
        if ckpt is not None:
            self._resume(ckpt)
        if cfg.metrics.port is not None and self.group.is_main:  # rank 0 serves the group
            try:
                host, port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
            except MetricsPortInUse as e:
                raise ServiceError(f"[metrics] {e.strerror}") from None
            logs.log_event(log, "metrics", url=f"http://{host}:{port}/metrics")
        self._open_sink()
        next_sample = getattr(self.sink, "next_sample", None)
        if ckpt is None and isinstance(next_sample, int) and next_sample > 0:
            # a new state directory appending to an older one's sink file: number the samples on from there
            self.tally.first_sample = next_sample
        self._open_source()
        ports = Ports(config=cfg, source=self.source, sink=self.sink, tally=self.tally, telemetry=self.telemetry,
                      policy=self.checkpoints, checkpoint=self.checkpoint, make_learner=self.create_learner,
                      refresh=self.refresh, between_batches=self.between_batches,
                      observe_step=self.metrics.observe_step)
        self.loop = Loop(ports, self.control, learner=self.learner, position=self.opened_at)
        self.started.set()
        self.notifier.ready(f"reading {self.config.source.uri}")

    def _resume(self, ckpt: Checkpoint) -> None:
        meta = ckpt.meta
        if not ckpt.learner:  # nothing learned yet, only samples turned away: their counts carry over
            self.tally, self.opened_at = self.group.resume(meta)
            self.checkpoints.resumed(ckpt, 0)
            return
        model_meta = meta.get("model") or {}
        mismatch = self.spec.same_model(model_meta)
        if mismatch is not None:
            raise ServiceError(f"the state directory {self.config.state.dir} holds a different model ({mismatch}); "
                               "use the model it was made with or another [state] dir")
        shape = model_meta.get("sample_shape")
        if shape is None:
            raise ServiceError(f"checkpoint {ckpt.path} does not record the sample shape")
        learner = self.create_learner(shape)
        try:
            learner.load_state_dict(ckpt.learner)
        except Exception as e:
            raise ServiceError(f"cannot restore {ckpt.path} into the configured learner: "
                               f"{type(e).__name__}: {e}") from e
        self.tally, self.opened_at = self.group.resume(meta, learner)
        self.checkpoints.resumed(ckpt, learner.samples_seen)
        self.metrics.last_checkpoint = ckpt.created
        self.resumed_from = ckpt
        logs.log_event(log, "resumed", checkpoint=str(ckpt.path), samples_seen=learner.samples_seen,
                       consolidations=learner.consolidations, position=self.opened_at)

    def _open_sink(self) -> None:
        uri = self.config.sink.uri
        if uri is None:
            return
        uri = self.group.sink_uri(uri)
        try:
            self.sink = open_sink(uri, **self.config.sink.options)
        except Exception as e:
            raise ServiceError(f"[sink] cannot open {uri}: {why(e)}") from None
        address = getattr(self.sink, "address", None)
        logs.log_event(log, "sink", sink=uri, **({"address": address} if address else {}))

    def _open_source(self) -> None:
        cfg = self.config.source
        options = cfg.connector_options()
        shape = self.learner.sample_shape if self.learner is not None else None
        if "sample_shape" not in options and shape is not None and accepts_option(cfg.uri, "source", "sample_shape"):
            # resumed: the learner can take one shape only, so a stray first message must not decide another
            options["sample_shape"] = list(shape)
            if accepts_option(cfg.uri, "source", "shape_origin"):
                options["shape_origin"] = "checkpoint"
        options.update(self.group.source_options())
        opener = ProcessSource if cfg.reads_ahead(self.group.world_size) else open_source
        try:
            self.source = opener(cfg.uri, batch_size=cfg.batch_size, max_latency_ms=cfg.max_latency_ms,
                                 position=self.opened_at, **options)
        except Exception as e:
            raise ServiceError(f"[source] cannot open {cfg.uri}: {why(e)}") from None
        fields: dict[str, Any] = {"source": cfg.uri, "reader": "process" if opener is ProcessSource else "inline"}
        if self.source_address:
            fields["address"] = self.source_address
        logs.log_event(log, "listening" if self.source_address else "reading", **fields)

    def create_learner(self, sample_shape: Any) -> OnlineMAS:
        """Build the model for ``sample_shape`` and the learner around it. Raises :class:`ModelRefused` where the
        stream decided the shape (the batch is turned away, the daemon goes on), else :class:`ServiceError`."""
        shape = tuple(int(d) for d in sample_shape)
        # where the stream's first samples decided the shape (none configured, none resumed), a refusal is theirs
        stream_decides = self.config.source.sample_shape is None and self.spec.sample_shape is None
        torch.manual_seed(self.config.learner.seed)
        model = self.spec.build_bounded(shape, self.config.model.max_parameters,
                                        ModelRefused if stream_decides else ServiceError)
        try:
            self.learner = OnlineMAS(model, device=self.device, callback=self._on_event,
                                     **self.group.learner_options(), **self.config.learner.learner_kwargs())
        except (TypeError, ValueError) as e:
            raise ServiceError(f"[learner] {e}") from None
        params = sum(p.numel() for p in model.parameters())
        logs.log_event(log, "model", model=self.spec.name, sample_shape=list(self.spec.sample_shape or []),
                       parameters=params, device=self.device)
        return self.learner

    def _close_part(self, name: str) -> None:
        """Close the source or the sink once."""
        thing = getattr(self, name)
        if thing is None or name in self._closed:
            return
        self._closed.add(name)
        try:
            thing.close()
        except Exception as e:  # closing must not hide the exit status
            logs.log_event(log, "close_failed", logging.WARNING, what=name, error=why(e))

    def _on_event(self, event: Any) -> None:
        record = event.as_dict() if hasattr(event, "as_dict") else dict(vars(event))
        if self.config.sink.events and self.sink is not None and self.loop is not None:
            self.loop.queue_event(record)
        self.telemetry.log_event(record)

    # -- running -----------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Start, loop, shut down; returns the exit status (0: stopped or finished normally)."""
        if self.handle_signals:  # before the start-up log lines, which tell a supervisor it may signal
            self._signals.install()
        try:
            self.start()
        except BaseException:
            self._signals.restore()
            self._close()
            raise
        assert self.loop is not None
        outcome: Outcome | None = None
        try:
            outcome = self.group.run(self.loop)
        finally:
            # Interrupted (KeyboardInterrupt), the stop line and the last checkpoint say what the loop reached.
            # The handlers stay until the end: a second SIGTERM must not kill the final checkpoint.
            ended = outcome if outcome is not None else self.loop.outcome()
            self.stop_reason, self.exit_code = ended.stop_reason, ended.exit_code
            try:
                self._shutdown()
            finally:
                self._signals.restore()
        if outcome.error is not None:  # a worker that left a turn half-way: the launcher restarts the group
            raise outcome.error
        return self.exit_code

    def rejected(self) -> dict[str, int]:
        """Samples turned away in the life of the state directory, by reason."""
        return self.tally.rejected(self.source, self.learner)

    def refresh(self) -> None:
        """Publish the learner's current values to the metrics and the status line (one device read)."""
        self.telemetry.refresh(self.learner, self.tally, self.source)
        self.notifier.status(status_line(self.telemetry.status))

    def checkpoint(self, reason: str = "requested") -> Checkpoint | None:
        """Write a checkpoint now (between batches); returns it, or ``None`` if there is nothing to save or the
        write failed (logged; the service goes on and tries again at the next occasion). In a group every
        worker calls it, and rank 0 writes the group's state. Once it is on disk, the source is told that the
        position it records is durable (:meth:`connectors.base.Source.commit`)."""
        position = self.position
        written = self.group.checkpoint(reason, self.learner, lambda: {  # this worker's part of a group's checkpoint
            "position": position, "tally": asdict(self.tally), "rejected": self.rejected()})
        commit = getattr(self.source, "commit", None)  # plug-in sources may predate Source.commit
        if self.group.durable(written) and commit is not None and position is not None:
            try:
                commit(position)
            except Exception as e:  # the next checkpoint commits again, covering this one's position too
                logs.log_event(log, "commit_failed", logging.WARNING, error=why(e))
        return written

    def write_checkpoint(self, reason: str,
                         amend: Callable[[dict[str, Any]], None] | None = None) -> Checkpoint | None:
        """Write this service's checkpoint, ``amend(meta)`` completing its metadata (a group's part, on rank 0)."""
        def describe() -> dict[str, Any]:
            meta = run_meta(spec=self.spec, config=self.config, position=self.position, tally=self.tally,
                            rejected=self.rejected(), reason=reason, device=self.device)
            if amend is not None:
                amend(meta)
            return meta

        written = self.checkpoints.write(self.learner, reason, describe, empty=bool(self.rejected()))
        if written is not None:  # the metrics and the status line agree with the checkpoint line just logged
            self.refresh()
        return written

    def _shutdown(self) -> None:
        self.notifier.stopping()
        if self.loop.progress is not None:
            self.loop.progress.close()
        alone = isinstance(self.group, Alone)  # in a group, rank 0's view decides, and each worker rejects its own
        if self.learner is not None or (alone and self.rejected()):
            due = (self.checkpoints.learned_since(self.learner.samples_seen if self.learner is not None else 0)
                   or self.checkpoints.received_since(self.group.received(self.tally))
                   or (alone and self.checkpoints.rejected_since(self.rejected())))
            ok = self.group.final_checkpoint(due, self.control.checkpoint_now.is_set(), self.checkpoint)
            if not ok and self.exit_code == 0:
                self.exit_code = 1
            # the sink's last try at what it could not write yet, so that the stop line counts what is lost
            self._close_part("sink")
            self.loop.count_sink_losses()
            self.refresh()
        snap = self.metrics.snapshot
        logs.log_event(log, "stopped", reason=self.stop_reason or "error", samples_seen=snap.samples,
                       batches=self.tally.batches, consolidations=snap.consolidations,
                       rejected=sum(snap.rejected.values()), sink_failed=self.tally.sink_failed,
                       exit_code=self.exit_code)
        self._close()

    def _close(self) -> None:
        self._close_part("source")
        self._close_part("sink")
        self.metrics.close()
        self.checkpoints.close()
