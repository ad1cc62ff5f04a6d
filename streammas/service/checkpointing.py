"""Checkpoint policy: when the service writes a checkpoint, what it records besides the learner, and how a
service resumes from the newest one.

A checkpoint is due after ``[state] every_samples`` samples learned, or after ``every_seconds`` seconds in
which samples arrived; a signal (SIGHUP) asks for one now and shutdown writes one when anything changed. It
is always written between two batches, so the learner's state and the source's position agree. Besides the
learner's state it records (its *metadata*) the model, the source's URI and position, the service's counts
(:class:`~streammas.service.telemetry.Tally`), the reason, the device, the configuration and the version.

The state directory is watched: a deleted one is created again (with its lock) before the next checkpoint,
which then comes at once, since the old ones went with it; if another process took the directory meanwhile
the service stops rather than write beside it (exit status 2; 1 when the final checkpoint is the first to
find out). A checkpoint that fails is tried again after a pause that doubles up to :data:`MAX_BACKOFF`
seconds, so a disk that stays full logs a line now and then instead of one per batch; the shutdown
checkpoint is always tried.

At start-up, a directory whose checkpoints are all damaged is refused (exit status 2, naming them) unless
``[state] start_fresh`` says to set them aside as ``*.corrupt`` and start over.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from streammas.config import Config, SourceConfig, StateConfig
from streammas.learner import OnlineMAS
from streammas.service import logs
from streammas.service.checkpoint import Checkpoint, CheckpointStore, StateDirLocked
from streammas.service.errors import ServiceError, why
from streammas.service.factory import ModelSpec
from streammas.service.metrics import ServiceMetrics
from streammas.service.telemetry import Tally

#: One logger for the whole service: its name is part of every log line.
log = logging.getLogger("streammas.service")

#: Seconds between two looks at whether the state directory and its lock are still there.
LOOK_EVERY = 1.0
#: The pause after a failed checkpoint, doubled at each further failure up to :data:`MAX_BACKOFF`.
FIRST_BACKOFF = 1.0
MAX_BACKOFF = 30.0


class Checkpointer:
    """The state directory, the checkpoint policy, and the writing of checkpoints.

    A checkpoint is due after ``[state] every_samples`` samples learned, or after ``every_seconds`` seconds in
    which samples arrived; it is always written between two batches, so the learner's state and the source's
    position agree.

    Parameters
    ----------
    state : StateConfig
        ``[state]``: the directory, how many checkpoints to keep, ``every_samples``, ``every_seconds`` and
        ``start_fresh``.
    metrics : ServiceMetrics
        Told of each checkpoint written.

    Attributes
    ----------
    store : CheckpointStore or None
        The state directory, once :meth:`open` locked it.
    last : Checkpoint or None
        The checkpoint written (or resumed from) last.
    lost : str or None
        Why the state directory is no longer this service's (another process took it), or ``None``.

    Examples
    --------
    >>> import tempfile, torch
    >>> with tempfile.TemporaryDirectory() as d:
    ...     checkpoints = Checkpointer(StateConfig(dir=d, every_samples=100, every_seconds=0), ServiceMetrics())
    ...     print(checkpoints.open())  # a new directory: nothing to resume from
    ...     checkpoints.due(samples_seen=99, received=99), checkpoints.due(samples_seen=100, received=100)
    ...     learner = OnlineMAS(torch.nn.Linear(2, 2))
    ...     ckpt = checkpoints.write(learner, "requested", lambda: {"reason": "requested"})
    ...     checkpoints.close()
    ...     ckpt.path.name, ckpt.meta["samples_seen"], checkpoints.last is ckpt
    None
    (None, 'samples')
    ('ckpt-00000001.pt', 0, True)
    """

    def __init__(self, state: StateConfig, metrics: ServiceMetrics) -> None:
        self.state = state
        self.metrics = metrics
        self.store: CheckpointStore | None = None
        self.last: Checkpoint | None = None
        self.lost: str | None = None
        self._learned_at = 0
        self._clock = time.monotonic()
        self._next_look = 0.0
        self._failures = 0
        self._retry_at = 0.0

    def open(self) -> Checkpoint | None:
        """Lock the state directory, clear what a killed process left, and return the newest valid checkpoint
        (corrupt ones are renamed to ``*.corrupt``); raises :class:`ServiceError`, also when every checkpoint
        is damaged and ``[state] start_fresh`` is off."""
        state = self.state
        try:
            self.store = CheckpointStore(state.dir, keep=state.keep)
            self.store.lock()
        except StateDirLocked as e:
            raise ServiceError(f"[state] {e}") from None
        except OSError as e:
            if os.path.exists(state.dir) and not os.path.isdir(state.dir):
                raise ServiceError(f"[state] dir {state.dir} is a file, not a directory: give [state] dir "
                                   "(--state-dir) a directory, which is created if missing") from None
            raise ServiceError(f"[state] cannot use the state directory {state.dir}: {e.strerror or e}") from None
        for path in self.store.remove_temporary():
            logs.log_event(log, "removed_partial_checkpoint", logging.WARNING, path=str(path))
        # Nothing is renamed before deciding: a refused start leaves the directory as it found it.
        report = self.store.load_report()
        if report.checkpoint is None and report.corrupt:
            damaged = "; ".join(f"{path} ({reason})" for path, reason in report.corrupt)
            if not state.start_fresh:
                raise ServiceError(
                    f"[state] every checkpoint in {state.dir} is damaged, nothing to resume from: {damaged}. "
                    "Repair or move them, or start over with --start-fresh ([state] start_fresh = true), which "
                    "keeps them renamed to *.corrupt")
            logs.log_event(log, "starting_fresh", logging.WARNING, files=[str(p) for p, _ in report.corrupt],
                           msg="every checkpoint is damaged; start_fresh: renamed to *.corrupt, starting over")
        for path, reason in report.corrupt:
            try:
                self.store.quarantine(path)
                done = "renamed to *.corrupt"
            except OSError as e:  # it stays in the rotation, which deletes it in time; the newer ones are valid
                done = f"could not be renamed ({why(e)})"
            logs.log_event(log, "corrupt_checkpoint", logging.WARNING, path=str(path), reason=reason,
                           msg=f"skipped; {done}")
        return report.checkpoint

    def close(self) -> None:
        """Unlock the state directory."""
        if self.store is not None:
            self.store.unlock()

    # -- policy ------------------------------------------------------------------------------------------------
    def resumed(self, ckpt: Checkpoint, samples_seen: int) -> None:
        """The learner was restored from ``ckpt``: count from there (its checkpoints too; a checkpoint written
        before they were recorded counts as its sequence number)."""
        self.last = ckpt
        self._learned_at = samples_seen
        self.metrics.checkpoints = int(ckpt.meta.get("checkpoints", ckpt.seq))

    def restart_clock(self) -> None:
        """Count ``every_seconds`` from now (the loop starts)."""
        self._clock = time.monotonic()

    def received_since(self, received: int) -> bool:
        """Whether the state directory is behind: samples arrived since the last checkpoint (rejected ones too:
        the position moved), or the last checkpoint is gone (the directory was deleted)."""
        last = self.last
        return (last is None or int((last.meta.get("service") or {}).get("received", 0)) != received
                or not last.path.exists())

    def rejected_since(self, rejected: Mapping[str, int]) -> bool:
        """Whether samples were turned away since the last checkpoint (``rejected``: the counts by reason)."""
        recorded = (self.last.meta.get("service") or {}).get("rejected") if self.last is not None else None
        mine = {k: v for k, v in rejected.items() if v and k != "learner"}  # the learner's own is in its state
        return mine != {k: v for k, v in (recorded or {}).items() if v}

    def learned_since(self, samples_seen: int) -> bool:
        """Whether the learner learned anything since the last checkpoint."""
        return samples_seen != self._learned_at

    def due(self, samples_seen: int, received: int) -> str | None:
        """The reason a checkpoint is due now (``"state_dir"``: the directory vanished, ``"samples"`` or
        ``"time"``), or ``None``; none is due while a failed one waits for its retry.

        Raises :class:`ServiceError` once another process has taken the state directory.
        """
        if self.lost is not None:
            raise ServiceError(f"[state] {self.lost}")
        now = time.monotonic()
        if now < self._retry_at:
            return None
        if self.store is not None and now >= self._next_look:
            self._next_look = now + LOOK_EVERY
            if not self.store.intact():
                return "state_dir"
        state = self.state
        learned = samples_seen - self._learned_at
        if state.every_samples and learned >= state.every_samples:
            return "samples"
        if (state.every_seconds and now - self._clock >= state.every_seconds
                and (learned or self.received_since(received))):
            return "time"
        return None

    # -- writing -----------------------------------------------------------------------------------------------
    def write(self, learner: OnlineMAS | None, reason: str,
              describe: Callable[[], Mapping[str, Any]], *, empty: bool = False) -> Checkpoint | None:
        """Write a checkpoint of ``learner`` now, its metadata completed by ``describe()`` (see :func:`run_meta`).

        The state directory is created (and locked) again first if it vanished. Returns the checkpoint, or
        ``None`` if there is nothing to save or the write failed (logged; :meth:`due` waits a pause, doubled
        at each failure in a row, before the next try), or another process took the directory (:attr:`lost`).
        ``empty``: without a learner, write the metadata alone (samples turned away before any was learned, so
        that the next run and ``streammas inspect`` count them).
        """
        if (learner is None and not empty) or self.store is None:
            logs.log_event(log, "checkpoint_skipped", reason=reason, msg="nothing learned yet")
            return None
        if self.lost is not None:
            logs.log_event(log, "checkpoint_skipped", logging.ERROR, reason=reason, msg=self.lost)
            return None
        started = time.perf_counter()
        try:
            if self.store.ensure():
                logs.log_event(log, "state_dir_recreated", logging.WARNING, path=str(self.store.directory),
                               msg="the state directory or its lock vanished; created again and locked")
            state = learner.state_dict() if learner is not None else {}
            meta = {"samples_seen": int(learner.samples_seen) if learner is not None else 0,
                    "consolidations": int(learner.consolidations) if learner is not None else 0,
                    **describe(), "checkpoints": self.metrics.checkpoints + 1, "streammas_version": _version()}
            ckpt = self.store.save(state, meta)
        except StateDirLocked as e:
            self.lost = f"{e}: it was taken while this service ran; stopping without writing beside it"
            logs.log_event(log, "state_dir_taken", logging.ERROR, reason=reason, msg=self.lost)
            return None
        except Exception as e:
            self._failures += 1
            pause = min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + pause
            logs.log_event(log, "checkpoint_failed", logging.ERROR, reason=reason, error=why(e),
                           failures=self._failures, retry_in=pause)
            return None
        self._failures = 0
        self._retry_at = 0.0
        self.last = ckpt
        self._learned_at = meta["samples_seen"]
        self._clock = time.monotonic()
        self.metrics.checkpoint_written(ckpt.created)
        logs.log_event(log, "checkpoint", path=str(ckpt.path), reason=reason, samples_seen=meta["samples_seen"],
                       consolidations=meta["consolidations"], bytes=ckpt.nbytes,
                       seconds=round(time.perf_counter() - started, 4))
        return ckpt


# -- metadata ----------------------------------------------------------------------------------------------------
def run_meta(*, spec: ModelSpec, config: Config, position: dict | None, tally: Tally, rejected: Mapping[str, int],
             reason: str, device: str) -> dict[str, Any]:
    """The service's part of a checkpoint's metadata (:meth:`Checkpointer.write` adds the learner's counts).

    ``rejected`` leaves out ``learner`` (the learner's own count is in its state).
    """
    return {
        "model": spec.as_meta(),
        "source": {"uri": config.source.uri, "position": position},
        "service": {"batches": tally.batches, "received": tally.received, "sink_failed": tally.sink_failed,
                    "rejected": {k: v for k, v in rejected.items() if k != "learner"},
                    "first_sample": tally.first_sample},
        "reason": reason,
        "device": device,
        "config": json.dumps(config.as_dict(), default=str, sort_keys=True),
    }


def restore_tally(meta: Mapping[str, Any]) -> Tally:
    """The service's counts a checkpoint carries over.

    >>> restore_tally({"service": {"batches": 3, "received": 96, "sink_failed": 5,
    ...                            "rejected": {"json": 2, "learner_error": 32, "learner": 4}}})
    Tally(batches=3, received=96, errors=32, sink_failed=5, carried_rejected={'json': 2}, first_sample=0)
    """
    service = meta.get("service") or {}
    rejected = {str(k): int(v) for k, v in (service.get("rejected") or {}).items()}
    errors = rejected.pop("learner_error", 0)
    rejected.pop("learner", None)  # the restored learner's own count
    return Tally(batches=int(service.get("batches", 0)), received=int(service.get("received", 0)), errors=errors,
                 sink_failed=int(service.get("sink_failed", 0)), carried_rejected=rejected,
                 first_sample=int(service.get("first_sample", 0)))


def resume_position(meta: Mapping[str, Any], source: SourceConfig) -> dict | None:
    """Where to reopen the source: the checkpoint's position if it is the same source and ``[source] resume``
    is on, else ``None`` (from the start; a changed source is logged).

    >>> meta = {"source": {"uri": "npy:x.npy", "position": {"row": 100}}}
    >>> resume_position(meta, SourceConfig(uri="npy:x.npy"))
    {'row': 100}
    """
    recorded = meta.get("source") or {}
    if source.resume and recorded.get("uri") == source.uri:
        return recorded.get("position")
    if recorded.get("position") is not None:
        logs.log_event(log, "source_changed", logging.WARNING, before=recorded.get("uri"), now=source.uri,
                       msg="not resuming the old source's position")
    return None


def _version() -> str:
    from streammas.backend.version import __version__

    return __version__
