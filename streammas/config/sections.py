"""The configuration's schema: one dataclass per section, each key with its default, checks and help.

The ``[learner]`` and ``[learner.plateau]`` sections are derived from the learner's own settings
(:class:`~streammas.learner.settings.LearnerSettings`, :class:`~streammas.learner.plateau.PlateauConfig`): the
same keys, defaults, checks and help, so that a new learner setting needs no edit here.

Examples
--------
>>> LearnerConfig().lr is None, [f.name for f in dataclasses.fields(StateConfig)]
(True, ['dir', 'every_samples', 'every_seconds', 'keep', 'start_fresh'])
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from connectors.samples import MAX_SAMPLE_NDIM
from streammas.config.distributed import DistributedConfig
from streammas.learner.plateau import PlateauConfig
from streammas.learner.settings import LearnerSettings, non_negative, positive

MODEL_KINDS = ("mlp-autoencoder", "conv-autoencoder")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key at fault and what it accepts.

    Raised by :func:`parse_config`, :func:`load_config`, :func:`validate` and the override helpers. It is a
    ``ValueError``, so callers that catch those catch it too; ``streammas run`` prints it and exits with
    status 2.

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> parse_config('[source]\\nuri = "csv:a.csv"\\n[state]\\nkeep = 0\\n')
    Traceback (most recent call last):
        ...
    streammas.config.ConfigError: [state] keep must be > 0; got 0
    >>> issubclass(ConfigError, ValueError)
    True
    """


def _spec(default: Any = dataclasses.MISSING, *, help: str = "", choices: tuple | None = None,
          check: Callable[[Any], str | None] | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A configuration key: its default, a one-line help, accepted values and an extra check."""
    meta = {"help": help, "choices": choices, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "must be a TCP port between 0 and 65535 (0: any free port)"


def _sample_shape(value: Any) -> str | None:
    ok = 1 <= len(value) <= MAX_SAMPLE_NDIM and all(type(d) is int and d > 0 for d in value)
    return None if ok else f"must be a list of 1 to {MAX_SAMPLE_NDIM} sizes > 0, e.g. [784] or [1, 28, 28]"


def _factory_spec(value: Any) -> str | None:
    module, sep, attr = value.partition(":")
    if not sep or not module or not attr:
        return "must look like \"package.module:function\""
    return None


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
        On SIGTERM, read what the source already holds (a ZeroMQ socket's queue) for at most this long and
        learn it before the final checkpoint; what is left is counted (``dropped_at_shutdown``; with 0, all of it).
    options : dict, default {}
        Extra keyword arguments for the connector (``follow``, ``label`` ...).

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> cfg = parse_config('[source]\\nuri = "csv:data.csv"\\noptions = {label = "y"}\\n')
    >>> cfg.source
    SourceConfig(uri='csv:data.csv', batch_size=32, max_latency_ms=50.0, resume=True, sample_shape=None, \
drain_seconds=5.0, options={'label': 'y'})
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

    uri: str = _spec(help="source URI: zmq+pull://127.0.0.1:5555, csv:data.csv, jsonl:, npy:, npz: paths")
    batch_size: int = _spec(32, help="samples per micro-batch", check=positive)
    max_latency_ms: float = _spec(50.0, help="a batch is cut after this wait even when not full",
                                  check=non_negative)
    resume: bool = _spec(True, help="continue a file source from the checkpoint's position")
    sample_shape: list | None = _spec(None, help="shape of one sample, e.g. [784]; other shapes are rejected "
                                                 "(unset: the first samples decide; ZeroMQ and JSON Lines)",
                                      check=_sample_shape)
    drain_seconds: float = _spec(5.0, help="on SIGTERM, learn what the source already holds, for at most this "
                                           "long (0: only count it)", check=non_negative)
    options: dict = _spec(help="extra keyword arguments for the connector (follow, label)", factory=dict)

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

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> ModelConfig().name, ModelConfig(factory="mypkg.models:build").name
    ('mlp-autoencoder', 'mypkg.models:build')
    >>> cfg = parse_config('[source]\\nuri = "csv:a.csv"\\n[model]\\nkind = "conv-autoencoder"\\n')
    >>> cfg.model
    ModelConfig(kind='conv-autoencoder', factory=None, options={})
    >>> parse_config('[source]\\nuri = "csv:a.csv"\\n[model]\\nfactory = "build"\\n')
    Traceback (most recent call last):
        ...
    streammas.config.ConfigError: [model] factory must look like "package.module:function"; got 'build'
    """

    kind: str | None = _spec(None, help="built-in model (default mlp-autoencoder)", choices=MODEL_KINDS)
    factory: str | None = _spec(None, help="\"package.module:function\" called as function(sample_shape, **options)",
                                check=_factory_spec)
    options: dict = _spec(help="keyword arguments for the built-in model or the factory", factory=dict)

    @property
    def name(self) -> str:
        """What builds the model: the factory's spec or the built-in kind."""
        return self.factory or self.kind or MODEL_KINDS[0]


def _derived(name: str, settings: type, doc: str, *, service_defaults: Mapping[str, Any] | None = None,
             extra: list[tuple[str, Any, Any]] = (), methods: Mapping[str, Any] | None = None) -> type:
    """A configuration section made from a settings dataclass: the same keys, checks, choices and help, each key
    unset (the settings' own default applies) unless the service has a default of its own."""
    hints = typing.get_type_hints(settings)
    service_defaults = service_defaults or {}
    made = []
    for f in dataclasses.fields(settings):
        if not f.metadata.get("in_config", True):
            continue
        kind = f.metadata.get("toml") or hints[f.name]
        meta = {**f.metadata, "shown": f.default}
        made.append((f.name, kind | None, field(default=service_defaults.get(f.name), metadata=meta)))
    section = dataclasses.make_dataclass(name, [*made, *extra], namespace=dict(methods or {}))
    section.__doc__ = doc
    section.__module__ = __name__
    return section


PlateauSection = _derived("PlateauSection", PlateauConfig,
                          "``[learner.plateau]``: detector settings; keys left out keep the learner's defaults.")


def _learner_kwargs(self) -> dict[str, Any]:
    """Keyword arguments for :class:`~streammas.OnlineMAS` (the keys that were set)."""
    skip = {"device", "threads", "seed", "plateau"}
    kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if f.name not in skip and getattr(self, f.name) is not None}
    plateau = {k: v for k, v in dataclasses.asdict(self.plateau).items() if v is not None}
    if plateau:
        kwargs["plateau"] = plateau
    return kwargs


LearnerConfig = _derived(
    "LearnerConfig", LearnerSettings,
    "``[learner]``: the :class:`~streammas.OnlineMAS` settings; keys left out keep the learner's defaults.",
    service_defaults={"objective": "reconstruction", "on_bad_input": "skip"},
    extra=[
        ("device", str, _spec("auto", help="auto (cuda when there is one), cpu, cuda, cuda:1")),
        ("threads", int, _spec(1, help="torch CPU threads (0: torch's default, one per core; micro-batches of a "
                                       "small model run best on one, and a producer on the same machine keeps its "
                                       "cores)", check=non_negative)),
        ("seed", int, _spec(0, help="seed for the model's initial weights")),
        ("plateau", PlateauSection, _spec(help="[learner.plateau] detector settings", factory=PlateauSection)),
    ],
    methods={"learner_kwargs": _learner_kwargs},
)


@dataclass
class SinkConfig:
    """``[sink]``: where each sample's prequential score goes (optional).

    Parameters
    ----------
    uri : str or None, default None
        The sink's URI: ``jsonl:scores.jsonl``, ``jsonl:-`` (standard output), ``zmq+pub://127.0.0.1:5556``
        (``None``: no sink).
    events : bool, default True
        Attach the learner's events (plateau, consolidation ...) to the records.
    options : dict, default {}
        Extra keyword arguments for the connector.

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> cfg = parse_config('[source]\\nuri = "csv:a.csv"\\n[sink]\\nuri = "jsonl:-"\\n')
    >>> cfg.sink
    SinkConfig(uri='jsonl:-', events=True, options={})
    >>> SinkConfig().uri is None  # no sink unless one is given
    True
    """

    uri: str | None = _spec(None, help="sink URI: jsonl:scores.jsonl, jsonl:-, zmq+pub://127.0.0.1:5556")
    events: bool = _spec(True, help="attach the learner's events (plateau, consolidation ...) to the records")
    options: dict = _spec(help="extra keyword arguments for the connector", factory=dict)


@dataclass
class StateConfig:
    """``[state]``: checkpoints.

    Parameters
    ----------
    dir : str, default "state"
        The directory of checkpoints (one service per directory).
    every_samples : int, default 10000
        Checkpoint after this many samples learned (0: never).
    every_seconds : float, default 60.0
        Checkpoint after this many seconds with new samples (0: never).
    keep : int, default 3
        How many checkpoints are kept (> 0).
    start_fresh : bool, default False
        When the directory holds checkpoints but every one is damaged, rename them to ``*.corrupt`` and start
        over; off, the service refuses to start (exit status 2) rather than learn everything again. It never
        discards a valid checkpoint.

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> cfg = parse_config('[source]\\nuri = "csv:a.csv"\\n', overrides={"state.dir": "/tmp/s", "state.keep": 5})
    >>> cfg.state
    StateConfig(dir='/tmp/s', every_samples=10000, every_seconds=60.0, keep=5, start_fresh=False)
    """

    dir: str = _spec("state", help="directory of checkpoints (one service per directory)")
    every_samples: int = _spec(10000, help="checkpoint after this many samples learned (0: never)",
                               check=non_negative)
    every_seconds: float = _spec(60.0, help="checkpoint after this many seconds with new samples (0: never)",
                                 check=non_negative)
    keep: int = _spec(3, help="checkpoints kept", check=positive)
    start_fresh: bool = _spec(False, help="when every checkpoint is damaged, set them aside (*.corrupt) and start "
                                          "over instead of refusing to start")


@dataclass
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (off unless a port is given).

    Parameters
    ----------
    port : int or None, default None
        Serve ``/metrics`` on this TCP port (0: any free port; ``None``: no endpoint).
    host : str, default "127.0.0.1"
        The interface to serve on.
    every_batches : int, default 20
        Read the learner's values for metrics and status every this many batches (> 0).

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> parse_config('[source]\\nuri = "csv:a.csv"\\n[metrics]\\nport = 9100\\n').metrics
    MetricsConfig(port=9100, host='127.0.0.1', every_batches=20)
    >>> parse_config('[source]\\nuri = "csv:a.csv"\\n[metrics]\\nport = 70000\\n')
    Traceback (most recent call last):
        ...
    streammas.config.ConfigError: [metrics] port must be a TCP port between 0 and 65535 (0: any free port); got 70000
    """

    port: int | None = _spec(None, help="serve /metrics on this port", check=_port)
    host: str = _spec("127.0.0.1", help="interface to serve on")
    every_batches: int = _spec(20, help="read the learner's values for metrics and status every this many batches",
                               check=positive)


@dataclass
class LogConfig:
    """``[log]``: log lines and progress.

    Parameters
    ----------
    level : str, default "info"
        The log level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.
    format : str, default "text"
        ``"text"`` (``key=value`` lines) or ``"json"`` (JSON lines).
    status_every_seconds : float, default 30.0
        Seconds between two status lines (0: none).
    progress : str, default "auto"
        The progress bar: ``"auto"`` (a terminal and a finite source), ``"always"`` or ``"never"``.

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> parse_config('[source]\\nuri = "csv:a.csv"\\n[log]\\nformat = "json"\\n').log
    LogConfig(level='info', format='json', status_every_seconds=30.0, progress='auto')
    >>> parse_config('[source]\\nuri = "csv:a.csv"\\n[log]\\nformat = "xml"\\n')
    Traceback (most recent call last):
        ...
    streammas.config.ConfigError: [log] format must be one of 'text', 'json'; got 'xml'
    """

    level: str = _spec("info", help="log level", choices=("debug", "info", "warning", "error"))
    format: str = _spec("text", help="text (key=value) or json lines", choices=("text", "json"))
    status_every_seconds: float = _spec(30.0, help="status line interval (0: none)", check=non_negative)
    progress: str = _spec("auto", help="progress bar: auto (a terminal and a finite source), always, never",
                          choices=("auto", "always", "never"))


@dataclass
class Config:
    """The whole configuration; build it with :func:`load_config` or :func:`parse_config`.

    Those validate every key; building a ``Config`` directly checks nothing.

    Parameters
    ----------
    source : SourceConfig
        ``[source]``: where samples come from.
    model : ModelConfig, default ModelConfig()
        ``[model]``: the model the learner trains.
    learner : LearnerConfig, default LearnerConfig()
        ``[learner]``: the :class:`~streammas.OnlineMAS` settings (keys left out keep the learner's
        defaults), ``device``, ``threads``, ``seed`` and ``[learner.plateau]``.
    sink : SinkConfig, default SinkConfig()
        ``[sink]``: where the scores go.
    state : StateConfig, default StateConfig()
        ``[state]``: checkpoints.
    metrics : MetricsConfig, default MetricsConfig()
        ``[metrics]``: the Prometheus endpoint.
    log : LogConfig, default LogConfig()
        ``[log]``: log lines and progress.
    distributed : DistributedConfig, default DistributedConfig()
        ``[distributed]``: several workers learning together (:mod:`streammas.config.distributed`).
    path : str or None, default None
        The file the configuration was read from (``None``: none).

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> cfg = parse_config('[source]\\nuri = "csv:a.csv"\\n[learner]\\nlr = 0.01\\n')
    >>> cfg.learner.lr, cfg.learner.learner_kwargs()
    (0.01, {'objective': 'reconstruction', 'lr': 0.01, 'on_bad_input': 'skip'})
    >>> cfg.as_dict()["state"]
    {'dir': 'state', 'every_samples': 10000, 'every_seconds': 60.0, 'keep': 3, 'start_fresh': False}
    >>> Config(SourceConfig(uri="csv:a.csv")).model.name
    'mlp-autoencoder'
    """

    source: SourceConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    state: StateConfig = field(default_factory=StateConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data (``None`` values left out, as TOML has no null)."""
        return _drop_none({f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)
                           if f.name != "path"})


SECTIONS: dict[str, type] = {"source": SourceConfig, "model": ModelConfig, "learner": LearnerConfig, "sink": SinkConfig,
            "state": StateConfig, "metrics": MetricsConfig, "log": LogConfig, "distributed": DistributedConfig}


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


ConfigError.__module__ = "streammas.config"  # where users import it from, as tracebacks show it
