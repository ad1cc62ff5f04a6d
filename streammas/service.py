"""``streammas run``: the long-lived service. Source -> learner -> sink, with checkpoints, signals and metrics.

The loop reads a micro-batch from the source (waiting at most :data:`READ_TIMEOUT` seconds, so that signals
and timers are served promptly), learns it, writes each sample's prequential score to the sink, and
checkpoints every ``[state] every_samples`` samples or ``every_seconds`` seconds. A checkpoint is always
taken between two batches, so the learner's state and the source's position in it agree: a file source
resumed from it re-reads nothing and skips nothing. (The sink may repeat the scores of the batches learned
after the last checkpoint when the process was killed with ``kill -9``: it is at least once; each record
carries ``sample``, the sample's number in the life of the state directory, to deduplicate on.)

Signals: SIGTERM and SIGINT finish the current batch, write a checkpoint, close the sockets and exit with
status 0; SIGHUP writes a checkpoint now. A finite source (a file not followed) ends the run the same way
once it is exhausted.

Start-up problems (a bad configuration, a model factory that cannot be imported, a port already in use, an
unreadable file, a state directory used by another process) raise :class:`ServiceError`; the command prints
its message and exits with status 2.

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

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from streammas import logs
from streammas.checkpoint import Checkpoint, CheckpointStore, StateDirLocked
from streammas.config import Config, ConfigError, describe_schema, load_config, parse_override
from streammas.factory import FactoryError, ModelSpec
from streammas.metrics import MetricsPortInUse, ServiceMetrics, Snapshot
from streammas.progress import Progress, want_bar

log = logging.getLogger("streammas.service")

#: Longest wait for a batch before the loop looks at signals and timers again (seconds).
READ_TIMEOUT = 0.2
#: Consecutive failed batches after which the service gives up (exit status 1).
MAX_CONSECUTIVE_ERRORS = 100
#: Batches of loss sums kept for the moving average, in units of ``[metrics] every_batches``.
LOSS_WINDOWS = 10
#: Sources whose URI names a file: finite unless followed (for the progress bar).
FILE_SCHEMES = ("csv", "jsonl", "npy", "npz")


class ServiceError(Exception):
    """The service cannot start (or go on); the message says why. Exit status 2."""


def resolve_device(setting: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is usable, else ``"cpu"``; other values are checked.

    >>> resolve_device("cpu")
    'cpu'
    """
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(setting)
    except (RuntimeError, ValueError):
        raise ServiceError(f"[learner] device {setting!r} is not a torch device (auto, cpu, cuda, cuda:1)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ServiceError(f"[learner] device {setting!r}: no CUDA device is available")
    return setting


def _is_finite_source(uri: str, options: Mapping[str, Any]) -> bool:
    try:
        from connectors.registry import split_uri

        scheme = split_uri(uri)[0]
    except ValueError:
        return False
    return scheme in FILE_SCHEMES and not options.get("follow", False)


class _EveryFew:
    """Lets one log line through per ``interval`` seconds and per key; counts the rest."""

    def __init__(self, interval: float = 5.0) -> None:
        self.interval = interval
        self._last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def __call__(self, key: str) -> int | None:
        """``None`` to stay quiet, else how many were suppressed since the last line."""
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.interval:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return None
        self._last[key] = now
        return self.suppressed.pop(key, 0)


class Service:
    """The service: :meth:`run` starts it, loops until stopped or the source ends, and shuts it down.

    ``handle_signals``: install the SIGTERM/SIGINT/SIGHUP handlers (only possible in the main thread; a
    service run in another thread is stopped with :meth:`request_stop`). ``started`` is set once the
    source is open (its ``address`` is then known, for a ZeroMQ source bound to port ``*``).
    """

    def __init__(self, config: Config, *, handle_signals: bool = True) -> None:
        self.config = config
        self.handle_signals = handle_signals
        self.learner: Any = None
        self.source: Any = None
        self.sink: Any = None
        self.store: CheckpointStore | None = None
        self.metrics = ServiceMetrics()
        self.started = threading.Event()
        self.resumed_from: Checkpoint | None = None
        self.spec = ModelSpec(kind=config.model.kind, factory=config.model.factory,
                              options=dict(config.model.options),
                              search=[os.path.dirname(os.path.abspath(config.path))] if config.path else [])
        self.device = "cpu"
        self.exit_code = 0
        self.stop_reason: str | None = None
        self.last_checkpoint: Checkpoint | None = None
        self._stop = threading.Event()
        self._checkpoint_now = threading.Event()
        self._old_handlers: dict[int, Any] = {}
        self._position: dict | None = None
        self._batches = 0
        self._received = 0
        self._base_rejected: dict[str, int] = {}
        self._errors = 0
        self._consecutive_errors = 0
        self._learned_at_checkpoint = 0
        self._checkpoint_clock = time.monotonic()
        self._new_events: list[dict[str, Any]] = []
        self._quiet = _EveryFew()
        self._loss_sum: torch.Tensor | None = None
        self._loss_count: torch.Tensor | None = None
        self._loss_windows: deque[tuple[float, float]] = deque(maxlen=LOSS_WINDOWS)
        self._progress: Progress | None = None
        self._status: dict[str, Any] = {}

    # -- control (thread-safe; also what the signal handlers call) ---------------------------------------------
    def request_stop(self, reason: str = "requested") -> None:
        """Stop after the current batch: checkpoint, close, return from :meth:`run`."""
        if self._stop.is_set():
            logs.log_event(log, "stopping", reason=reason, msg="already stopping; finishing the checkpoint")
            return
        self.stop_reason = reason
        self._stop.set()

    def request_checkpoint(self) -> None:
        """Write a checkpoint after the current batch."""
        self._checkpoint_now.set()

    @property
    def source_address(self) -> str | None:
        """The address a ZeroMQ source is bound to (``None`` for other sources)."""
        return getattr(self.source, "address", None)

    # -- start-up ---------------------------------------------------------------------------------------------
    def check(self) -> None:
        """What can be checked without opening anything: the device, the model factory, the learner's settings
        (raises :class:`ServiceError`)."""
        self.device = resolve_device(self.config.learner.device)
        try:
            self.spec.check()
        except FactoryError as e:
            raise ServiceError(f"[model] {e}") from None
        self._check_learner_settings()

    def start(self) -> None:
        """Open everything (raises :class:`ServiceError`); :meth:`run` calls it."""
        cfg = self.config
        if cfg.learner.threads:
            torch.set_num_threads(cfg.learner.threads)
        self.check()
        self._open_store()
        if cfg.metrics.port is not None:
            try:
                host, port = self.metrics.serve(cfg.metrics.host, cfg.metrics.port)
            except MetricsPortInUse as e:
                raise ServiceError(f"[metrics] {e.strerror}") from None
            logs.log_event(log, "metrics", url=f"http://{host}:{port}/metrics")
        self._open_sink()
        self._open_source()
        self.started.set()

    def _check_learner_settings(self) -> None:
        """Build a throw-away learner so that bad settings fail at start-up, not at the first sample."""
        from streammas import OnlineMAS

        try:
            OnlineMAS(torch.nn.Linear(2, 2), device="cpu", **self.config.learner.learner_kwargs())
        except (TypeError, ValueError) as e:
            raise ServiceError(f"[learner] {e}") from None

    def _open_store(self) -> None:
        state = self.config.state
        try:
            self.store = CheckpointStore(state.dir, keep=state.keep)
            self.store.lock()
        except StateDirLocked as e:
            raise ServiceError(f"[state] {e}") from None
        except OSError as e:
            raise ServiceError(f"[state] cannot use the state directory {state.dir}: {e.strerror or e}") from None
        for path in self.store.remove_temporary():
            logs.log_event(log, "removed_partial_checkpoint", logging.WARNING, path=str(path))
        report = self.store.load_report(quarantine=True)
        for path, reason in report.corrupt:
            logs.log_event(log, "corrupt_checkpoint", logging.WARNING, path=str(path), reason=reason,
                           msg="skipped; renamed to *.corrupt")
        if report.checkpoint is not None:
            self._resume(report.checkpoint)

    def _resume(self, ckpt: Checkpoint) -> None:
        meta = ckpt.meta
        model_meta = meta.get("model") or {}
        why = self.spec.same_model(model_meta)
        if why is not None:
            raise ServiceError(f"the state directory {self.config.state.dir} holds a different model ({why}); "
                               "use the model it was made with or another [state] dir")
        shape = model_meta.get("sample_shape")
        if shape is None:
            raise ServiceError(f"checkpoint {ckpt.path} does not record the sample shape")
        self._create_learner(shape)
        try:
            self.learner.load_state_dict(ckpt.learner)
        except Exception as e:
            raise ServiceError(f"cannot restore {ckpt.path} into the configured learner: "
                               f"{type(e).__name__}: {e}") from e
        service = meta.get("service") or {}
        self._batches = int(service.get("batches", 0))
        self._received = int(service.get("received", 0))
        self._base_rejected = {str(k): int(v) for k, v in (service.get("rejected") or {}).items()}
        self._errors = self._base_rejected.pop("learner_error", 0)
        source = meta.get("source") or {}
        if self.config.source.resume and source.get("uri") == self.config.source.uri:
            self._position = source.get("position")
        elif source.get("position") is not None:
            logs.log_event(log, "source_changed", logging.WARNING, before=source.get("uri"),
                           now=self.config.source.uri, msg="not resuming the old source's position")
        self._learned_at_checkpoint = self.learner.samples_seen
        self.metrics.last_checkpoint = ckpt.created
        self.resumed_from = self.last_checkpoint = ckpt
        logs.log_event(log, "resumed", checkpoint=str(ckpt.path), samples_seen=self.learner.samples_seen,
                       consolidations=self.learner.consolidations, position=self._position)

    def _open_sink(self) -> None:
        uri = self.config.sink.uri
        if uri is None:
            return
        from connectors.base import open_sink

        try:
            self.sink = open_sink(uri, **self.config.sink.options)
        except Exception as e:
            raise ServiceError(f"[sink] cannot open {uri}: {_why(e)}") from None
        address = getattr(self.sink, "address", None)
        logs.log_event(log, "sink", sink=uri, **({"address": address} if address else {}))

    def _open_source(self) -> None:
        cfg = self.config.source
        from connectors.base import open_source

        try:
            self.source = open_source(cfg.uri, batch_size=cfg.batch_size, max_latency_ms=cfg.max_latency_ms,
                                      position=self._position, **cfg.options)
        except Exception as e:
            raise ServiceError(f"[source] cannot open {cfg.uri}: {_why(e)}") from None
        fields: dict[str, Any] = {"source": cfg.uri}
        if self.source_address:
            fields["address"] = self.source_address
        logs.log_event(log, "listening" if self.source_address else "reading", **fields)

    def _create_learner(self, sample_shape: Any) -> None:
        from streammas import OnlineMAS

        torch.manual_seed(self.config.learner.seed)
        try:
            model = self.spec.build(sample_shape)
        except FactoryError as e:
            raise ServiceError(f"[model] {e}") from None
        try:
            self.learner = OnlineMAS(model, device=self.device, callback=self._on_event,
                                     **self.config.learner.learner_kwargs())
        except (TypeError, ValueError) as e:
            raise ServiceError(f"[learner] {e}") from None
        params = sum(p.numel() for p in model.parameters())
        logs.log_event(log, "model", model=self.spec.name, sample_shape=list(self.spec.sample_shape or []),
                       parameters=params, device=self.device)

    # -- events ---------------------------------------------------------------------------------------------------
    def _on_event(self, event: Any) -> None:
        record = event.as_dict() if hasattr(event, "as_dict") else dict(vars(event))
        if self.config.sink.events and self.sink is not None:
            self._new_events.append(record)
        kind = record.get("kind")
        fields = {"samples_seen": record.get("samples_seen"), "value": record.get("value")}
        if kind in ("plateau", "peak", "consolidation"):
            logs.log_event(log, kind, **fields)
        else:
            suppressed = self._quiet(str(kind))
            if suppressed is not None:
                logs.log_event(log, str(kind), logging.WARNING, **fields, **({"suppressed": suppressed}
                                                                              if suppressed else {}))

    # -- the loop --------------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Start, loop, shut down; returns the exit status (0: stopped or finished normally)."""
        self._install_signals()  # before the start-up log lines, which tell a supervisor it may signal
        try:
            self.start()
        except BaseException:
            self._restore_signals()
            self._close()
            raise
        try:
            self._loop()
        except ServiceError as e:
            logs.log_event(log, "error", logging.ERROR, msg=str(e))
            self.exit_code = 2
        except Exception as e:  # a source that broke, say: checkpoint what was learned and say why
            log.error("the service stopped on an unexpected error: %s: %s", type(e).__name__, e, exc_info=True)
            self.stop_reason = f"{type(e).__name__}: {e}"
            self.exit_code = 1
        finally:
            self._restore_signals()
            self._shutdown()
        return self.exit_code

    def _loop(self) -> None:
        cfg = self.config
        finite = _is_finite_source(cfg.source.uri, cfg.source.options)
        total = getattr(self.source, "size_hint", None) if finite else None
        self._progress = Progress(bar=want_bar(cfg.log.progress, finite), status_every=cfg.log.status_every_seconds,
                                  logger=log, total=total if isinstance(total, int) else None)
        self._checkpoint_clock = time.monotonic()
        every = cfg.metrics.every_batches
        source = self.source
        while not self._stop.is_set():
            if self._checkpoint_now.is_set():
                self._checkpoint_now.clear()
                self.checkpoint("signal")
            batch = source.read(timeout=READ_TIMEOUT)
            if batch is None:
                if source.finished:
                    logs.log_event(log, "source_finished", samples=self._received)
                    self.stop_reason = "source finished"
                    break
                self._maybe_checkpoint()
                self._progress.tick()
                continue
            if len(batch) == 0:
                continue
            self._learn(batch)
            refreshed = self._batches % every == 0
            if refreshed:
                self._refresh()
            self._progress.update(len(batch), self._status if refreshed else None)
            self._maybe_checkpoint()

    def _learn(self, batch: Any) -> None:
        if self.learner is None:
            self._create_learner(batch.x.shape[1:])
        learner = self.learner
        labels = batch.y if self.config.learner.objective == "classification" else None
        started = time.perf_counter()
        try:
            scores = learner.learn_many(batch.x, labels)
        except Exception as e:
            self._failed_batch(batch, e)
            scores = None
        else:
            self._consecutive_errors = 0
        self.metrics.observe_step(time.perf_counter() - started)
        first = self._received
        self._received += len(batch)
        self._batches += 1
        self._position = batch.position
        if scores is None:
            return
        self._accumulate_loss(scores)
        if self.sink is not None:
            self._write_sink(batch, self._host_scores(scores), first)

    def _failed_batch(self, batch: Any, error: Exception) -> None:
        self._errors += len(batch)
        self._consecutive_errors += 1
        suppressed = self._quiet("learner_error")
        if suppressed is not None:
            log.error("a batch of %d samples could not be learned (%s: %s)%s", len(batch), type(error).__name__,
                      error, f"; {suppressed} more since the last report" if suppressed else "",
                      exc_info=self._errors == len(batch))
        if self._consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
            self.exit_code = 1
            self.request_stop(f"{MAX_CONSECUTIVE_ERRORS} batches in a row failed")

    @staticmethod
    def _host_scores(scores: torch.Tensor) -> np.ndarray:
        """The one device-to-host copy per batch: the scores the sink writes."""
        return scores.detach().to("cpu", torch.float64).numpy()

    def _accumulate_loss(self, scores: torch.Tensor) -> None:
        """Sum the batch's losses on the device; :meth:`_refresh` reads the sums every few batches."""
        scores = scores.detach()
        finite = torch.isfinite(scores)
        total = torch.where(finite, scores, torch.zeros_like(scores)).sum(dtype=torch.float64)
        count = finite.sum()
        if self._loss_sum is None or self._loss_sum.device != scores.device:
            self._loss_sum, self._loss_count = total, count
        else:
            self._loss_sum += total
            self._loss_count += count

    def _write_sink(self, batch: Any, scores: np.ndarray, first: int) -> None:
        extra: dict[str, Any] = {"sample": np.arange(first, first + len(batch), dtype=np.int64)}
        if self._new_events:
            extra["events"], self._new_events = self._new_events, []
        try:
            self.sink.write(batch, scores, extra)
        except Exception as e:
            suppressed = self._quiet("sink_error")
            if suppressed is not None:
                logs.log_event(log, "sink_error", logging.ERROR, error=_why(e), suppressed=suppressed)

    # -- status, metrics ---------------------------------------------------------------------------------------
    def rejected(self) -> dict[str, int]:
        """Samples turned away in the life of the state directory, by reason."""
        out = dict(self._base_rejected)
        for key, value in (self.source.counters if self.source is not None else {}).items():
            if key.startswith("rejected:"):
                reason = key.split(":", 1)[1]
                out[reason] = out.get(reason, 0) + int(value)
        if self._errors:
            out["learner_error"] = self._errors
        if self.learner is not None and self.learner.counters.get("rejected_samples"):
            out["learner"] = int(self.learner.counters["rejected_samples"])
        return out

    def _refresh(self) -> None:
        """Read the learner's values (one device read) and publish them to the metrics and the status line."""
        learner = self.learner
        if learner is None:
            return
        if self._loss_sum is not None:
            total, count = torch.stack([self._loss_sum.double(), self._loss_count.double()]).tolist()
            self._loss_sum.zero_()
            self._loss_count.zero_()
            if count:
                self._loss_windows.append((total, count))
        n = sum(c for _, c in self._loss_windows)
        loss = sum(s for s, _ in self._loss_windows) / n if n else None
        counters = dict(learner.counters)
        previous = self.metrics.snapshot
        importance = previous.importance
        if learner.consolidations != previous.consolidations or (learner.consolidations and not importance):
            importance = self._importance_summary()
        rejected = self.rejected()
        snapshot = Snapshot(samples=learner.samples_seen, batches=self._batches, rejected=rejected, loss=loss,
                            plateaus=counters.get("plateaus", 0), peaks=counters.get("peaks", 0),
                            consolidations=learner.consolidations,
                            skipped_updates=counters.get("skipped_updates", 0),
                            recoveries=counters.get("recoveries", 0), importance=importance)
        self.metrics.publish(snapshot)
        self._status = {"samples_seen": learner.samples_seen, "loss": loss, "plateaus": snapshot.plateaus,
                        "consolidations": snapshot.consolidations, "rejected": sum(rejected.values())}

    def _importance_summary(self) -> dict[str, tuple[float, float]]:
        omega = self.learner.importance
        if not omega:
            return {}
        names = list(omega)
        stats = torch.stack([torch.stack([omega[n].float().mean(), omega[n].float().max()]) for n in names]).tolist()
        return {n: (float(m), float(x)) for n, (m, x) in zip(names, stats)}

    # -- checkpoints -------------------------------------------------------------------------------------------
    def _maybe_checkpoint(self) -> None:
        if self.learner is None:
            return
        state = self.config.state
        learned = self.learner.samples_seen - self._learned_at_checkpoint
        if state.every_samples and learned >= state.every_samples:
            self.checkpoint("samples")
        elif (state.every_seconds and time.monotonic() - self._checkpoint_clock >= state.every_seconds
              and (learned or self._received_since_checkpoint())):
            self.checkpoint("time")

    def _received_since_checkpoint(self) -> bool:
        last = self.last_checkpoint
        return last is None or int((last.meta.get("service") or {}).get("received", 0)) != self._received

    def checkpoint(self, reason: str = "requested") -> Checkpoint | None:
        """Write a checkpoint now (between batches); returns it, or ``None`` if there is nothing to save or the
        write failed (logged; the service goes on and tries again at the next occasion)."""
        if self.learner is None or self.store is None:
            logs.log_event(log, "checkpoint_skipped", reason=reason, msg="nothing learned yet")
            return None
        started = time.perf_counter()
        learner = self.learner
        try:
            state = learner.state_dict()
            meta = {
                "samples_seen": int(learner.samples_seen),
                "consolidations": int(learner.consolidations),
                "model": self.spec.as_meta(),
                "source": {"uri": self.config.source.uri, "position": self._position},
                "service": {"batches": self._batches, "received": self._received,
                            "rejected": {k: v for k, v in self.rejected().items() if k != "learner"}},
                "reason": reason,
                "device": self.device,
                "config": json.dumps(self.config.as_dict(), default=str, sort_keys=True),
                "streammas_version": _version(),
            }
            ckpt = self.store.save(state, meta)
        except Exception as e:
            logs.log_event(log, "checkpoint_failed", logging.ERROR, reason=reason, error=_why(e))
            return None
        self.last_checkpoint = ckpt
        self._learned_at_checkpoint = learner.samples_seen
        self._checkpoint_clock = time.monotonic()
        self.metrics.checkpoint_written(ckpt.created)
        logs.log_event(log, "checkpoint", path=str(ckpt.path), reason=reason, samples_seen=meta["samples_seen"],
                       consolidations=meta["consolidations"], bytes=ckpt.nbytes,
                       seconds=round(time.perf_counter() - started, 4))
        return ckpt

    # -- signals and shutdown -----------------------------------------------------------------------------------
    def _install_signals(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return

        def stop(signum: int, frame: Any) -> None:
            self.request_stop(signal.Signals(signum).name)

        def hup(signum: int, frame: Any) -> None:
            self.request_checkpoint()

        wanted = {signal.SIGTERM: stop, signal.SIGINT: stop}
        if hasattr(signal, "SIGHUP"):
            wanted[signal.SIGHUP] = hup
        for signum, handler in wanted.items():
            self._old_handlers[signum] = signal.signal(signum, handler)

    def _restore_signals(self) -> None:
        for signum, handler in self._old_handlers.items():
            with contextlib.suppress(Exception):
                signal.signal(signum, handler)
        self._old_handlers.clear()

    def _shutdown(self) -> None:
        if self._progress is not None:
            self._progress.close()
        if self.learner is not None:
            learned = self.learner.samples_seen != self._learned_at_checkpoint
            due = learned or self._received_since_checkpoint() or self._checkpoint_now.is_set()
            if due and self.checkpoint("shutdown") is None and self.exit_code == 0:
                self.exit_code = 1
            self._refresh()
        snap = self.metrics.snapshot
        logs.log_event(log, "stopped", reason=self.stop_reason or "error", samples_seen=snap.samples,
                       batches=self._batches, consolidations=snap.consolidations,
                       rejected=sum(snap.rejected.values()), exit_code=self.exit_code)
        self._close()

    def _close(self) -> None:
        for name in ("source", "sink"):
            thing = getattr(self, name)
            if thing is not None:
                try:
                    thing.close()
                except Exception as e:  # closing must not hide the exit status
                    logs.log_event(log, "close_failed", logging.WARNING, what=name, error=_why(e))
        self.metrics.close()
        if self.store is not None:
            self.store.unlock()


def _why(error: BaseException) -> str:
    """A one-line reason for an exception (an OSError's message with its file name)."""
    if isinstance(error, OSError) and error.strerror:
        name = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{name}"
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _version() -> str:
    from streammas import __version__

    return __version__


# -- command line -------------------------------------------------------------------------------------------------
DEFAULT_CONFIG = "streammas.toml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Run the long-lived service: read a stream, learn it, remember what mattered, "
                          "checkpoint, survive restarts. SIGTERM/SIGINT: checkpoint and exit 0; SIGHUP: "
                          "checkpoint now.")
    parser.add_argument("--config", "-c", metavar="FILE",
                        help=f"TOML configuration (default: ./{DEFAULT_CONFIG} if it exists)")
    parser.add_argument("--source", metavar="URI", help="overrides [source] uri")
    parser.add_argument("--sink", metavar="URI", help="overrides [sink] uri")
    parser.add_argument("--state-dir", metavar="DIR", help="overrides [state] dir")
    parser.add_argument("--batch-size", type=int, metavar="N", help="overrides [source] batch_size")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="overrides [metrics] port")
    parser.add_argument("--device", help="overrides [learner] device")
    parser.add_argument("--log-level", help="overrides [log] level")
    parser.add_argument("--log-format", help="overrides [log] format (text or json)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any key, e.g. --set learner.lr=0.05 (repeatable)")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration (and import the model factory), print it as JSON, exit")
    parser.add_argument("--help-config", action="store_true", help="list every configuration key and exit")


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration the flags describe (raises :class:`ConfigError`)."""
    overrides: dict[str, Any] = {}
    flags = {"source": "source.uri", "sink": "sink.uri", "state_dir": "state.dir", "batch_size": "source.batch_size",
             "metrics_port": "metrics.port", "device": "learner.device", "log_level": "log.level",
             "log_format": "log.format"}
    for item in args.set:
        key, value = parse_override(item)
        overrides[key] = value
    for attr, key in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    path = args.config
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    if path is None and "source.uri" not in overrides:
        raise ConfigError(f"no configuration: give --config FILE (or put {DEFAULT_CONFIG} in the working "
                          "directory), or at least --source URI")
    return load_config(path, overrides)


def run_command(args: argparse.Namespace) -> int:
    if args.help_config:
        print(describe_schema(), end="")
        return 0
    try:
        config = config_from_args(args)
    except ConfigError as e:
        print(f"streammas run: configuration error: {e}", file=sys.stderr)
        return 2
    if args.check:
        try:
            Service(config, handle_signals=False).check()
        except ServiceError as e:
            print(f"streammas run: error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(config.as_dict(), indent=2))
        return 0
    with logs.logging_to(config.log.level, config.log.format):
        if config.path:
            logs.log_event(log, "config", path=os.path.abspath(config.path))
        service = Service(config)
        try:
            return service.run()
        except ServiceError as e:
            print(f"streammas run: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("streammas run: interrupted during start-up", file=sys.stderr)
            return 130
