"""Telemetry: what the running service says about itself.

The moving average of the loss (:class:`LossWindows`, summed on the device and read every few batches), the
samples turned away by reason (:class:`Tally`), the metrics snapshot and the status line that the progress
display shows (:class:`Telemetry`), and the learner's events as log lines.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from connectors.base import Source
from streammas.learner import OnlineMAS
from streammas.service import logs
from streammas.service.errors import EveryFew
from streammas.service.metrics import ServiceMetrics, Snapshot

if TYPE_CHECKING:
    from collections.abc import Mapping

#: One logger for the whole service: its name is part of every log line.
log = logging.getLogger("streammas.service")

#: Batches of loss sums kept for the moving average, in units of ``[metrics] every_batches``.
LOSS_WINDOWS = 10

#: Learner events logged at level info; any other kind is a warning, rate-limited per kind.
MILESTONES = ("plateau", "peak", "consolidation")


class LossWindows:
    """The mean prequential loss over the last ``windows`` reads, summed on the device in between.

    :meth:`add` costs no device-to-host copy; :meth:`mean` makes one, unless nothing was added since the
    last (an idle stream's refreshes cost nothing). Non-finite scores are left out.

    Parameters
    ----------
    windows : int, default LOSS_WINDOWS
        How many reads the moving average spans.

    Examples
    --------
    >>> losses = LossWindows(windows=2)
    >>> losses.mean() is None
    True
    >>> losses.add(torch.tensor([1.0, 3.0, float("nan")]))
    >>> losses.mean()
    2.0
    >>> losses.add(torch.tensor([5.0]))
    >>> losses.mean()
    3.0
    >>> losses.add(torch.tensor([7.0]))
    >>> losses.mean()  # the first window has left the average
    6.0
    >>> losses.add(np.array([8.0, np.inf]))  # scores already on the host are summed there
    >>> losses.add(np.array([1.0, 2.0]))
    >>> losses.add(torch.tensor([11.0]))
    >>> losses.mean()  # windows (7, 1 sample) and (8 + 1 + 2 + 11, 4 samples)
    5.8
    """

    def __init__(self, windows: int = LOSS_WINDOWS) -> None:
        self._sum: torch.Tensor | None = None
        self._count: torch.Tensor | None = None
        self._windows: deque[tuple[float, float]] = deque(maxlen=windows)
        self._host_sum, self._host_count = 0.0, 0
        self._added = False

    def add(self, scores: torch.Tensor | np.ndarray) -> None:
        """Sum a batch's losses: on the device (a tensor), or on the host where they already are (an array)."""
        self._added = True
        if isinstance(scores, np.ndarray):
            total = float(scores.sum())
            if not math.isfinite(total):  # a finite sum says every score is: one reduction, not three
                scores = scores[np.isfinite(scores)]
                total = float(scores.sum())
            self._host_sum += total
            self._host_count += len(scores)
            return
        scores = scores.detach()
        finite = torch.isfinite(scores)
        total = torch.where(finite, scores, torch.zeros_like(scores)).sum(dtype=torch.float64)
        count = finite.sum()
        if self._sum is None or self._sum.device != scores.device:
            self._sum, self._count = total, count
        else:
            self._sum += total
            self._count += count

    def mean(self) -> float | None:
        """Close the current window (one device read, if anything was added) and return the moving average
        (``None``: no loss yet)."""
        if self._added:
            self._added = False
            total, count = self._host_sum, self._host_count
            self._host_sum, self._host_count = 0.0, 0
            if self._sum is not None:
                on_device, counted = torch.stack([self._sum.double(), self._count.double()]).tolist()
                total, count = total + on_device, count + counted
                self._sum.zero_()
                self._count.zero_()
            if count:
                self._windows.append((total, count))
        n = sum(c for _, c in self._windows)
        return sum(s for s, _ in self._windows) / n if n else None


@dataclass
class Tally:
    """The service's own counts in the life of the state directory (a checkpoint carries them over).

    :meth:`rejected` adds the source's and the learner's own counts of samples turned away to the carried ones.

    Parameters
    ----------
    batches, received : int, default 0
        Batches and samples read from the source.
    errors : int, default 0
        Samples of the batches the learner failed on (reason ``learner_error``).
    sink_failed : int, default 0
        Records the sink failed to write (``streammas_sink_failed_records_total``).
    carried_rejected : dict, default {}
        Samples turned away by earlier runs, by reason (this run's source adds its own).
    first_sample : int, default 0
        The number the sink's ``sample`` gives the state directory's first sample: where a sink file kept from
        an earlier state directory (``--start-fresh``) left off, so that its ``sample`` keys never repeat.

    Examples
    --------
    >>> tally = Tally(batches=3, received=96, errors=32, carried_rejected={"json": 2})
    >>> tally.rejected(source=None, learner=None)
    {'json': 2, 'learner_error': 32}
    """

    batches: int = 0
    received: int = 0
    errors: int = 0
    sink_failed: int = 0
    carried_rejected: dict[str, int] = field(default_factory=dict)
    first_sample: int = 0

    def rejected(self, source: Source | None, learner: OnlineMAS | None) -> dict[str, int]:
        """Samples turned away, by reason: the carried counts, the source's ``rejected:<reason>`` counters,
        ``learner_error`` and the learner's own ``rejected_samples`` (as ``learner``)."""
        out = dict(self.carried_rejected)
        for key, value in (source.counters if source is not None else {}).items():
            if key.startswith("rejected:"):
                reason = key.split(":", 1)[1]
                out[reason] = out.get(reason, 0) + int(value)
        if self.errors:
            out["learner_error"] = self.errors
        if learner is not None and learner.counters.get("rejected_samples"):
            # A checkpoint of one service restores this count into the learner (restore_tally leaves it out of the
            # carried ones); a group's worker carries its own, since the learner's state is rank 0's.
            out["learner"] = out.get("learner", 0) + int(learner.counters["rejected_samples"])
        return out


def importance_summary(learner: OnlineMAS) -> dict[str, tuple[float, float]]:
    """``parameter -> (mean, max)`` of the learner's consolidated importance (one device read)."""
    omega = learner.importance
    if not omega or not learner.consolidations:  # zeros until a regime is consolidated: not a measurement
        return {}
    names = list(omega)
    stats = torch.stack([torch.stack([omega[n].float().mean(), omega[n].float().max()]) for n in names]).tolist()
    return {n: (float(m), float(x)) for n, (m, x) in zip(names, stats)}


def source_backlog(source: Source | None) -> int | None:
    """The samples waiting in ``source``, where its ``backlog`` attribute tells (``None``: it cannot tell).

    >>> source_backlog(None) is None
    True
    """
    value = getattr(source, "backlog", None)
    if callable(value):
        value = value()
    return int(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def source_events(source: Source | None) -> dict[str, int]:
    """The source's own counters besides ``samples``, ``batches`` and its rejects (those are counted apart).

    >>> class Src: counters = {"samples": 9, "batches": 1, "rejected:json": 2, "broker_errors": 3}
    >>> source_events(Src())
    {'broker_errors': 3}
    """
    counters = getattr(source, "counters", None) or {}
    return {str(k): int(v) for k, v in counters.items()
            if k not in ("samples", "batches") and not str(k).startswith("rejected")}


class Telemetry:
    """Publishes the learner's values: the metrics :class:`~streammas.service.metrics.Snapshot` and the status line.

    :meth:`refresh` reads the learner's values (at most one device read, none when nothing was learned
    since the last) and publishes them to the metrics and the status line that the progress display shows;
    it is cheap enough to call whenever the stream is idle. :meth:`log_event` notes consolidations for
    ``streammas_seconds_since_consolidation``.

    Parameters
    ----------
    metrics : ServiceMetrics
        Where snapshots are published (and served, when ``[metrics] port`` is set).

    Attributes
    ----------
    losses : LossWindows
        The loop adds each batch's scores here.
    status : dict
        The values of the status line (or progress bar) as of the last :meth:`refresh`.
    quiet : EveryFew
        The rate limit on repeated warnings, shared by the whole service.

    Examples
    --------
    >>> from streammas.models import MLPAutoencoder
    >>> learner = OnlineMAS(MLPAutoencoder(in_features=4, hidden=(8,), latent=2))
    >>> telemetry = Telemetry(ServiceMetrics())
    >>> telemetry.losses.add(learner.learn_many(torch.rand(16, 4)))
    >>> telemetry.refresh(learner, Tally(batches=1, received=16), source=None)
    >>> telemetry.metrics.snapshot.samples, telemetry.status["samples_seen"], telemetry.status["loss"] > 0
    (16, 16, True)
    """

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.metrics = metrics
        self.losses = LossWindows()
        self.quiet = EveryFew()
        self.status: dict[str, Any] = {}
        #: The service's batch count as of the last :meth:`refresh` (the loop refreshes when idle and stale).
        self.refreshed_batches = 0
        #: The samples turned away before the learner (source, service) as of the last :meth:`refresh`.
        self.refreshed_rejected = 0

    def stale(self, tally: Tally, source: Source | None) -> bool:
        """Whether batches were processed, or input turned away, since the last :meth:`refresh`: a stream of
        nothing but rejects must show on /metrics while no batch is learned."""
        return (self.refreshed_batches != tally.batches
                or self.refreshed_rejected != sum(tally.rejected(source, None).values()))

    def refresh(self, learner: OnlineMAS | None, tally: Tally, source: Source | None) -> None:
        """Read the learner's values (at most one device read) and publish them to the metrics and the status
        line; before there is a learner, the counts alone."""
        self.refreshed_batches = tally.batches
        self.refreshed_rejected = sum(tally.rejected(source, None).values())
        if learner is None:
            rejected = tally.rejected(source, None)
            self.metrics.publish(Snapshot(batches=tally.batches, rejected=rejected, sink_failed=tally.sink_failed,
                                          backlog=source_backlog(source)))
            self.status = {"samples_seen": 0, "loss": None, "rejected": sum(rejected.values())}
            return
        if self.metrics.device is None:
            self.metrics.device = str(learner.device)
        loss = self.losses.mean()
        counters = dict(learner.counters)
        previous = self.metrics.snapshot
        importance = previous.importance
        if learner.consolidations != previous.consolidations or (learner.consolidations and not importance):
            importance = importance_summary(learner)
        rejected = tally.rejected(source, learner)
        snapshot = Snapshot(samples=learner.samples_seen, batches=tally.batches, rejected=rejected, loss=loss,
                            plateaus=counters.get("plateaus", 0), peaks=counters.get("peaks", 0),
                            consolidations=learner.consolidations,
                            skipped_updates=counters.get("skipped_updates", 0),
                            recoveries=counters.get("recoveries", 0), importance=importance,
                            importance_samples=learner.synapses.running_count,
                            clipped_samples=counters.get("clipped_samples", 0), sink_failed=tally.sink_failed,
                            backlog=source_backlog(source), source_events=source_events(source))
        self.metrics.publish(snapshot)
        self.status = {"samples_seen": learner.samples_seen, "loss": loss, "plateaus": snapshot.plateaus,
                       "consolidations": snapshot.consolidations, "rejected": sum(rejected.values())}

    def log_event(self, record: Mapping[str, Any]) -> None:
        """Log one of the learner's events: a milestone at level info, anything else as a rate-limited warning."""
        kind = record.get("kind")
        if kind == "consolidation":
            self.metrics.consolidated()
        fields = {"samples_seen": record.get("samples_seen"), "value": record.get("value")}
        if kind in MILESTONES:
            logs.log_event(log, kind, **fields)
        else:
            suppressed = self.quiet(str(kind))
            if suppressed is not None:
                logs.log_event(log, str(kind), logging.WARNING, **fields, **({"suppressed": suppressed}
                                                                              if suppressed else {}))
