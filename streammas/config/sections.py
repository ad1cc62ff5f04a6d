"""The configuration's schema: one dataclass per section, each key with its default, checks and help.

The sections live by concern: :mod:`~streammas.config.inputs` (``[source]``, ``[model]``),
:mod:`~streammas.config.derived` (``[learner]`` and ``[learner.plateau]``, made from the learner's own settings),
:mod:`~streammas.config.outputs` (``[sink]``, ``[state]``, ``[metrics]``, ``[log]``) and
:mod:`~streammas.config.distributed` (``[distributed]``); their keys are made with :func:`~streammas.config.keys.spec`.
This module puts them together: :class:`Config`, and :data:`SECTIONS` by name.

Examples
--------
>>> LearnerConfig().lr is None, [f.name for f in dataclasses.fields(StateConfig)]
(True, ['dir', 'every_samples', 'every_seconds', 'keep', 'start_fresh'])
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from streammas.config.derived import LearnerConfig, PlateauSection
from streammas.config.distributed import DistributedConfig
from streammas.config.inputs import MODEL_KINDS, ModelConfig, SourceConfig
from streammas.config.keys import ConfigError
from streammas.config.outputs import LogConfig, MetricsConfig, SinkConfig, StateConfig

__all__ = ["MODEL_KINDS", "SECTIONS", "Config", "ConfigError", "LearnerConfig", "LogConfig", "MetricsConfig",
           "ModelConfig", "PlateauSection", "SinkConfig", "SourceConfig", "StateConfig"]


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
    {'dir': 'state', 'every_samples': 100000, 'every_seconds': 60.0, 'keep': 3, 'start_fresh': False}
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


#: Each section's name in the TOML file -> its dataclass, in the order of :class:`Config`'s fields.
SECTIONS: dict[str, type] = {
    "source": SourceConfig, "model": ModelConfig, "learner": LearnerConfig, "sink": SinkConfig, "state": StateConfig,
    "metrics": MetricsConfig, "log": LogConfig, "distributed": DistributedConfig,
}


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value

