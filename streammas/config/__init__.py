"""The service's TOML configuration: the schema, validation with messages that name the key, and overrides.

A configuration is a TOML file with the sections ``[source]``, ``[model]``, ``[learner]`` (with an optional
``[learner.plateau]`` table), ``[sink]``, ``[state]``, ``[metrics]``, ``[log]`` and ``[distributed]``. Only
``[source] uri`` is required; every other key has a default. An unknown section or key, a value of the wrong
type or outside its accepted values, and a missing required key raise :class:`ConfigError`, whose message names
the key and the accepted ones; ``streammas run`` prints it and exits with status 2.

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

from streammas.config.distributed import DistributedConfig
from streammas.config.parsing import (
    apply_overrides,
    describe_schema,
    load_config,
    parse_config,
    parse_override,
    validate,
)
from streammas.config.sections import (
    MODEL_KINDS,
    SECTIONS,
    Config,
    ConfigError,
    LearnerConfig,
    LogConfig,
    MetricsConfig,
    ModelConfig,
    PlateauSection,
    SinkConfig,
    SourceConfig,
    StateConfig,
)

__all__ = [
    "MODEL_KINDS", "SECTIONS", "Config", "ConfigError", "DistributedConfig", "LearnerConfig", "LogConfig",
    "MetricsConfig", "ModelConfig", "PlateauSection", "SinkConfig", "SourceConfig", "StateConfig", "apply_overrides",
    "describe_schema", "load_config", "parse_config", "parse_override", "validate",
]
