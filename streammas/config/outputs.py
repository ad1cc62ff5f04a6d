"""The sections of what the service gives out and keeps: ``[sink]``, ``[state]``, ``[metrics]`` and ``[log]``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streammas.config.keys import spec
from streammas.learner.settings import non_negative, positive


def _port(value: Any) -> str | None:
    return None if 0 <= value <= 65535 else "must be a TCP port between 0 and 65535 (0: any free port)"


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
        The connector's own options (``max_bytes``, ``keep`` ...; ``streammas run --help-config`` lists them).

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> cfg = parse_config('[source]\\nuri = "csv:a.csv"\\n[sink]\\nuri = "jsonl:-"\\n')
    >>> cfg.sink
    SinkConfig(uri='jsonl:-', events=True, options={})
    >>> SinkConfig().uri is None  # no sink unless one is given
    True
    """

    uri: str | None = spec(None, help="sink URI: jsonl:scores.jsonl, jsonl:-, zmq+pub://127.0.0.1:5556")
    events: bool = spec(True, help="attach the learner's events (plateau, consolidation ...) to the records")
    options: dict = spec(help="the connector's own options, e.g. { max_bytes = 100000000 } (listed below)",
                         factory=dict)


@dataclass
class StateConfig:
    """``[state]``: checkpoints.

    Parameters
    ----------
    dir : str, default "state"
        The directory of checkpoints (one service per directory).
    every_samples : int, default 100000
        Checkpoint after this many samples learned (0: never). A checkpoint holds the replay memory (4 MiB by
        default): every 10,000 samples of 64 features, a fast stream's checkpoints would write more bytes than
        it reads, and take 7% of the daemon's time.
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
    StateConfig(dir='/tmp/s', every_samples=100000, every_seconds=60.0, keep=5, start_fresh=False)
    """

    dir: str = spec("state", help="directory of checkpoints (one service per directory)")
    every_samples: int = spec(100_000, help="checkpoint after this many samples learned (0: never)",
                              check=non_negative)
    every_seconds: float = spec(60.0, help="checkpoint after this many seconds with new samples (0: never)",
                                check=non_negative)
    keep: int = spec(3, help="checkpoints kept", check=positive)
    start_fresh: bool = spec(False, help="when every checkpoint is damaged, set them aside (*.corrupt) and start "
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

    port: int | None = spec(None, help="serve /metrics on this port", check=_port)
    host: str = spec("127.0.0.1", help="interface to serve on")
    every_batches: int = spec(20, help="read the learner's values for metrics and status every this many batches",
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

    level: str = spec("info", help="log level", choices=("debug", "info", "warning", "error"))
    format: str = spec("text", help="text (key=value) or json lines", choices=("text", "json"))
    status_every_seconds: float = spec(30.0, help="status line interval (0: none)", check=non_negative)
    progress: str = spec("auto", help="progress bar: auto (a terminal and a finite source), always, never",
                         choices=("auto", "always", "never"))


