"""The service's TOML configuration: the schema, validation with messages that name the key, and overrides.

A configuration is a TOML file with the sections ``[source]``, ``[model]``, ``[learner]`` (with an optional
``[learner.plateau]`` table), ``[sink]``, ``[state]``, ``[metrics]`` and ``[log]``. Only ``[source] uri`` is
required; every other key has a default. An unknown section or key, a value of the wrong type or outside its
accepted values, and a missing required key raise :class:`ConfigError`, whose message names the key and the
accepted ones; ``streammas run`` prints it and exits with status 2.

Overrides (command-line flags) are ``"section.key"`` (or ``"learner.plateau.key"``) -> value pairs applied on
top of the file before validation, so a flag is checked exactly like the key it replaces.

Relative paths (the state directory, file URIs) are relative to the working directory of the process.

>>> cfg = parse_config('''
... [source]
... uri = "zmq+pull://127.0.0.1:5555"
... [learner]
... lr = 0.05
... ''', overrides={"state.dir": "/tmp/state"})
>>> cfg.source.uri, cfg.source.batch_size, cfg.learner.lr, cfg.state.dir
('zmq+pull://127.0.0.1:5555', 32, 0.05, '/tmp/state')
>>> parse_config('[source]\\nuri = "csv:a.csv"\\nbatchsize = 8\\n')
Traceback (most recent call last):
...
streammas.config.ConfigError: [source] unknown key 'batchsize'; accepted keys: uri, batch_size, ...
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

MODEL_KINDS = ("mlp-autoencoder", "conv-autoencoder")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the key at fault and what it accepts."""


def _spec(default: Any = dataclasses.MISSING, *, help: str = "", choices: tuple | None = None,
          check: Callable[[Any], str | None] | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A configuration key: its default, a one-line help, accepted values and an extra check."""
    meta = {"help": help, "choices": choices, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _decay(value: Any) -> str | None:
    return None if 0 < value <= 1 else "must be in (0, 1]"


def _port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "must be a TCP port between 0 and 65535 (0: any free port)"


def _factory_spec(value: Any) -> str | None:
    module, sep, attr = value.partition(":")
    if not sep or not module or not attr:
        return "must look like \"package.module:function\""
    return None


@dataclass
class SourceConfig:
    """``[source]``: where samples come from."""

    uri: str = _spec(help="source URI: zmq+pull://127.0.0.1:5555, csv:data.csv, jsonl:, npy:, npz: paths")
    batch_size: int = _spec(32, help="samples per micro-batch", check=_positive)
    max_latency_ms: float = _spec(50.0, help="a batch is cut after this wait even when not full",
                                  check=_non_negative)
    resume: bool = _spec(True, help="continue a file source from the checkpoint's position")
    options: dict = _spec(help="extra keyword arguments for the connector (follow, label)", factory=dict)


@dataclass
class ModelConfig:
    """``[model]``: a built-in model sized from the first sample, or a factory of your own."""

    kind: str | None = _spec(None, help="built-in model (default mlp-autoencoder)", choices=MODEL_KINDS)
    factory: str | None = _spec(None, help="\"package.module:function\" called as function(sample_shape, **options)",
                                check=_factory_spec)
    options: dict = _spec(help="keyword arguments for the built-in model or the factory", factory=dict)

    @property
    def name(self) -> str:
        """What builds the model: the factory's spec or the built-in kind."""
        return self.factory or self.kind or MODEL_KINDS[0]


@dataclass
class PlateauSection:
    """``[learner.plateau]``: detector settings; keys left out keep the learner's defaults."""

    window: int | None = _spec(None, help="losses in the sliding window (its median is the statistic)",
                               check=_positive)
    min_drop: float | None = _spec(None, help="a plateau's median must be this fraction below the peak",
                                   check=_non_negative)
    rearm_share: float | None = _spec(None, help="after a peak, recovering this share of its rise (in log) is low "
                                                 "enough too", check=_non_negative)
    patience: int | None = _spec(None, help="steps in a row the median must stay that low", check=_positive)
    progress_steps: int | None = _spec(None, help="steps over which the remaining progress is measured",
                                       check=_positive)
    progress_share: float | None = _spec(None, help="a plateau: the median fell by less than this share of its drop "
                                                    "over progress_steps", check=_non_negative)
    peak_rise: float | None = _spec(None, help="rise (a fraction) above the plateau's level that is a peak",
                                    check=_non_negative)
    peak_z: float | None = _spec(None, help="a peak also rises this many of the level's standard deviations",
                                 check=_non_negative)
    peak_persist: int | None = _spec(None, help="steps in a row a peak's rise must last", check=_positive)
    level_steps: int | None = _spec(None, help="time constant (steps) of the plateau level's tracking",
                                    check=_positive)
    hold_rise: float | None = _spec(None, help="rise (a fraction) of the latest losses while a plateau still holds",
                                    check=_non_negative)
    hold_recent: int | None = _spec(None, help="latest losses the hold test averages", check=_positive)
    rule: str | None = _spec(None, help="relative (scale-free) or absolute", choices=("relative", "absolute"))
    mean_threshold: float | None = _spec(None, help="absolute rule: window mean threshold")
    var_threshold: float | None = _spec(None, help="absolute rule: window variance threshold")


@dataclass
class LearnerConfig:
    """``[learner]``: the :class:`~streammas.OnlineMAS` settings; keys left out keep the learner's defaults."""

    objective: str = _spec("reconstruction", help="what the model learns",
                           choices=("reconstruction", "classification"))
    optimizer: str | None = _spec(None, help="optimizer", choices=("sgd", "adam"))
    lr: float | None = _spec(None, help="learning rate", check=_positive)
    reg_lambda: float | None = _spec(None, help="strength of the regulariser; 0 disables it", check=_non_negative)
    hard_buffer: int | None = _spec(None, help="hard buffer size; 0 disables it", check=_non_negative)
    hard_buffer_decay: float | None = _spec(None, help="a held sample competes with at most its last key times this "
                                            "(1: it stays while its loss is among the highest)", check=_decay)
    importance_every: int | None = _spec(None, help="measure importance on every k-th batch", check=_positive)
    importance_source: str | None = _spec(None, help="where importance is measured", choices=("stream", "buffer"))
    importance_method: str | None = _spec(None, help="importance estimator (auto, hebbian, or one the learner knows)")
    importance_output: str | None = _spec(None, help="submodule whose output sensitivity is measured")
    consolidation: str | None = _spec(None, help="how each regime enters Omega", choices=("mean", "sum", "ema"))
    ema_alpha: float | None = _spec(None, help="weight of a new regime with consolidation = \"ema\"",
                                    check=_positive)
    omega_normalization: str | None = _spec(None, help="rescaling of a regime's importance",
                                            choices=("mean", "max", "tensor", "none"))
    consolidate_at: str | None = _spec(None, help="consolidate at the plateau or at the next peak",
                                       choices=("plateau", "peak"))
    steps_per_batch: int | None = _spec(None, help="optimisation steps per batch", check=_positive)
    sync_every: int | None = _spec(None, help="the learner reads device values every this many steps",
                                   check=_positive)
    prox_every: int | None = _spec(None, help="apply the regulariser's proximal step every this many steps",
                                   check=_positive)
    fused_step: bool | None = _spec(None, help="the hand-derived step for chains of linear layers and activations "
                                    "(false: always autograd)")
    compact_state: bool | None = _spec(None, help="keep Omega and a plateau's weights in bfloat16 (false: in the "
                                       "parameters' dtype)")
    recover_after: int | None = _spec(None, help="restore theta* after this many updates in a row skipped for a "
                                      "non-finite loss, if the weights have diverged (0: never)",
                                      check=_non_negative)
    on_bad_input: str = _spec("skip", help="skip (and count) or raise on bad samples", choices=("skip", "raise"))
    device: str = _spec("auto", help="auto (cuda when there is one), cpu, cuda, cuda:1")
    threads: int = _spec(1, help="torch CPU threads (0: torch's default, one per core; micro-batches of a small "
                               "model run best on one, and a producer on the same machine keeps its cores)",
                         check=_non_negative)
    seed: int = _spec(0, help="seed for the model's initial weights")
    plateau: PlateauSection = _spec(help="[learner.plateau] detector settings", factory=PlateauSection)

    def learner_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`~streammas.OnlineMAS` (the keys that were set)."""
        skip = {"device", "threads", "seed", "plateau"}
        kwargs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in skip and getattr(self, f.name) is not None}
        plateau = {k: v for k, v in dataclasses.asdict(self.plateau).items() if v is not None}
        if plateau:
            kwargs["plateau"] = plateau
        return kwargs


@dataclass
class SinkConfig:
    """``[sink]``: where each sample's prequential score goes (optional)."""

    uri: str | None = _spec(None, help="sink URI: jsonl:scores.jsonl, jsonl:-, zmq+pub://127.0.0.1:5556")
    events: bool = _spec(True, help="attach the learner's events (plateau, consolidation ...) to the records")
    options: dict = _spec(help="extra keyword arguments for the connector", factory=dict)


@dataclass
class StateConfig:
    """``[state]``: checkpoints."""

    dir: str = _spec("state", help="directory of checkpoints (one service per directory)")
    every_samples: int = _spec(10000, help="checkpoint after this many samples learned (0: never)",
                               check=_non_negative)
    every_seconds: float = _spec(60.0, help="checkpoint after this many seconds with new samples (0: never)",
                                 check=_non_negative)
    keep: int = _spec(3, help="checkpoints kept", check=_positive)


@dataclass
class MetricsConfig:
    """``[metrics]``: the Prometheus endpoint (off unless a port is given)."""

    port: int | None = _spec(None, help="serve /metrics on this port", check=_port)
    host: str = _spec("127.0.0.1", help="interface to serve on")
    every_batches: int = _spec(20, help="read the learner's values for metrics and status every this many batches",
                               check=_positive)


@dataclass
class LogConfig:
    """``[log]``: log lines and progress."""

    level: str = _spec("info", help="log level", choices=("debug", "info", "warning", "error"))
    format: str = _spec("text", help="text (key=value) or json lines", choices=("text", "json"))
    status_every_seconds: float = _spec(30.0, help="status line interval (0: none)", check=_non_negative)
    progress: str = _spec("auto", help="progress bar: auto (a terminal and a finite source), always, never",
                          choices=("auto", "always", "never"))


@dataclass
class Config:
    """The whole configuration; build it with :func:`load_config` or :func:`parse_config`."""

    source: SourceConfig
    model: ModelConfig = field(default_factory=ModelConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    sink: SinkConfig = field(default_factory=SinkConfig)
    state: StateConfig = field(default_factory=StateConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    log: LogConfig = field(default_factory=LogConfig)
    path: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The effective configuration as plain data (``None`` values left out, as TOML has no null)."""
        return _drop_none({f.name: dataclasses.asdict(getattr(self, f.name)) for f in dataclasses.fields(self)
                           if f.name != "path"})


SECTIONS: dict[str, type] = {"source": SourceConfig, "model": ModelConfig, "learner": LearnerConfig, "sink": SinkConfig,
            "state": StateConfig, "metrics": MetricsConfig, "log": LogConfig}


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value


# -- validation -------------------------------------------------------------------------------------------------
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}


def _accepted(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "table", list: "array"}.get(
        type(value), type(value).__name__)
    shown = repr(value)
    return f"{kind} {shown if len(shown) <= 40 else shown[:37] + '...'}"


def _convert(where: str, value: Any, annotation: Any) -> Any:
    """``value`` checked against a field's type (``int | None``, ``float``, ...); ints are accepted as floats."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = options[0]
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
    if annotation is float and ok and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value}")
    if not ok:
        raise ConfigError(f"{where} must be {_TYPE_NAMES.get(annotation, annotation.__name__)}, "
                          f"got {_describe(value)}")
    return value


def _build(cls: type, table: Any, where: str) -> Any:
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table, got {_describe(table)}")
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    for key in table:
        if key not in names:
            raise ConfigError(f"{where} unknown key {key!r}; accepted keys: {_accepted(cls)}")
    values: dict[str, Any] = {}
    for name, f in names.items():
        key_where = f"{where} {name}"
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where} {name} is required ({f.metadata.get('help', '')})")
            continue
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            values[name] = _build(annotation, table[name], f"[{where.strip('[]')}.{name}]")
            continue
        value = _convert(key_where, table[name], annotation)
        if value is None:
            continue
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{key_where} must be one of {', '.join(map(repr, choices))}; got {value!r}")
        check = f.metadata.get("check")
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"{key_where} {problem}; got {value!r}")
        values[name] = value
    return cls(**values)


def _check_whole(cfg: Config) -> None:
    if cfg.model.kind is not None and cfg.model.factory is not None:
        raise ConfigError("[model] give either kind or factory, not both")
    if cfg.learner.objective == "classification" and cfg.model.factory is None:
        raise ConfigError("[learner] objective = \"classification\" needs [model] factory (the built-in models "
                          f"are autoencoders: {', '.join(MODEL_KINDS)})")
    if not cfg.source.uri.strip():
        raise ConfigError("[source] uri is empty")


def validate(data: Mapping[str, Any], path: str | None = None) -> Config:
    """A :class:`Config` from parsed TOML data (raises :class:`ConfigError`)."""
    for section in data:
        if section not in SECTIONS:
            raise ConfigError(f"unknown section [{section}]; accepted sections: {', '.join(SECTIONS)}")
    if "source" not in data:
        raise ConfigError("[source] is required, with at least uri = \"...\" (for example "
                          "uri = \"zmq+pull://127.0.0.1:5555\")")
    sections = {name: _build(cls, data[name], f"[{name}]") for name, cls in SECTIONS.items() if name in data}
    cfg = Config(**sections, path=path)
    _check_whole(cfg)
    return cfg


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``data`` (parsed TOML) with ``{"section.key": value}`` overrides set; the result is validated later.

    >>> apply_overrides({"source": {"uri": "a"}}, {"source.uri": "b", "learner.plateau.window": 8})
    {'source': {'uri': 'b'}, 'learner': {'plateau': {'window': 8}}}
    """
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in data.items()}
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"an override names section.key, got {dotted!r}; sections: {', '.join(SECTIONS)}")
        table = out
        for part in parts[:-1]:
            nxt = table.get(part)
            if not isinstance(nxt, dict):
                nxt = {} if nxt is None else nxt
                if not isinstance(nxt, dict):
                    raise ConfigError(f"cannot set {dotted}: {part} is not a table")
            nxt = dict(nxt)
            table[part] = nxt
            table = nxt
        table[parts[-1]] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``"learner.lr=0.05"`` -> ``("learner.lr", 0.05)``: the value is read as TOML, or else as a string.

    >>> parse_override("learner.lr=0.05"), parse_override("source.uri=csv:a.csv"), parse_override("x.y=[1, 2]")
    (('learner.lr', 0.05), ('source.uri', 'csv:a.csv'), ('x.y', [1, 2]))
    """
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set takes section.key=value, got {text!r}")
    raw = raw.strip()
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def parse_config(text: str, overrides: Mapping[str, Any] | None = None, path: str | None = None) -> Config:
    """Parse TOML ``text``, apply ``overrides`` and validate (raises :class:`ConfigError`)."""
    where = path or "the configuration"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where} is not valid TOML: {e}") from None
    return validate(apply_overrides(data, overrides or {}), path)


def load_config(path: str | os.PathLike | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read and validate a configuration file (``None``: only the overrides), raising :class:`ConfigError`."""
    if path is None:
        return parse_config("", overrides)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read the configuration {os.fspath(path)}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{os.fspath(path)} is not UTF-8 text") from None
    return parse_config(text, overrides, os.fspath(path))


def describe_schema() -> str:
    """Every section and key with its default and help, for ``streammas run --help-config``."""
    lines: list[str] = []

    def emit(cls: type, header: str) -> None:
        lines.append(header)
        hints = typing.get_type_hints(cls)
        nested = []
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                nested.append((hints[f.name], f"[{header.strip('[]')}.{f.name}]"))
                continue
            if f.default is not dataclasses.MISSING:
                default = "(unset)" if f.default is None else repr(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = "{}"
            else:
                default = "(required)"
            choices = f.metadata.get("choices")
            extra = f" (one of {', '.join(choices)})" if choices else ""
            lines.append(f"  {f.name:<22} {default:<20} {f.metadata.get('help', '')}{extra}")
        lines.append("")
        for sub, head in nested:
            emit(sub, head)

    for name, cls in SECTIONS.items():
        emit(cls, f"[{name}]")
    return "\n".join(lines).rstrip() + "\n"
