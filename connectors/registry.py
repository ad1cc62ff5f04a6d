"""Opening connectors by URI: the built-in schemes, connectors registered at run time, and plug-ins
installed by ``pip`` that declare an entry point in the group ``streammas.connectors``.

A *connector* is any object (a module, an instance, a class with static or class methods) with an
``open_source(uri, *, batch_size, max_latency_ms, position, **options) -> Source`` and/or an
``open_sink(uri, **options) -> Sink``; the entry point's name is the URI scheme it serves and its value
names that object, e.g. in a plug-in's ``pyproject.toml``::

    [project.entry-points."streammas.connectors"]
    synth = "streammas_synth:connector"

A worker of a data-parallel run opens its share of the input with ``open_source(uri, ...,
shard=(rank, world_size))``. The connector is handed ``rank=`` and ``world_size=`` only if its
``open_source`` names both parameters (``**options`` does not count: a connector that does not say it
can split its input would hand every worker everything); with more than one worker, a connector that does
not name them is refused. The built-in connectors name them: the file schemes split by file or by row,
``zmq+pull`` binds one port per worker.

Schemes are looked up in this order: :func:`register`-ed connectors, built-ins, entry points (a plug-in
cannot silently replace a built-in). A URI without a scheme is a file path or glob whose extension names
the scheme (``data/*.csv`` is ``csv:data/*.csv``).

>>> split_uri("zmq+pull://127.0.0.1:5555")
('zmq+pull', '//127.0.0.1:5555')
>>> split_uri("logs/2024-*.jsonl")
('jsonl', 'logs/2024-*.jsonl')
"""

from __future__ import annotations

import importlib
import inspect
import logging
import os
import re
from importlib.metadata import entry_points
from typing import Any, Protocol

from connectors.base import Sink, Source
from connectors.options import accepted_options, check_options, serves, shown
from connectors.paths import normalise_shard

_log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "streammas.connectors"

#: scheme -> "module:attribute" of the built-in connector, imported on first use.
BUILTIN: dict[str, str] = {
    "zmq+pull": "connectors.zmq:PULL",
    "zmq+sub": "connectors.zmq:SUB",
    "zmq+pub": "connectors.zmq:PUB",
    "csv": "connectors.files:CSV",
    "jsonl": "connectors.files:JSONL",
    "npy": "connectors.files:NPY",
    "npz": "connectors.files:NPZ",
    "alerts": "connectors.alerts_sink:ALERTS",
    "redis+stream": "connectors.redis.connector:REDIS_STREAM",
    "mqtt": "connectors.mqtt.connector:MQTT",
}

#: file extension -> scheme, for URIs given as bare paths.
EXTENSIONS: dict[str, str] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".npy": "npy", ".npz": "npz"}

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]+):(.*)", re.DOTALL)
_registered: dict[str, object] = {}


class Connector(Protocol):
    """What an entry point (or :func:`register`) provides; either method may be absent.

    Any object with these methods conforms: a module, an instance, or a class with static or class
    methods. :func:`open_source` hands ``open_source`` the whole URI (the scheme included), the batching
    settings and the saved position, plus the URI's options; :func:`open_sink` hands ``open_sink`` the URI
    and its options.

    A connector that can split its input among the workers of a data-parallel run names the keyword
    parameters ``rank`` and ``world_size`` in its ``open_source``: worker ``rank`` of ``world_size`` must
    then get its own part, disjoint from the others' and, all parts together, the whole input, and a
    position it gives back must resume that same part (and should say which part it is, so that a resume
    with another ``world_size`` can be refused). A connector whose ``open_source`` does not name them is
    run by one worker only: :func:`open_source` refuses it a ``shard`` of more than one worker.

    Examples
    --------
    A connector for a ``zeros:`` scheme that yields one batch of zeros, registered for this process:

    >>> import numpy as np
    >>> from connectors.base import Batch, Source
    >>> class Zeros(Source):
    ...     finite = True
    ...     def __init__(self, n):
    ...         self.left = n
    ...     def read(self, timeout=None):
    ...         if not self.left:
    ...             return None
    ...         batch, self.left = Batch(np.zeros((self.left, 2), dtype=np.float32)), 0
    ...         return batch
    ...     @property
    ...     def finished(self):
    ...         return self.left == 0
    ...     def close(self):
    ...         pass
    >>> class ZerosConnector:
    ...     def open_source(self, uri, *, batch_size, max_latency_ms, position, **options):
    ...         return Zeros(int(uri.split(":", 1)[1]))
    >>> register("zeros", ZerosConnector())
    >>> with open_source("zeros:3") as src:
    ...     [b.x.shape for b in src]
    [(3, 2)]

    It does not name ``rank`` and ``world_size``, so two workers cannot share it:

    >>> open_source("zeros:3", shard=(0, 2))
    Traceback (most recent call last):
        ...
    ValueError: the plug-in 'zeros' does not say it can shard (...); run it with one worker
    >>> unregister("zeros")
    """

    def open_source(
        self, uri: str, *, batch_size: int, max_latency_ms: float, position: dict | None, **options: Any
    ) -> Source: ...

    def open_sink(self, uri: str, **options: Any) -> Sink: ...


def split_uri(uri: str) -> tuple[str, str]:
    """``(scheme, rest)`` of a URI; a bare path gets the scheme its extension names.

    A one-letter prefix is a Windows drive, not a scheme. Raises ``ValueError`` when no scheme can be
    found.
    """
    m = _SCHEME.fullmatch(uri)
    if m:
        return m.group(1).lower(), m.group(2)
    ext = os.path.splitext(uri.rstrip("/\\"))[1].lower()
    if ext in EXTENSIONS:
        return EXTENSIONS[ext], uri
    raise ValueError(
        f"cannot tell what {uri!r} is: give a scheme (e.g. csv:{uri}, zmq+pull://127.0.0.1:5555) "
        f"or a file with one of the extensions {', '.join(EXTENSIONS)}"
    )


def register(scheme: str, connector: object) -> None:
    """Serve ``scheme`` with ``connector`` in this process (ahead of built-ins and entry points)."""
    _registered[scheme.lower()] = connector


def unregister(scheme: str) -> None:
    _registered.pop(scheme.lower(), None)


def _load(spec: str) -> object:
    module, _, attr = spec.partition(":")
    obj: object = importlib.import_module(module)
    for part in filter(None, attr.split(".")):
        obj = getattr(obj, part)
    return obj


def _entry_point(scheme: str):
    found = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name.lower() == scheme]
    if len({ep.value for ep in found}) > 1:
        _log.warning(
            "several plug-ins serve scheme %r (%s); using %s",
            scheme,
            ", ".join(ep.value for ep in found),
            found[0].value,
        )
    return found[0] if found else None


def find_connector(scheme: str) -> object:
    """The connector serving ``scheme`` (raises ``ValueError`` naming the known schemes if none)."""
    scheme = scheme.lower()
    if scheme in _registered:
        return _registered[scheme]
    if scheme in BUILTIN:
        return _load(BUILTIN[scheme])
    ep = _entry_point(scheme)
    if ep is None:
        known = ", ".join(sorted(available()))
        raise ValueError(f"no connector for scheme {scheme!r}; known schemes: {known}")
    try:
        return ep.load()
    except Exception as e:  # a broken plug-in must say which one it is
        raise ImportError(f"connector plug-in {scheme!r} ({ep.value}) failed to load: {e}") from e


def available() -> dict[str, str]:
    """Every scheme that can be opened, with where it comes from (``builtin``, ``registered``, or the
    entry point's value)."""
    out = {ep.name.lower(): ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    out.update(dict.fromkeys(BUILTIN, "builtin"))
    out.update(dict.fromkeys(_registered, "registered"))
    return out


def _normalise(uri: str) -> tuple[str, str]:
    scheme, rest = split_uri(uri)
    return scheme, uri if _SCHEME.fullmatch(uri) else f"{scheme}:{rest}"


def can_shard(opener: Any) -> bool:
    """Whether a connector's ``open_source`` names the keyword parameters ``rank`` and ``world_size``.

    >>> def plain(uri, *, batch_size, max_latency_ms, position, **options): ...
    >>> def split(uri, *, batch_size, max_latency_ms, position, rank=0, world_size=1, **options): ...
    >>> can_shard(plain), can_shard(split)
    (False, True)
    """
    try:
        parameters = inspect.signature(opener).parameters
    except (TypeError, ValueError):  # no signature to read (a builtin): it says nothing
        return False
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return all(name in parameters and parameters[name].kind in named for name in ("rank", "world_size"))


def open_source(
    uri: str,
    *,
    batch_size: int = 32,
    max_latency_ms: float = 50.0,
    position: dict | None = None,
    shard: tuple[int, int] | None = None,
    **options: Any,
) -> Source:
    """Open the source ``uri`` names; ``options`` go to its connector (see the README's URI table).

    ``shard=(rank, world_size)`` opens worker ``rank``'s part of the input of a run of ``world_size``
    workers (``None``, the default: all of it, as a run of one). The connector gets ``rank=`` and
    ``world_size=`` when it names them (see :class:`Connector`); one that does not is refused a world of
    more than one worker (``ValueError``), and opened as usual for a world of one. A position taken with
    another shard makes the built-in file sources raise ``ValueError``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_latency_ms < 0:
        raise ValueError(f"max_latency_ms must be >= 0, got {max_latency_ms}")
    scheme, uri = _normalise(uri)
    connector = find_connector(scheme)
    opener = getattr(connector, "open_source", None)
    if opener is None:
        raise ValueError(f"scheme {scheme!r} names a sink only, not a source")
    check_options(scheme, "source", connector, options)
    if shard is not None:
        rank, world_size = normalise_shard(shard) or (0, 1)
        if can_shard(opener):
            options = {**options, "rank": rank, "world_size": world_size}
        elif world_size > 1:
            raise ValueError(
                f"the plug-in {scheme!r} does not say it can shard (its open_source names no rank and "
                "world_size); run it with one worker"
            )
    return opener(uri, batch_size=batch_size, max_latency_ms=max_latency_ms, position=position, **options)



def open_sink(uri: str, **options: Any) -> Sink:
    """Open the sink ``uri`` names; ``options`` go to its connector."""
    scheme, uri = _normalise(uri)
    connector = find_connector(scheme)
    opener = getattr(connector, "open_sink", None)
    if opener is None:
        raise ValueError(f"scheme {scheme!r} names a source only, not a sink")
    check_options(scheme, "sink", connector, options)
    return opener(uri, **options)


def accepts_option(uri: str, kind: str, name: str) -> bool:
    """Whether the connector for ``uri`` declares the option ``name`` for its ``kind`` end (``"source"`` or
    ``"sink"``); ``False`` when it cannot be told (an unknown scheme, a connector that declares nothing).

    >>> accepts_option("zmq+pull://127.0.0.1:5555", "source", "sample_shape"), accepts_option("x.csv", "source",
    ...                                                                                       "sample_shape")
    (True, False)
    """
    try:
        options = accepted_options(find_connector(split_uri(uri)[0]), kind)
    except (ValueError, ImportError):
        return False
    return options is not None and name in options


def check_uri_options(uri: str, kind: str, options: dict[str, Any]) -> None:
    """Raise ``ValueError`` (``ImportError`` for a plug-in that does not load) if ``uri`` names no connector
    that opens ``kind`` ends, or one that does not accept ``options``; opens nothing."""
    scheme = split_uri(uri)[0]
    connector = find_connector(scheme)
    if getattr(connector, f"open_{kind}", None) is None:
        raise ValueError(f"scheme {scheme!r} names a {'sink' if kind == 'source' else 'source'} only, not a {kind}")
    check_options(scheme, kind, connector, options)


def describe_options() -> str:
    """Every scheme's options with their defaults, for ``streammas run --help-config``.

    >>> text = describe_options()
    >>> print(text[text.index("csv:"):].split("\\n", 3)[:3])
    ['csv: source options', '  columns                (unset)', "  delimiter              ','"]
    """
    lines: list[str] = []
    for scheme in sorted(available()):
        try:
            connector = find_connector(scheme)
        except (ValueError, ImportError) as e:
            lines.append(f"{scheme}: cannot be loaded ({e})")
            continue
        for kind in ("source", "sink"):
            if not serves(connector, kind):
                continue
            options = accepted_options(connector, kind)
            lines.append(f"{scheme}: {kind} options")
            if options is None:
                lines.append("  (not declared: every option is handed to the connector)")
            for name, default in sorted((options or {}).items()):
                lines.append(f"  {name:<22} {shown(default)}")
    return "\n".join(lines)
