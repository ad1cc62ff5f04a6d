"""Reading a configuration: TOML parsing, overrides, validation with messages that name the key, and the
schema's description for ``streammas run --help-config``.

Examples
--------
>>> apply_overrides({"source": {"uri": "a"}}, {"learner.lr": 0.1})
{'source': {'uri': 'a'}, 'learner': {'lr': 0.1}}
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from typing import Any

from connectors.registry import accepts_option, describe_options
from streammas.config.sections import MODEL_KINDS, SECTIONS, Config, ConfigError
from streammas.learner.settings import LearnerSettings, problem_with

# -- validation -------------------------------------------------------------------------------------------------
_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a table"}


def _accepted(cls: type) -> str:
    return ", ".join(f.name for f in dataclasses.fields(cls))


def _describe(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "table", list: "array"}.get(
        type(value), type(value).__name__)
    shown = repr(value)
    return f"{kind} {shown if len(shown) <= 40 else shown[:37] + '...'}"


def _option_hint(where: str, key: str, table: Mapping[str, Any]) -> str:
    """Where a connector's option given as a key of its section (``[source] columns = ...``) belongs."""
    uri = table.get("uri")
    kind = where.strip("[]")
    if kind not in ("source", "sink") or not isinstance(uri, str) or not accepts_option(uri, kind, key):
        return ""
    value = table[key]
    written = json.dumps(value) if isinstance(value, (str, int, float, bool, list)) else "..."
    return (f"; {key!r} is an option of the connector, set in its options table: "
            f"options = {{ {key} = {written} }} (streammas run --help-config lists each connector's options)")


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
            raise ConfigError(f"{where} unknown key {key!r}; accepted keys: {_accepted(cls)}"
                              + _option_hint(where, key, table))
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
        problem = problem_with(f, value)
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
    if cfg.distributed.backend == "nccl" and cfg.learner.device.startswith("cpu"):
        raise ConfigError("[distributed] backend = \"nccl\" needs a CUDA [learner] device (auto, cuda); "
                          f"got device = {cfg.learner.device!r} (use backend = \"gloo\" or \"auto\" on the CPU)")
    try:  # the checks that span several keys are the learner's own
        LearnerSettings(**{k: v for k, v in cfg.learner.learner_kwargs().items() if k != "plateau"})
    except ValueError as e:
        raise ConfigError(f"[learner] {e}") from None


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
                shown = f.default if f.default is not None else f.metadata.get("shown")
                default = "(unset)" if shown is None else repr(shown)
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
    lines += ["Connector options, for [source] options = {...} and [sink] options = {...} (the URI's scheme names "
              "the connector), with their defaults:", describe_options()]
    return "\n".join(lines).rstrip() + "\n"
