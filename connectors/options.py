"""The options a connector accepts: read from its signatures, checked before it is opened, listed for help.

A connector's *options* are the keyword arguments of its ``open_source`` or ``open_sink`` beyond those the
registry passes itself (:data:`FRAMED`: the batching settings, the position, the shard). A connector whose
opener takes ``**options`` and hands them on declares what it accepts with ``source_options()`` or
``sink_options()``, returning ``{name: default}`` (:func:`keyword_defaults` reads that off the class it hands
them to, so the list cannot drift from the code); a declaration that returns ``None`` says the connector
serves no such end. A connector that declares nothing and takes ``**options`` accepts any option: its own
errors speak for it.

>>> class Plain:
...     def open_sink(self, uri, *, fsync=False, keep=5): ...
>>> accepted_options(Plain(), "sink")
{'fsync': False, 'keep': 5}
>>> check_options("plain", "sink", Plain(), {"kepp": 3})
Traceback (most recent call last):
    ...
ValueError: unknown option 'kepp' for plain:; accepted: fsync, keep (did you mean 'keep'?)
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

#: What the registry hands every source itself: never a connector's option.
FRAMED = frozenset({"uri", "batch_size", "max_latency_ms", "position", "rank", "world_size", "shard"})

#: The default of an option that has none (it must be given).
REQUIRED = inspect.Parameter.empty

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def keyword_defaults(target: Callable[..., Any], skip: Iterable[str] = (), *, inherited: bool = True) -> dict[str, Any]:
    """``{name: default}`` of the keyword arguments ``target`` accepts (a function, or a class's constructor).

    A positional parameter without a default (a path) is the caller's, not an option. When a class's
    ``__init__`` takes ``**kwargs``, the ``__init__`` it hands them on to (the next one along the class's
    bases) adds its own, and so on up; ``inherited=False`` for one whose ``**kwargs`` go elsewhere.

    >>> class Base:
    ...     def __init__(self, path, *, follow=False, name=None): ...
    >>> class Csv(Base):
    ...     def __init__(self, path, *, columns=None, **kwargs): ...
    >>> keyword_defaults(Csv, skip={"name"})
    {'columns': None, 'follow': False}
    """
    skip = {"self", *skip}
    if isinstance(target, type):
        chain = [vars(c)["__init__"] for c in target.__mro__ if c is not object and "__init__" in vars(c)]
    else:
        chain = [target]
    out: dict[str, Any] = {}
    for fn in chain:
        try:
            parameters = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):  # nothing to read (a builtin)
            break
        more = False
        for p in parameters:
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                more = True
            elif p.kind in _NAMED and p.name not in skip and p.name not in out and (
                    p.kind is inspect.Parameter.KEYWORD_ONLY or p.default is not REQUIRED):
                out[p.name] = p.default
        if not (more and inherited):
            break
    return out


def serves(connector: object, kind: str) -> bool:
    """Whether ``connector`` opens ``kind`` ends (``"source"`` or ``"sink"``)."""
    declared = getattr(connector, f"{kind}_options", None)
    return getattr(connector, f"open_{kind}", None) is not None and not (callable(declared) and declared() is None)


def accepted_options(connector: object, kind: str) -> dict[str, Any] | None:
    """``{name: default}`` of the options ``connector``'s ``kind`` end accepts; ``None``: any (undeclared)."""
    declared = getattr(connector, f"{kind}_options", None)
    if callable(declared):
        return declared()
    opener = getattr(connector, f"open_{kind}", None)
    if opener is None:
        return None
    try:
        parameters = inspect.signature(opener).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None  # it hands them on without saying where: whatever it accepts
    return {k: v for k, v in keyword_defaults(opener).items() if k not in FRAMED}


def check_options(scheme: str, kind: str, connector: object, options: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the first option the connector does not accept, and those it does."""
    accepted = accepted_options(connector, kind)
    if accepted is None:
        return
    for name in options:
        if name not in accepted:
            close = difflib.get_close_matches(name, list(accepted), n=1)
            raise ValueError(f"unknown option {name!r} for {scheme}:; accepted: {', '.join(sorted(accepted)) or 'none'}"
                             + (f" (did you mean {close[0]!r}?)" if close else ""))


def shown(default: Any) -> str:
    """An option's default as ``--help-config`` shows it.

    >>> shown(None), shown("auto"), shown(1 << 20), shown(REQUIRED)
    ('(unset)', "'auto'", '1048576', '(required)')
    """
    if default is REQUIRED:
        return "(required)"
    return "(unset)" if default is None else repr(default)


def query_options(query: str, ints: Iterable[str] = (), bools: Iterable[str] = ()) -> dict[str, Any]:
    """A connector URI's query string as keyword options: ``ints`` as integers, ``bools`` as flags,
    ``sample_shape`` as a list of integers, anything else as given.

    >>> query_options("hwm=10&tls=yes&sample_shape=1,28,28&topic=a", ints={"hwm"}, bools={"tls"})
    {'hwm': 10, 'tls': True, 'sample_shape': [1, 28, 28], 'topic': 'a'}
    """
    ints, bools = set(ints), set(bools)
    options: dict[str, Any] = {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key in ints:
            options[key] = int(value)
        elif key in bools:
            options[key] = value.lower() in ("1", "true", "yes", "on")
        elif key == "sample_shape":
            options[key] = [int(d) for d in value.split(",") if d]
        else:
            options[key] = value
    return options
