"""``streammas run``: the long-lived service. Source -> learner -> sink, with checkpoints, signals and metrics.

The loop reads a micro-batch from the source, learns it, writes each sample's prequential score to the sink,
and checkpoints every ``[state] every_samples`` samples or ``every_seconds`` seconds. A checkpoint is always
taken between two batches, so the learner's state and the source's position in it agree: a file source
resumed from it re-reads nothing and skips nothing. (The sink may repeat the scores of the batches learned
after the last checkpoint when the process was killed with ``kill -9``: it is at least once; each record
carries ``sample``, the sample's number in the life of the state directory, to deduplicate on.)

Signals: SIGTERM and SIGINT finish the current batch, write a checkpoint, close the sockets and exit with
status 0; SIGHUP writes a checkpoint now. A finite source (a file not followed) ends the run the same way
once it is exhausted.

Start-up problems (a bad configuration, a model factory that cannot be imported, a port already in use, an
unreadable file, a state directory used by another process) raise :class:`ServiceError`; the command prints
its message and exits with status 2.

Modules, one concept each:

- :mod:`streammas.service.app`: start-up wiring (config -> source, model, learner, sink) and :class:`Service`
- :mod:`streammas.service.loop`: the source -> learner -> sink loop
- :mod:`streammas.service.checkpointing`: when to checkpoint, the metadata, resuming
- :mod:`streammas.service.telemetry`: loss windows, rejected counts, the metrics snapshot, status lines
- :mod:`streammas.service.signals`: SIGTERM / SIGINT / SIGHUP
- :mod:`streammas.service.errors`: :class:`ServiceError`, one-line reasons, rate-limited warnings
- :mod:`streammas.service.cli`: the ``streammas run`` command (``add_arguments``, ``run_command``)

All of them log through the one logger ``streammas.service``.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use, so that importing streammas.service.signals stays cheap (see that module).
_LAZY = {"Service": "app", "resolve_device": "factory", "DEFAULT_CONFIG": "cli", "add_arguments": "cli",
         "config_from_args": "cli", "run_command": "cli", "ServiceError": "errors",
         "MAX_CONSECUTIVE_ERRORS": "loop", "READ_TIMEOUT": "loop", "LOSS_WINDOWS": "telemetry"}

__all__ = [
    "DEFAULT_CONFIG",
    "LOSS_WINDOWS",
    "MAX_CONSECUTIVE_ERRORS",
    "READ_TIMEOUT",
    "Service",
    "ServiceError",
    "add_arguments",
    "config_from_args",
    "resolve_device",
    "run_command",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"streammas.service.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'streammas.service' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
