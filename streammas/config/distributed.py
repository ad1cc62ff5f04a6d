"""The ``[distributed]`` section: how many workers learn the stream together, and how the group is run.

A module of its own, as each concern's sections are (:mod:`streammas.config.sections` puts them together); its keys
are made with :func:`streammas.learner.settings.setting`, the same help, choices and checks that every other key
carries.

Examples
--------
>>> DistributedConfig()
DistributedConfig(workers=1, backend='auto', mode='exact', average_every=16, timeout_seconds=300.0, \
shutdown_seconds=60.0, max_restarts=3, reshard=False)
"""

from __future__ import annotations

from dataclasses import dataclass

from streammas.collective.context import MODES
from streammas.learner.settings import at_least, non_negative, positive, setting

BACKENDS = ("auto", "gloo", "nccl")


@dataclass
class DistributedConfig:
    """``[distributed]``: data parallelism over several worker processes (off with the default, one worker).

    With ``workers`` > 1, ``streammas run`` starts that many workers on this machine through torch's elastic
    launcher and supervises them; under ``torchrun`` each process is a worker already and ``workers`` is
    ignored (torchrun's ``--nproc-per-node`` and ``--nnodes`` decide).

    Parameters
    ----------
    workers : int, default 1
        Worker processes on this machine (>= 1; 1: no distribution).
    backend : str, default "auto"
        The process group's backend: ``"auto"`` (NCCL on a CUDA device, gloo on the CPU), ``"gloo"`` or
        ``"nccl"`` (which needs a CUDA ``[learner] device``).
    mode : str, default "exact"
        ``"exact"``: every step is the one a single process would take on the whole batch (three collectives
        per step). ``"average"``: each worker steps on its own rows, and every ``average_every`` steps the
        workers average their model, optimizer state, running importance and input statistics in one
        all-reduce, and decide plateaus and consolidations together (for slow links, or steps too short to
        pay for per-step collectives; each worker keeps its own replay memory).
    average_every : int, default 16
        With ``mode = "average"``: the group's steps between two averagings (>= 1).
    timeout_seconds : float, default 300.0
        How long a collective waits for the other workers before it fails (> 0).
    shutdown_seconds : float, default 60.0
        After forwarding SIGTERM, how long the launcher waits for the workers' final checkpoint before it
        kills them with SIGKILL (>= 0).
    max_restarts : int, default 3
        How many times the group is restarted after a worker fails before the launcher gives up (>= 0).
    reshard : bool, default False
        Resume from a checkpoint written by a group of another size; off, such a restart is refused.

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> cfg = parse_config('[source]\\nuri = "npy:x.npy"\\n[distributed]\\nworkers = 4\\n')
    >>> cfg.distributed.workers, cfg.distributed.mode
    (4, 'exact')
    >>> parse_config('[source]\\nuri = "npy:x.npy"\\n[distributed]\\nmode = "gossip"\\n')
    Traceback (most recent call last):
        ...
    streammas.config.ConfigError: [distributed] mode must be one of 'exact', 'average'; got 'gossip'
    >>> parse_config('[source]\\nuri = "npy:x.npy"\\n[distributed]\\nworkers = 0\\n')
    Traceback (most recent call last):
        ...
    streammas.config.ConfigError: [distributed] workers must be >= 1; got 0
    >>> parse_config('[source]\\nuri = "npy:x.npy"\\n[distributed]\\nbackend = "mpi"\\n')
    Traceback (most recent call last):
        ...
    streammas.config.ConfigError: [distributed] backend must be one of 'auto', 'gloo', 'nccl'; got 'mpi'
    """

    workers: int = setting(1, help="worker processes on this machine (1: no distribution; ignored under torchrun)",
                           check=at_least(1))
    backend: str = setting("auto", help="process group backend: auto (nccl on CUDA, gloo on the CPU)",
                           choices=BACKENDS)
    mode: str = setting("exact", help="exact: each step is the single-process step on the whole batch; average: "
                                      "local steps, the state averaged every average_every steps", choices=MODES)
    average_every: int = setting(16, help="with mode = average: steps between two averagings", check=at_least(1))
    timeout_seconds: float = setting(300.0, help="how long a collective waits for the other workers",
                                     check=positive)
    shutdown_seconds: float = setting(60.0, help="after forwarding SIGTERM, seconds the launcher waits for the "
                                                 "workers before SIGKILL", check=non_negative)
    max_restarts: int = setting(3, help="restarts of the group after a worker fails, then give up",
                                check=non_negative)
    reshard: bool = setting(False, help="resume from a checkpoint of a group of another size (off: refuse)")
