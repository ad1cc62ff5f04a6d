"""The ``[learner]`` and ``[learner.plateau]`` sections, derived from the learner's own settings.

They are made from :class:`~streammas.learner.settings.LearnerSettings` and
:class:`~streammas.learner.plateau.PlateauConfig`: the same keys, defaults, checks and help, so that a new learner
setting needs no edit here. Each key is unset unless given (the learner's own default then applies), but for the
few the service sets otherwise.

Examples
--------
>>> LearnerConfig().lr is None, LearnerConfig().objective, LearnerConfig().plateau
(True, 'reconstruction', PlateauSection(...))
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import field
from typing import Any

from streammas.config.keys import spec
from streammas.learner.plateau import PlateauConfig
from streammas.learner.settings import LearnerSettings, non_negative


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
        ("device", str, spec("auto", help="auto (cuda when there is one), cpu, cuda, cuda:1")),
        ("threads", int, spec(1, help="torch CPU threads (0: torch's default, one per core; micro-batches of a "
                                      "small model run best on one, and a producer on the same machine keeps its "
                                      "cores)", check=non_negative)),
        ("seed", int, spec(0, help="seed for the model's initial weights")),
        ("plateau", PlateauSection, spec(help="[learner.plateau] detector settings", factory=PlateauSection)),
    ],
    methods={"learner_kwargs": _learner_kwargs},
)

