"""The sections of what the service learns from and what it trains: ``[source]`` and ``[model]``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from connectors.registry import split_uri
from connectors.samples import MAX_SAMPLE_NDIM
from streammas.config.keys import spec
from streammas.learner.settings import non_negative, positive

MODEL_KINDS = ("mlp-autoencoder", "conv-autoencoder")
READERS = ("auto", "process", "inline")
#: The schemes whose files a reader process parses (the others cost little to read, or are not files).
READ_AHEAD_SCHEMES = ("csv", "jsonl")


def _sample_shape(value: Any) -> str | None:
    ok = 1 <= len(value) <= MAX_SAMPLE_NDIM and all(type(d) is int and d > 0 for d in value)
    return None if ok else f"must be a list of 1 to {MAX_SAMPLE_NDIM} sizes > 0, e.g. [784] or [1, 28, 28]"


def _factory_spec(value: Any) -> str | None:
    module, sep, attr = value.partition(":")
    if not sep or not module or not attr:
        return "must look like \"package.module:function\""
    return None


def usable_cores() -> float:
    """The cores this process may run on: its CPU affinity, bounded by a cgroup v2 CPU quota (a container's).

    >>> usable_cores() >= 1
    True
    """
    try:
        cores: float = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, int(quota) / int(period))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to read
    return max(cores, 1.0)


@dataclass
class SourceConfig:
    """``[source]``: where samples come from.

    Parameters
    ----------
    uri : str
        The source's URI (required): ``zmq+pull://127.0.0.1:5555``, ``csv:data.csv``, ``jsonl:``, ``npy:`` or
        ``npz:`` paths, or a plug-in's scheme (see :func:`connectors.registry.open_source`).
    batch_size : int, default 32
        Samples per micro-batch (> 0).
    max_latency_ms : float, default 50.0
        A batch is cut after this wait even when it is not full (>= 0).
    resume : bool, default True
        Continue a file source from the checkpoint's position.
    sample_shape : list of int or None, default None
        The shape of one sample, e.g. ``[784]`` or ``[1, 28, 28]``, for the sources that take it (ZeroMQ,
        JSON Lines): samples of any other shape are rejected from the first message on (``None``: the first
        samples taken decide, so that a stray first message can fix a wrong shape).
    drain_seconds : float, default 5.0
        On SIGTERM, learn what the source already holds (a ZeroMQ socket's queue), a batch at a time, for at
        most this long (reading and learning together) before the final checkpoint; what is left is counted
        (``dropped_at_shutdown``; with 0, all of it).
    reader : {"auto", "process", "inline"}, default "auto"
        Where a CSV or JSON Lines file is read and parsed: ``"process"``, a child process reading ahead, so that
        parsing runs on another core than the learning (:class:`connectors.prefetch.ProcessSource`);
        ``"inline"``, the loop's own thread; ``"auto"``, a process where the machine has a core to spare for each
        worker's reader. Other sources are always read inline.
    options : dict, default {}
        The connector's own options (``columns``, ``follow``, ``label`` ...; ``streammas run --help-config`` lists
        each connector's, with their defaults).

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> cfg = parse_config('[source]\\nuri = "csv:data.csv"\\noptions = {label = "y"}\\n')
    >>> cfg.source
    SourceConfig(uri='csv:data.csv', batch_size=32, max_latency_ms=50.0, resume=True, sample_shape=None, \
drain_seconds=5.0, reader='auto', options={'label': 'y'})
    >>> cfg = parse_config('[source]\\nuri = "zmq+pull://127.0.0.1:5555"\\nsample_shape = [64]\\n')
    >>> cfg.source.connector_options()
    {'sample_shape': [64]}
    >>> parse_config('[source]\\nuri = "zmq+pull://127.0.0.1:5555"\\nsample_shape = [8, 0]\\n')
    Traceback (most recent call last):
        ...
    streammas.config.ConfigError: [source] sample_shape must be a list of 1 to 8 sizes > 0, e.g. [784] or \
[1, 28, 28]; got [8, 0]
    >>> parse_config('[source]\\nuri = "csv:data.csv"\\nbatch_size = "8"\\n')
    Traceback (most recent call last):
        ...
    streammas.config.ConfigError: [source] batch_size must be an integer, got string '8'
    """

    uri: str = spec(help="source URI: zmq+pull://127.0.0.1:5555, csv:data.csv, jsonl:, npy:, npz: paths")
    batch_size: int = spec(32, help="samples per micro-batch", check=positive)
    max_latency_ms: float = spec(50.0, help="a batch is cut after this wait even when not full",
                                 check=non_negative)
    resume: bool = spec(True, help="continue a file source from the checkpoint's position")
    sample_shape: list | None = spec(None, help="shape of one sample, e.g. [784]; other shapes are rejected "
                                                "(unset: the first samples decide; ZeroMQ and JSON Lines)",
                                     check=_sample_shape)
    drain_seconds: float = spec(5.0, help="on SIGTERM, learn what the source already holds, for at most this "
                                          "long, reading and learning (0: only count it)", check=non_negative)
    reader: str = spec("auto", help="where a csv: or jsonl: file is parsed: a child process reading ahead, or "
                                    "the loop's thread (auto: a process where a core is spare)",
                       choices=READERS)
    options: dict = spec(help="the connector's own options, e.g. { columns = [\"a\", \"b\"] } (listed below)",
                         factory=dict)

    def reads_ahead(self, world_size: int = 1) -> bool:
        """Whether the source is read by a child process (``reader``), for one worker of a group of ``world_size``
        (those on this machine: torchrun's ``LOCAL_WORLD_SIZE`` where it is set, else all of them).

        >>> from streammas.config import parse_config
        >>> parse_config('[source]\\nuri = "data.csv"\\nreader = "process"\\n').source.reads_ahead()
        True
        >>> parse_config('[source]\\nuri = "zmq+pull://127.0.0.1:5555"\\nreader = "process"\\n').source.reads_ahead()
        False
        """
        try:
            scheme = split_uri(self.uri)[0]
        except ValueError:
            return False
        if self.reader == "inline" or scheme not in READ_AHEAD_SCHEMES:
            return False
        if self.reader == "process":
            return True
        workers = int(os.environ.get("LOCAL_WORLD_SIZE") or world_size)
        return usable_cores() >= 2 * workers  # a core to learn and one to parse, for each worker

    def connector_options(self) -> dict[str, Any]:
        """The keyword arguments for the connector: ``options``, with ``sample_shape`` when it is set."""
        if self.sample_shape is None:
            return dict(self.options)
        return {**self.options, "sample_shape": list(self.sample_shape)}


@dataclass
class ModelConfig:
    """``[model]``: a built-in model sized from the first sample, or a factory of your own.

    Give ``kind`` or ``factory``, not both; with neither, the model is an ``mlp-autoencoder``.

    Parameters
    ----------
    kind : str or None, default None
        A built-in model: ``"mlp-autoencoder"`` (the default) or ``"conv-autoencoder"``.
    factory : str or None, default None
        ``"package.module:function"``, called as ``function(sample_shape, **options)`` to build the model.
    options : dict, default {}
        Keyword arguments for the built-in model or the factory.
    max_parameters : int, default 20_000_000
        The largest model the service builds (0: no bound). Where the stream's first samples decide the shape,
        a model over it is refused, the batch counted (reason ``model``) and the stream goes on, so that one
        message cannot make the daemon allocate what it cannot hold; counted without allocating anything.

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> ModelConfig().name, ModelConfig(factory="mypkg.models:build").name
    ('mlp-autoencoder', 'mypkg.models:build')
    >>> cfg = parse_config('[source]\\nuri = "csv:a.csv"\\n[model]\\nkind = "conv-autoencoder"\\n')
    >>> cfg.model
    ModelConfig(kind='conv-autoencoder', factory=None, options={}, max_parameters=20000000)
    >>> parse_config('[source]\\nuri = "csv:a.csv"\\n[model]\\nfactory = "build"\\n')
    Traceback (most recent call last):
        ...
    streammas.config.ConfigError: [model] factory must look like "package.module:function"; got 'build'
    """

    kind: str | None = spec(None, help="built-in model (default mlp-autoencoder)", choices=MODEL_KINDS)
    factory: str | None = spec(None, help="\"package.module:function\" called as function(sample_shape, **options)",
                               check=_factory_spec)
    options: dict = spec(help="keyword arguments for the built-in model or the factory", factory=dict)
    max_parameters: int = spec(20_000_000, help="the largest model built (0: no bound); where the stream decides "
                                                "the shape, a larger one is refused and its batch counted",
                               check=non_negative)

    @property
    def name(self) -> str:
        """What builds the model: the factory's spec or the built-in kind."""
        return self.factory or self.kind or MODEL_KINDS[0]

