"""Prometheus metrics of the service, served over HTTP on 127.0.0.1 by default.

The service hands a plain :class:`Snapshot` to :meth:`ServiceMetrics.publish` every few batches, when the
stream is idle and at shutdown (values it already read from the learner, so that scraping never touches the
learner or its device); a collector turns the latest snapshot into metric families at scrape time. Only the
step latency is observed per batch, into a histogram (a few hundred nanoseconds).

Names follow Prometheus's conventions: base units as suffixes, ``_total`` on counters. Counters carry the
lifetime of the state directory (they continue after a restart from a checkpoint) unless said otherwise:

==============================================  ===================================================
``streammas_build_info``                        1, labelled ``version``, ``torch`` and ``device``
``streammas_samples_total``                     samples learned
``streammas_batches_total``                     batches processed
``streammas_rejected_samples_total``            samples turned away, by ``reason`` (``learner`` for
                                                the learner's own rejects of non-finite rows,
                                                ``learner_error`` for batches it failed on, the
                                                source's reasons otherwise)
``streammas_skipped_updates_total``             updates skipped, by ``cause`` (``nonfinite_loss``)
``streammas_clipped_samples_total``             finite samples clipped by ``input_clip``
``streammas_sink_failed_records_total``         records the sink could not deliver (lost)
``streammas_plateaus_total`` ...                plateaus, peaks, consolidations, recoveries
                                                (runaway weights restored to theta*)
``streammas_prequential_loss``                  moving average of the prequential (per-sample) loss
``streammas_importance``                        Omega by ``param`` and ``stat`` (mean, max), and overall; absent
                                                until a regime is consolidated (then it is a measurement)
``streammas_importance_samples``                samples measured since the last consolidation (0: not measured)
``streammas_step_seconds``                      histogram of the time of one learning step
``streammas_seconds_since_checkpoint``          NaN until the first checkpoint of this state directory
``streammas_checkpoints_total``                 checkpoints written in the state directory's life
``streammas_seconds_since_consolidation``       NaN until this process saw a consolidation
``streammas_source_backlog_samples``            samples waiting in the source, where it can tell
``streammas_source_events_total``               the source's own counts in this process, by ``event``
                                                (a broker source: ``entries``, ``acked``, ``broker_errors``,
                                                ...; a ZeroMQ source: ``messages``); rank 0's in a group
``process_*``                                   memory, CPU time, open files of the process (Linux)
==============================================  ===================================================

>>> m = ServiceMetrics(device="cpu")
>>> m.publish(Snapshot(samples=640, batches=20, rejected={"json": 2}, loss=0.125, consolidations=1))
>>> m.observe_step(0.002)
>>> text = m.render()
>>> 'streammas_samples_total 640.0' in text, 'streammas_rejected_samples_total{reason="json"} 2.0' in text
(True, True)
>>> 'streammas_prequential_loss 0.125' in text, 'streammas_step_seconds_count 1.0' in text
(True, True)
>>> 'streammas_seconds_since_consolidation NaN' in text, 'streammas_build_info{' in text
(True, True)
"""

from __future__ import annotations

import errno
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from streammas.backend.version import __version__
from streammas.service import logs

try:
    from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, generate_latest, start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
except ImportError:  # the service runs without it; only serving metrics needs it
    CollectorRegistry = None  # type: ignore[assignment,misc]
    Metric = Any  # type: ignore[assignment,misc]

#: One logger for the whole service: its name is part of every log line.
log = logging.getLogger("streammas.service")

STEP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class MetricsPortInUse(OSError):
    """Metrics cannot be served: the port is taken or cannot be bound (or prometheus-client is missing).

    Raised by :meth:`ServiceMetrics.serve`, with the ``errno`` of the failed bind; it is an ``OSError``.

    Examples
    --------
    >>> first = ServiceMetrics()
    >>> host, port = first.serve("127.0.0.1", 0)
    >>> try:
    ...     ServiceMetrics().serve(host, port)
    ... except MetricsPortInUse as e:
    ...     print(e.strerror.replace(str(port), "PORT"))
    ... finally:
    ...     first.close()
    metrics port 127.0.0.1:PORT is already in use
    >>> issubclass(MetricsPortInUse, OSError)
    True
    """


@dataclass
class Snapshot:
    """The values the metrics show, as plain numbers (read by the service at most every few batches).

    Counts are totals over the state directory's lifetime; :meth:`ServiceMetrics.publish` shows a snapshot
    until the next one.

    Parameters
    ----------
    samples : int, default 0
        Samples learned.
    batches : int, default 0
        Batches processed.
    rejected : dict of str to int, default {}
        Samples turned away, by reason (``learner`` for the learner's own rejects, the source's reasons
        otherwise).
    loss : float or None, default None
        Moving average of the prequential loss (``None``: none yet, shown as NaN).
    plateaus : int, default 0
        Plateaus the detector found.
    peaks : int, default 0
        Loss peaks the detector found.
    consolidations : int, default 0
        Consolidations of the importance.
    skipped_updates : int, default 0
        Updates skipped for a non-finite loss (cause ``nonfinite_loss``).
    recoveries : int, default 0
        Runaway weights restored to theta*.
    importance : dict of str to (float, float), default {}
        The consolidated importance (Omega) by parameter name: ``(mean, max)``.
    clipped_samples : int, default 0
        Finite samples the learner clipped to ``input_clip``.
    sink_failed : int, default 0
        Records the sink failed to write.
    backlog : int or None, default None
        Samples waiting in the source (``None``: the source cannot tell; the metric is left out).
    source_events : dict of str to int, default {}
        The source's own counters besides samples, batches and rejects (this process's).

    Examples
    --------
    >>> m = ServiceMetrics()
    >>> m.publish(Snapshot(samples=640, batches=20, plateaus=2, importance={"encoder.0.weight": (0.5, 2.0)},
    ...                    skipped_updates=3, backlog=7, source_events={"broker_errors": 2}))
    >>> text = m.render()
    >>> 'streammas_plateaus_total 2.0' in text, 'streammas_prequential_loss NaN' in text
    (True, True)
    >>> 'streammas_importance{param="encoder.0.weight",stat="max"} 2.0' in text
    True
    >>> 'streammas_skipped_updates_total{cause="nonfinite_loss"} 3.0' in text
    True
    >>> 'streammas_source_backlog_samples 7.0' in text
    True
    >>> 'streammas_source_events_total{event="broker_errors"} 2.0' in text
    True
    """

    samples: int = 0
    batches: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    loss: float | None = None
    plateaus: int = 0
    peaks: int = 0
    consolidations: int = 0
    skipped_updates: int = 0
    recoveries: int = 0
    importance: dict[str, tuple[float, float]] = field(default_factory=dict)  # param -> (mean, max)
    importance_samples: int = 0  # measured into the running importance since the last consolidation
    clipped_samples: int = 0
    sink_failed: int = 0
    backlog: int | None = None
    source_events: dict[str, int] = field(default_factory=dict)


def _age(when: float | None) -> float:
    return math.nan if when is None else max(0.0, time.time() - when)


def _torch_version() -> str:
    # Imported here, not at the top: `python -m streammas run` installs its signal handlers before torch loads.
    import torch

    return str(torch.__version__)


class _Collector:
    def __init__(self, owner: ServiceMetrics) -> None:
        self._owner = owner

    def collect(self) -> Iterator[Metric]:
        owner = self._owner
        snap = owner.snapshot
        build = GaugeMetricFamily("streammas_build_info", "The streammas and torch versions and the device; 1.",
                                  labels=["version", "torch", "device"])
        build.add_metric([__version__, _torch_version(), owner.device or "unknown"], 1)
        yield build
        yield self._counter("samples", "Samples learned.", snap.samples)
        yield self._counter("batches", "Batches processed.", snap.batches)
        rejected = CounterMetricFamily("streammas_rejected_samples", "Samples turned away, by reason.",
                                       labels=["reason"])
        # The learner's reasons are there from the start, at 0: rate() over a series not yet born is no data.
        for reason, count in sorted({"learner": 0, "learner_error": 0, **snap.rejected}.items()):
            rejected.add_metric([reason], count)
        yield rejected
        skipped = CounterMetricFamily("streammas_skipped_updates", "Updates skipped, by cause.", labels=["cause"])
        skipped.add_metric(["nonfinite_loss"], snap.skipped_updates)
        yield skipped
        yield self._counter("clipped_samples", "Finite samples clipped to input_clip.", snap.clipped_samples)
        yield self._counter("sink_failed_records", "Records the sink failed to write.", snap.sink_failed)
        for name in ("plateaus", "peaks", "consolidations", "recoveries"):
            yield self._counter(name, f"Learner events: {name}.", getattr(snap, name))
        yield GaugeMetricFamily("streammas_prequential_loss",
                                "Moving average of the per-sample prequential loss (before each update).",
                                value=math.nan if snap.loss is None else snap.loss)
        yield GaugeMetricFamily("streammas_importance_samples",
                                "Samples whose importance was measured since the last consolidation (0: not "
                                "measured).", value=snap.importance_samples)
        importance = GaugeMetricFamily("streammas_importance", "Consolidated importance (Omega) by parameter; "
                                       "absent until a regime is consolidated.",
                                       labels=["param", "stat"])
        for param, (mean, peak) in sorted(snap.importance.items()):
            importance.add_metric([param, "mean"], mean)
            importance.add_metric([param, "max"], peak)
        if snap.importance:
            means = [m for m, _ in snap.importance.values()]
            importance.add_metric(["all", "mean"], sum(means) / len(means))
            importance.add_metric(["all", "max"], max(p for _, p in snap.importance.values()))
        yield importance
        yield GaugeMetricFamily("streammas_seconds_since_checkpoint", "Seconds since the last checkpoint.",
                                value=_age(owner.last_checkpoint))
        yield self._counter("checkpoints", "Checkpoints written in the state directory's life.", owner.checkpoints)
        yield GaugeMetricFamily("streammas_seconds_since_consolidation",
                                "Seconds since the last consolidation this process saw.",
                                value=_age(owner.last_consolidation))
        events = CounterMetricFamily("streammas_source_events", "The source's own counts in this process.",
                                     labels=["event"])
        for event, count in sorted(snap.source_events.items()):
            events.add_metric([event], count)
        yield events
        if snap.backlog is not None:
            yield GaugeMetricFamily("streammas_source_backlog_samples", "Samples waiting in the source.",
                                    value=snap.backlog)

    @staticmethod
    def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
        return CounterMetricFamily(f"streammas_{name}", doc, value=value)


def warn_if_exposed(host: str, port: int) -> bool:
    """Log a warning when ``host`` is not a loopback address (anyone who reaches it can read the metrics);
    returns whether it warned.

    The same test and wording as a ZeroMQ socket bound without CurveZMQ.

    >>> warn_if_exposed("127.0.0.1", 9108), warn_if_exposed("localhost", 9108)
    (False, False)
    """
    from connectors.zmq.socket import is_loopback  # pyzmq loads only when a metrics endpoint is served

    if is_loopback(f"tcp://{host}:{port}"):
        return False
    logs.log_event(log, "metrics_exposed", logging.WARNING, address=f"{host}:{port}",
                   msg=f"{host}:{port}: unauthenticated metrics endpoint bound beyond the loopback interface; "
                       "anyone who can reach it can read it (set [metrics] host = \"127.0.0.1\" unless a firewall "
                       "or an authenticating proxy guards the port)")
    return True


class ServiceMetrics:
    """The service's metrics in a registry of their own, optionally served over HTTP (:meth:`serve`).

    The service publishes a :class:`Snapshot` every few batches (:meth:`publish`), observes each step's time
    (:meth:`observe_step`), counts checkpoints (:meth:`checkpoint_written`) and notes consolidations
    (:meth:`consolidated`); :meth:`render` is what a scrape of ``/metrics`` returns. The registry also holds
    prometheus-client's process collector (``process_*``). Without prometheus-client, publishing and
    observing still work (they do nothing visible) but :meth:`serve` raises :class:`MetricsPortInUse` and
    :meth:`render` ``RuntimeError``.

    Parameters
    ----------
    device : str or None, default None
        The device the learner runs on, for ``streammas_build_info`` (``None``: ``unknown`` until set through
        the attribute of the same name).

    Examples
    --------
    >>> import urllib.request
    >>> metrics = ServiceMetrics(device="cpu")
    >>> metrics.publish(Snapshot(samples=640, batches=20, loss=0.125))
    >>> metrics.checkpoint_written()
    >>> host, port = metrics.serve("127.0.0.1", 0)  # port 0: any free port
    >>> try:
    ...     with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
    ...         scraped = response.read().decode()
    ... finally:
    ...     metrics.close()
    >>> [line for line in scraped.splitlines() if line.startswith(("streammas_samples", "streammas_checkpoints"))]
    ['streammas_samples_total 640.0', 'streammas_checkpoints_total 1.0']
    >>> [line for line in scraped.splitlines() if line.startswith("streammas_build_info")][0].endswith("} 1.0")
    True
    >>> 'device="cpu"' in scraped
    True
    """

    def __init__(self, device: str | None = None) -> None:
        self.snapshot = Snapshot()
        self.device = device
        self.last_checkpoint: float | None = None
        self.last_consolidation: float | None = None
        self.checkpoints = 0
        self._lock = threading.Lock()
        self.registry = None
        self._step = None
        if CollectorRegistry is not None:
            self.registry = CollectorRegistry(auto_describe=False)
            self._step = Histogram("streammas_step_seconds", "Time of one learning step (score, update, importance).",
                                   buckets=STEP_BUCKETS, registry=self.registry)
            self.registry.register(_Collector(self))
            ProcessCollector(registry=self.registry)
        self._server = None
        self._thread: threading.Thread | None = None
        self.address: tuple[str, int] | None = None

    def serve(self, host: str = "127.0.0.1", port: int = 9108) -> tuple[str, int]:
        """Serve ``/metrics`` on ``host:port`` (port 0: any free port); returns the address bound.

        A host other than a loopback address logs a warning (:func:`warn_if_exposed`)."""
        if self.registry is None:
            raise MetricsPortInUse(0, "serving metrics needs prometheus-client: pip install 'streammas[service]'")
        try:
            result = start_http_server(port, addr=host, registry=self.registry)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise MetricsPortInUse(e.errno, f"metrics port {host}:{port} is already in use") from None
            raise MetricsPortInUse(e.errno, f"cannot serve metrics on {host}:{port}: {e.strerror or e}") from None
        if isinstance(result, tuple):
            self._server, self._thread = result
            self.address = self._server.server_address[:2]
        else:  # pragma: no cover - prometheus-client < 0.20 returns nothing
            self.address = (host, port)
        warn_if_exposed(host, self.address[1])
        return self.address

    def publish(self, snapshot: Snapshot) -> None:
        """Show ``snapshot`` from now on (a reference swap; scrapes read whole snapshots)."""
        self.snapshot = snapshot

    def observe_step(self, seconds: float) -> None:
        if self._step is not None:
            self._step.observe(seconds)

    def checkpoint_written(self, when: float | None = None) -> None:
        with self._lock:
            self.checkpoints += 1
            self.last_checkpoint = time.time() if when is None else when

    def consolidated(self, when: float | None = None) -> None:
        """Note a consolidation (now, or at ``when``), for ``streammas_seconds_since_consolidation``."""
        self.last_consolidation = time.time() if when is None else when

    def render(self) -> str:
        """The text exposition format, as a scrape would see it."""
        if self.registry is None:
            raise RuntimeError("prometheus-client is not installed")
        return generate_latest(self.registry).decode()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
