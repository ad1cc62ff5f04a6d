"""What every configuration key is made of (:func:`spec`: its default, help, accepted values and check), and the
error a configuration that cannot be used raises (:class:`ConfigError`).

Examples
--------
>>> import dataclasses
>>> @dataclasses.dataclass
... class Example:
...     port: int = spec(80, help="a TCP port", check=lambda v: None if v > 0 else "must be > 0")
>>> f = dataclasses.fields(Example)[0]
>>> f.default, f.metadata["help"], f.metadata["check"](0)
(80, 'a TCP port', 'must be > 0')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import field
from typing import Any


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


def spec(default: Any = dataclasses.MISSING, *, help: str = "", choices: tuple | None = None,
         check: Callable[[Any], str | None] | None = None, factory: Callable[[], Any] | None = None) -> Any:
    """A configuration key: its default, a one-line help, accepted values and an extra check."""
    meta = {"help": help, "choices": choices, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


ConfigError.__module__ = "streammas.config"  # where users import it from, as tracebacks show it
