"""The ``streammas run`` command: its flags, the configuration they describe, and its exit statuses.

Exit status 0: stopped by a signal or the source finished; 1: gave up on errors (or the last checkpoint
failed, or a finite source yielded no valid sample); 2: a configuration error or a start-up problem
(:class:`~streammas.service.ServiceError`: every checkpoint damaged, say), or the state directory taken by
another process while running, whose message is printed; 130: interrupted during start-up.

With ``[distributed] workers`` > 1 (``--workers N``) the command starts that many workers and supervises
them (:mod:`streammas.service.launch`): its status is then the largest of theirs, or 1 when a worker
failed beyond ``[distributed] max_restarts`` or had to be killed. Started by ``torchrun`` (``RANK`` and
``WORLD_SIZE`` in the environment), it runs as one worker of torchrun's group
(:mod:`streammas.service.worker`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from streammas.config import Config, ConfigError, describe_schema, load_config, parse_override
from streammas.service import logs
from streammas.service.app import Service
from streammas.service.errors import ServiceError

#: One logger for the whole service: its name is part of every log line.
log = logging.getLogger("streammas.service")

#: The configuration read when ``--config`` is not given, if it exists in the working directory.
DEFAULT_CONFIG = "streammas.toml"

#: Flags that override one configuration key each: argparse attribute -> ``section.key``.
FLAG_KEYS = {"source": "source.uri", "sink": "sink.uri", "state_dir": "state.dir", "batch_size": "source.batch_size",
             "metrics_port": "metrics.port", "device": "learner.device", "log_level": "log.level",
             "log_format": "log.format", "start_fresh": "state.start_fresh", "workers": "distributed.workers"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``streammas run``.

    >>> parser = argparse.ArgumentParser(prog="streammas run")
    >>> add_arguments(parser)
    >>> args = parser.parse_args(["--source", "npy:x.npy", "--set", "learner.lr=0.05"])
    >>> args.source, args.set, args.check
    ('npy:x.npy', ['learner.lr=0.05'], False)
    """
    parser.description = ("Run the long-lived service: read a stream, learn it, remember what mattered, "
                          "checkpoint, survive restarts. SIGTERM/SIGINT: checkpoint and exit 0; SIGHUP: "
                          "checkpoint now. With --workers N, start N workers and forward those signals to them. "
                          "Under torchrun, send SIGHUP to the workers, not to torchrun: whether it is in "
                          "torchrun's --signals-to-handle or not, SIGHUP to torchrun ends the group.")
    parser.add_argument("--config", "-c", metavar="FILE",
                        help=f"TOML configuration (default: ./{DEFAULT_CONFIG} if it exists)")
    parser.add_argument("--source", metavar="URI", help="overrides [source] uri")
    parser.add_argument("--sink", metavar="URI", help="overrides [sink] uri")
    parser.add_argument("--state-dir", metavar="DIR", help="overrides [state] dir")
    parser.add_argument("--start-fresh", action="store_true", default=None,
                        help="sets [state] start_fresh: when every checkpoint is damaged, set them aside "
                             "(*.corrupt) and start over instead of refusing to start")
    parser.add_argument("--batch-size", type=int, metavar="N", help="overrides [source] batch_size")
    parser.add_argument("--metrics-port", type=int, metavar="PORT", help="overrides [metrics] port")
    parser.add_argument("--device", help="overrides [learner] device")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="overrides [distributed] workers: start N workers on this machine (data parallel)")
    parser.add_argument("--log-level", help="overrides [log] level")
    parser.add_argument("--log-format", help="overrides [log] format (text or json)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override any key, e.g. --set learner.lr=0.05 (repeatable)")
    parser.add_argument("--check", action="store_true",
                        help="validate the configuration (and import the model factory), print it as JSON, exit")
    parser.add_argument("--help-config", action="store_true", help="list every configuration key and exit")


def config_from_args(args: argparse.Namespace) -> Config:
    """The configuration the flags describe (raises :class:`ConfigError`)."""
    overrides: dict[str, Any] = {}
    for item in args.set:
        key, value = parse_override(item)
        overrides[key] = value
    for attr, key in FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value is not None:
            overrides[key] = value
    path = args.config
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    if path is None and "source.uri" not in overrides:
        raise ConfigError(f"no configuration: give --config FILE (or put {DEFAULT_CONFIG} in the working "
                          "directory), or at least --source URI")
    return load_config(path, overrides)


def run_command(args: argparse.Namespace) -> int:
    """Run ``streammas run`` with parsed flags; returns the exit status."""
    if args.help_config:
        print(describe_schema(), end="")
        return 0
    try:
        config = config_from_args(args)
    except ConfigError as e:
        print(f"streammas run: configuration error: {e}", file=sys.stderr)
        return 2
    if args.check:
        try:
            Service(config, handle_signals=False).check()
        except ServiceError as e:
            print(f"streammas run: error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(config.as_dict(), indent=2))
        return 0
    from streammas.service.launch import is_worker, should_launch

    if is_worker():  # started by torchrun: one worker of its group, logging with its rank
        from streammas.service.worker import run_worker

        return run_worker(config)
    with logs.logging_to(config.log.level, config.log.format):
        if should_launch(config):
            from streammas.service.launch import launch

            try:
                Service(config, handle_signals=False).check()  # a bad device or factory: said once, not per worker
                return launch(config)
            except ServiceError as e:
                print(f"streammas run: error: {e}", file=sys.stderr)
                return 2
        if config.path:
            logs.log_event(log, "config", path=os.path.abspath(config.path))
        service = Service(config)
        try:
            return service.run()
        except ServiceError as e:
            print(f"streammas run: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("streammas run: interrupted during start-up", file=sys.stderr)
            return 130
