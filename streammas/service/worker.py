"""What one worker of a group runs: :func:`run_worker`, the entry point that the launcher
(:mod:`streammas.service.launch`) spawns once per rank, and that ``streammas run`` calls in-process when
``torchrun`` started it (``RANK`` and ``WORLD_SIZE`` in the environment).

A worker, in this order:

1. installs the service's signal handlers, so that a SIGTERM, SIGINT or SIGHUP from now on is kept for the
   service (which acts on it between batches) instead of killing the process;
2. asks the kernel (Linux) to send it SIGTERM when the process that started it dies, so that a launcher
   killed with SIGKILL leaves no orphan learning on; a launcher already gone by then is noticed at once,
   and a worker still there ``[distributed] shutdown_seconds`` after its launcher died exits (blocked in
   native code, it could not act on the SIGTERM);
3. logs like ``streammas run``, every line carrying a ``rank`` field;
4. when launched by the launcher: writes its pid to ``<run dir>/worker-<rank>.pid`` (handlers installed
   first, so any pid the launcher reads there is safe to signal), and returns at once if the group is
   already stopping (``<run dir>/stop``: a restart that raced a SIGTERM);
5. joins the group (:meth:`DistributedContext.from_environment`), runs
   :class:`~streammas.service.Service` as that group's member, leaves the group and returns the service's
   exit status; a non-zero status is also written to ``<run dir>/worker-<rank>.exit`` so that the launcher
   can stop the others at once rather than when their collectives time out. The pid file goes at exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from streammas.collective.context import DistributedContext
from streammas.config import Config
from streammas.service import logs
from streammas.service.app import Service
from streammas.service.errors import ServiceError
from streammas.service.factory import resolve_device
from streammas.service.signals import install_early

log = logging.getLogger("streammas.service")

#: The launcher's files in its run directory, shared with :mod:`streammas.service.launch`.
PID_FILE = "worker-{rank}.pid"
EXIT_FILE = "worker-{rank}.exit"
STOP_FILE = "stop"

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: How often a launched worker looks whether its launcher is still there.
_WATCH_SECONDS = 0.5


class RankFilter(logging.Filter):
    """Adds this worker's ``rank`` to every log record that passes a handler (events and plain messages,
    from any library), as the first field, unless the record names a rank of its own.

    Parameters
    ----------
    rank : int
        This worker's global rank.

    Examples
    --------
    >>> import io
    >>> out = io.StringIO()
    >>> handler = logs.make_handler("text", out)
    >>> handler.addFilter(RankFilter(1))
    >>> logger = logging.getLogger("streammas.doctest.rank")
    >>> logger.addHandler(handler); logger.setLevel(logging.INFO); logger.propagate = False
    >>> logs.log_event(logger, "checkpoint", samples_seen=10)
    >>> logger.info("a plain message")
    >>> [line.split(None, 2)[2] for line in out.getvalue().splitlines()]
    ['streammas.doctest.rank checkpoint rank=1 samples_seen=10', 'streammas.doctest.rank a plain message rank=1']
    >>> logger.removeHandler(handler)
    """

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.rank = int(rank)

    def filter(self, record: logging.LogRecord) -> bool:
        # The formatter prints the record's fields; a copy, because log_event's dict may be shared.
        fields = getattr(record, logs._FIELDS, None) or {}
        setattr(record, logs._FIELDS, {"rank": self.rank, **fields})
        return True


def die_with_parent(parent_pid: int | None = None) -> bool:
    """Have the kernel send this process SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    If the parent is not ``parent_pid`` any more (it died before the request was made, and the process was
    adopted), SIGTERM is sent now, which the installed handlers keep for the service. Returns whether the
    request was made (``False`` on other systems). The request outlives no ``exec`` and no ``fork``: it is
    this process's only.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):  # no prctl in this libc: nothing to ask
        return False
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGTERM)
    return True


def worker_env(environ: Mapping[str, str] = os.environ) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the launcher's environment (``LOCAL_RANK`` defaults to
    ``RANK``).

    >>> worker_env({"RANK": "1", "WORLD_SIZE": "2"}), worker_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    ((1, 2, 1), (3, 4, 1))
    """
    rank, world_size = int(environ["RANK"]), int(environ["WORLD_SIZE"])
    return rank, world_size, int(environ.get("LOCAL_RANK", rank))


def _write_atomically(path: Path, text: str) -> None:
    # A reader polling the directory never sees a half-written number.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_worker(config: Config, run_dir: str | None = None, launcher_pid: int | None = None) -> int:
    """Run the service as one worker of the group the environment describes; returns its exit status.

    Parameters
    ----------
    config : Config
        The whole configuration, validated by the launcher (it travels pickled to a spawned worker).
    run_dir : str or None, default None
        The launcher's run directory (pid, exit and stop files); ``None`` under ``torchrun``.
    launcher_pid : int or None, default None
        The launcher's pid: a worker whose parent is another process by the time it starts stops at once.

    Returns
    -------
    int
        The service's exit status (0: stopped or finished; 1: gave up on errors; 2: could not start; 130:
        interrupted during start-up).
    """
    install_early()  # before anything slow: a stop signal from now on waits for the service
    if launcher_pid is not None:
        die_with_parent(launcher_pid)
        _watch_launcher(launcher_pid, config.distributed.shutdown_seconds)
    else:
        die_with_parent()
    code = _run(config, Path(run_dir) if run_dir is not None else None)
    # Done: a spawned worker now only waits to hand its status over, and torch's agent tears such a worker
    # down with SIGTERM when another one failed; the service's handlers would only record that signal.
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)
    if launcher_pid is not None and os.getppid() != launcher_pid:
        # The launcher died (the service stopped on the SIGTERM that told so): nobody will read the status,
        # and torch's wrapper would wait for the launcher to read it forever, leaving an orphan.
        sys.stderr.flush()
        os._exit(code)
    return code


def _watch_launcher(launcher_pid: int, grace: float) -> None:
    """Exit ``grace`` seconds after the launcher died, if the service has not stopped by then.

    The SIGTERM that the launcher's death sends is acted on between batches; a worker blocked in native
    code (joining the group through the launcher's store, which died with it, or a collective waiting for
    a peer that is gone) would only see it when a timeout of minutes expires. The launcher itself kills its
    workers the same ``grace`` after asking them to stop.
    """

    def watch() -> None:
        while os.getppid() == launcher_pid:
            time.sleep(_WATCH_SECONDS)
        time.sleep(grace)
        print(f"streammas run: worker {os.environ.get('RANK')}: the launcher died and the service did not stop "
              f"within [distributed] shutdown_seconds = {grace:g}; exiting", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, name="streammas-launcher-watch", daemon=True).start()


def _run(config: Config, files: Path | None) -> int:
    """Log with the rank, write the pid file, serve, leave the exit file (``files``: the run directory)."""
    rank, world_size, local_rank = worker_env()
    if rank != 0:  # one progress bar for the group, not one per worker on the same terminal
        config = dataclasses.replace(config, log=dataclasses.replace(config.log, progress="never"))
    pid_file = files / PID_FILE.format(rank=rank) if files is not None else None
    code: int | None = None  # stays None when the service raised: torch reports that failure, not an exit file
    with logs.logging_to(config.log.level, config.log.format) as handler:
        handler.addFilter(RankFilter(rank))
        try:
            if pid_file is not None:
                _write_atomically(pid_file, f"{os.getpid()}\n")
                if (files / STOP_FILE).exists():
                    logs.log_event(log, "worker_skipped", msg="the group is stopping; not started")
                    code = 0
                    return code
            logs.log_event(log, "worker", world_size=world_size, local_rank=local_rank, pid=os.getpid(),
                           restart=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")))
            if rank == 0 and config.path:
                logs.log_event(log, "config", path=os.path.abspath(config.path))
            code = _serve(config, local_rank, world_size)
            return code
        finally:
            if files is not None:
                if code:  # a status, not a crash: the launcher stops the others rather than restart the group
                    with contextlib.suppress(OSError):
                        _write_atomically(files / EXIT_FILE.format(rank=rank), f"{code}\n")
                with contextlib.suppress(OSError):
                    pid_file.unlink()


def _serve(config: Config, local_rank: int, world_size: int) -> int:
    """Join the group, run the service in it, leave it."""
    settings = config.distributed
    context: DistributedContext | None = None
    try:
        device = resolve_device(config.learner.device)
        if device.startswith("cuda") and world_size > 1:  # "cuda:0" too: one GPU per worker, as NCCL needs
            _use_own_gpu(local_rank)
        context = DistributedContext.from_environment(settings.backend, device, settings.timeout_seconds,
                                                      mode=settings.mode, average_every=settings.average_every)
        code = Service(config, distributed=context).run()
        if code == 0:  # every worker finished the same turn: leave together (gloo can abort a lone teardown)
            context.barrier()
        return code
    except ServiceError as e:
        print(f"streammas run: worker {os.environ.get('RANK')}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"streammas run: worker {os.environ.get('RANK')}: interrupted during start-up", file=sys.stderr)
        return 130
    finally:
        if context is not None:
            context.close()


def _use_own_gpu(local_rank: int) -> None:
    # "cuda" means this worker's GPU: the workers of a machine share its GPUs by local rank, as NCCL needs.
    count = torch.cuda.device_count()
    if count:
        torch.cuda.set_device(local_rank % count)
