"""The launcher: ``streammas run`` with ``[distributed] workers`` > 1 (``--workers N``) starts that many
workers on this machine and supervises them, instead of running the service itself.

The workers are started through torch's elastic launcher (one node, a c10d rendezvous on 127.0.0.1, the
``spawn`` start method); each runs :func:`streammas.service.worker.run_worker`. A worker that fails is
restarted with the whole group, from the last checkpoint, up to ``[distributed] max_restarts`` times.

Signals. torch's launcher, run in the main thread, would take SIGTERM, SIGINT, SIGHUP and SIGQUIT as death
signals: a SIGHUP (which asks ``streammas run`` for a checkpoint) would kill the group. So it runs in a
helper thread, where it installs no handler, and the main thread keeps the service's own handlers
(:mod:`streammas.service.signals`) and acts on them every 0.1 s:

- SIGHUP: sent on to rank 0 (the workers share the request: one checkpoint of the group);
- the first SIGTERM or SIGINT: the group is stopping (``<run dir>/stop``, so that a worker restarted
  meanwhile returns at once), SIGTERM goes to every worker, which checkpoints and exits; after
  ``[distributed] shutdown_seconds`` the workers still there are killed with SIGKILL;
- a repeated stop signal is only logged.

The run directory, ``<[state] dir>/run``, holds the launcher's lock (one launcher per state directory), a
``worker-<rank>.pid`` file per live worker (written once the worker's handlers are installed, removed when
it exits), a ``worker-<rank>.exit`` file for a worker that returned a non-zero status (the launcher then
stops the others) and the ``stop`` mark. Workers ask the kernel for SIGTERM when the launcher dies, and
exit ``shutdown_seconds`` later if still there, so a launcher killed with SIGKILL leaves no orphans (Linux).

Exit status: the largest of the workers' statuses (0: all stopped or finished); 1 when a worker failed
beyond ``max_restarts`` or had to be killed; 2 when the launcher could not start (another launcher holds
the state directory; ``streammas run`` also checks the device and the model factory before it launches).

Under ``torchrun`` (``torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT
-m streammas run --config C``) every process finds ``RANK`` and ``WORLD_SIZE`` in its environment and runs
as a worker directly, without this launcher. torchrun then owns the signals: those named by its
``--signals-to-handle`` (default ``SIGTERM,SIGINT,SIGHUP,SIGQUIT``) it sends on to the workers, and kills
those still running ``--shutdown-timeout`` seconds later (default 30: give it the time a final checkpoint
takes). SIGTERM sent to torchrun therefore stops the group cleanly, but SIGHUP sent to torchrun ends it too:
listed, the workers checkpoint and are then killed; unlisted, it kills torchrun, and its workers stop on the
SIGTERM that its death sends them. To ask for a checkpoint, send SIGHUP to the worker processes themselves
(``pkill -HUP -P <torchrun pid>``). With torchrun's ``--max-restarts``, set
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1`` in its environment, as the launcher does for its own workers: else a
restarted group finds the addresses of the group before it in torchrun's store and cannot connect.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from streammas.config import Config
from streammas.service import logs
from streammas.service.errors import ServiceError
from streammas.service.signals import SignalHandlers
from streammas.service.statelock import DirLock, StateDirLocked
from streammas.service.worker import EXIT_FILE, PID_FILE, STOP_FILE, run_worker

log = logging.getLogger("streammas.launcher")

#: The run directory's name inside ``[state] dir``.
RUN_DIR = "run"
#: How often the main thread acts on signals and looks at the workers.
POLL_SECONDS = 0.1
#: After SIGKILL, how long torch's agent gets to notice and return before the launcher gives up on it.
REAP_SECONDS = 30.0
_TORCH_MP_LOGGER = "torch.distributed.elastic.multiprocessing.api"
_SHARED_STORE_OFF = "TORCH_DISABLE_SHARE_RDZV_TCP_STORE"


def is_worker(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process was started as a worker of a group (``RANK`` and ``WORLD_SIZE`` set, as torchrun
    and the launcher set them).

    >>> is_worker({"RANK": "0", "WORLD_SIZE": "2"}), is_worker({})
    (True, False)
    """
    return "RANK" in environ and "WORLD_SIZE" in environ


def should_launch(config: Config, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``streammas run`` starts workers (``[distributed] workers`` > 1) rather than serving itself.

    >>> from streammas.config import parse_config
    >>> cfg = parse_config('[source]\\nuri = "npy:x.npy"\\n', {"distributed.workers": 2})
    >>> should_launch(cfg, {}), should_launch(cfg, {"RANK": "1", "WORLD_SIZE": "2"})
    (True, False)
    """
    return config.distributed.workers > 1 and not is_worker(environ)


class _ChildThreadWarning(logging.Filter):
    """torch warns that, in a helper thread, it installs no signal handlers: that is the point here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "child thread" not in record.getMessage()


class Launcher:
    """Starts ``[distributed] workers`` workers through torch's elastic launcher and supervises them.

    :meth:`run` starts them, forwards signals to them, stops them, and returns the group's exit status
    (see :mod:`streammas.service.launch`).

    Parameters
    ----------
    config : Config
        The whole configuration; every worker gets it as it is.
    handle_signals : bool, default True
        Take SIGTERM, SIGINT and SIGHUP with the service's handlers (main thread only; a launcher run in
        another thread is stopped with :meth:`request_stop`).

    Attributes
    ----------
    run_dir : pathlib.Path
        ``<[state] dir>/run``: the lock, the workers' pid and exit files, the stop mark.
    returned : dict or None
        Each rank's exit status, once the group finished without a failure beyond ``max_restarts``.

    Examples
    --------
    >>> from streammas.config import parse_config
    >>> cfg = parse_config('[source]\\nuri = "npy:x.npy"\\n[state]\\ndir = "/tmp/s"\\n', {"distributed.workers": 2})
    >>> launcher = Launcher(cfg, handle_signals=False)
    >>> str(launcher.run_dir), launcher.worker_pids()
    ('/tmp/s/run', {})
    """

    def __init__(self, config: Config, *, handle_signals: bool = True) -> None:
        self.config = config
        self.settings = config.distributed
        self.handle_signals = handle_signals
        self.run_dir = Path(config.state.dir) / RUN_DIR
        self.returned: dict[int, Any] | None = None
        self.failure: ChildFailedError | None = None
        self.error: BaseException | None = None
        self.killed: list[int] = []
        self._lock = DirLock(self.run_dir)
        self._signals = SignalHandlers(stop=self.request_stop, checkpoint=self.forward_checkpoint,
                                       repeated=self._repeated_stop)
        self._stop_reason: str | None = None
        self._stopping: str | None = None
        self._terminated: set[int] = set()
        self._exits: dict[int, int] = {}
        self._kill_at: float | None = None
        self._give_up_at: float | None = None
        self._abandoned = False
        self._failure_text = ""

    # -- control ---------------------------------------------------------------------------------------------
    def request_stop(self, reason: str = "requested") -> None:
        """Stop the group: SIGTERM to every worker, SIGKILL after ``shutdown_seconds`` (acted on by the main
        loop within 0.1 s; safe from any thread)."""
        if self._stop_reason is None:
            self._stop_reason = reason

    def forward_checkpoint(self) -> None:
        """Send SIGHUP to rank 0: the workers share any worker's request at their next turn and write one
        checkpoint of the group (a SIGHUP to each could be seen in different turns: two checkpoints)."""
        pid = self.worker_pids().get(0)
        if pid is not None:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGHUP)
        logs.log_event(log, "forwarded", signal="SIGHUP", pids=[] if pid is None else [pid])

    def _repeated_stop(self, count: int) -> None:
        logs.log_event(log, "stopping", signals=count, msg="already stopping; waiting for the workers")

    # -- the workers' files ----------------------------------------------------------------------------------
    def worker_pids(self) -> dict[int, int]:
        """``{rank: pid}`` of the live workers that wrote their pid file (only this launcher's children)."""
        pids: dict[int, int] = {}
        with contextlib.suppress(OSError):
            for path in self.run_dir.glob(PID_FILE.format(rank="*")):
                rank, pid = _read_int(path.name), _read_int(path)
                if rank is not None and pid is not None and _is_child(pid):
                    pids[rank] = pid
        return pids

    def _exited(self) -> dict[int, int]:
        """``{rank: status}`` of the workers that returned a non-zero status (their exit files)."""
        found: dict[int, int] = {}
        with contextlib.suppress(OSError):
            for path in self.run_dir.glob(EXIT_FILE.format(rank="*")):
                rank, code = _read_int(path.name), _read_int(path)
                if rank is not None and code is not None:
                    found[rank] = code
        return found

    def _signal_workers(self, sig: signal.Signals, only_new: bool = False) -> dict[int, int]:
        """Send ``sig`` to the live workers (with ``only_new``: those not sent SIGTERM yet); returns them."""
        sent = {}
        for rank, pid in self.worker_pids().items():
            if only_new and pid in self._terminated:
                continue
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
                sent[rank] = pid
            if sig == signal.SIGTERM:
                self._terminated.add(pid)
        return sent

    def _open_run_dir(self) -> None:
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except StateDirLocked as e:
            raise ServiceError(f"another launcher runs on this [state] dir: {e}") from None
        except OSError as e:
            raise ServiceError(f"cannot create the run directory {self.run_dir}: {e.strerror or e}") from None
        self._clear_run_dir()  # what a launcher killed with SIGKILL left: stale pids must never be signalled

    def _clear_run_dir(self) -> None:
        for pattern in (PID_FILE.format(rank="*"), EXIT_FILE.format(rank="*"), STOP_FILE, ".worker-*.tmp"):
            for path in self.run_dir.glob(pattern):
                with contextlib.suppress(OSError):
                    path.unlink()

    # -- running ---------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Start the workers, supervise them until the group ends, return its exit status (raises
        :class:`~streammas.service.ServiceError` when the launcher cannot start)."""
        if self.handle_signals:
            self._signals.install()
        torch_log = logging.getLogger(_TORCH_MP_LOGGER)
        quiet = _ChildThreadWarning()
        torch_log.addFilter(quiet)
        try:
            self._open_run_dir()
            try:
                self._supervise()
            finally:
                self._clear_run_dir()
                self._lock.release()
        finally:
            torch_log.removeFilter(quiet)
            self._signals.restore()
        code = self._exit_status()
        extra = {"killed": self.killed} if self.killed else {}
        logs.log_event(log, "group_stopped", reason=self._stopping or "finished", exit_code=code, **extra)
        return code

    def _supervise(self) -> None:
        logs_dir = tempfile.mkdtemp(prefix="streammas-launch-")  # torch's error files, gone when done
        # A store of its own for each round, hosted by worker 0: with the agent's store shared across rounds,
        # a restarted group reads the addresses of the group before it and cannot connect (pytorch#135712).
        os.environ.setdefault(_SHARED_STORE_OFF, "1")
        thread = threading.Thread(target=self._launch, args=(logs_dir,), name="streammas-launcher", daemon=True)
        logs.log_event(log, "launching", workers=self.settings.workers, backend=self.settings.backend,
                       max_restarts=self.settings.max_restarts, run_dir=str(self.run_dir))
        thread.start()
        try:
            while thread.is_alive():
                thread.join(POLL_SECONDS)
                self._signals.poll()
                if thread.is_alive() and not self._step(time.monotonic()):
                    self._abandoned = True
                    break
            for rank, code in self._exited().items():  # statuses left by workers in the group's last moments
                self._exits.setdefault(rank, code)
        finally:
            if not thread.is_alive():  # else torch may still read its files; they go with the temp directory
                shutil.rmtree(logs_dir, ignore_errors=True)

    def _step(self, now: float) -> bool:
        """One look at the workers; ``False`` when the launcher gives up waiting for torch's agent."""
        for rank, code in self._exited().items():
            if rank not in self._exits:
                self._exits[rank] = code
                logs.log_event(log, "worker_exited", logging.WARNING, worker=rank, exit_code=code,
                               msg="a worker gave up; stopping the group")
                self.request_stop(f"worker {rank} exited with status {code}")
        if self._stop_reason is not None and self._stopping is None:
            self._begin_stop(now)
        if self._stopping is None:
            return True
        self._signal_workers(signal.SIGTERM, only_new=True)  # restarted meanwhile: they stop too
        if self._kill_at is not None and now >= self._kill_at:
            self._kill_at = None
            self.killed = sorted(self._signal_workers(signal.SIGKILL).values())
            if self.killed:
                logs.log_event(log, "killed", logging.WARNING, pids=self.killed,
                               after=self.settings.shutdown_seconds,
                               msg="workers still running after [distributed] shutdown_seconds")
            self._give_up_at = now + REAP_SECONDS
        if self._give_up_at is not None and now >= self._give_up_at:
            logs.log_event(log, "abandoned", logging.ERROR, msg="torch's agent did not return after the workers "
                           "were killed; exiting without it")
            return False
        return True

    def _begin_stop(self, now: float) -> None:
        self._stopping = self._stop_reason
        with contextlib.suppress(OSError):  # the mark first: a worker that starts after it returns at once
            (self.run_dir / STOP_FILE).write_text(f"{self._stopping}\n")
        pids = self._signal_workers(signal.SIGTERM)
        logs.log_event(log, "stopping", reason=self._stopping, pids=sorted(pids.values()),
                       shutdown_seconds=self.settings.shutdown_seconds)
        self._kill_at = now + self.settings.shutdown_seconds

    def _launch(self, logs_dir: str) -> None:
        """The helper thread: torch's elastic launcher, which installs no signal handler off the main thread."""
        settings = self.settings
        launch_config = LaunchConfig(
            min_nodes=1, max_nodes=1, nproc_per_node=settings.workers, run_id=f"streammas-{os.getpid()}",
            rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", local_addr="127.0.0.1",
            max_restarts=settings.max_restarts, monitor_interval=POLL_SECONDS, start_method="spawn",
            logs_specs=DefaultLogsSpecs(log_dir=logs_dir),
            # when a worker fails, torch stops the others before the restart: the same grace as on SIGTERM
            shutdown_timeout=math.ceil(settings.shutdown_seconds))
        try:
            self.returned = elastic_launch(launch_config, run_worker)(self.config, str(self.run_dir), os.getpid())
        except ChildFailedError as e:
            self.failure = e
            self._failure_text = _describe_failure(e)  # now: the error files go with the launch
        except BaseException as e:  # reported by the main thread, which owns the exit status
            self.error = e

    def _exit_status(self) -> int:
        codes = [code for code in (self.returned or {}).values() if isinstance(code, int)]
        codes += self._exits.values()
        if self.error is not None:
            _say(f"the launcher failed: {type(self.error).__name__}: {self.error}")
            codes.append(1)
        if self.failure is not None and not self.killed:  # a worker killed here is said below
            _say(f"{self._failure_text}, and the group was restarted [distributed] max_restarts = "
                 f"{self.settings.max_restarts} times; giving up")
            codes.append(1)
        if self.killed:
            _say(f"workers {self.killed} did not stop within [distributed] shutdown_seconds = "
                 f"{self.settings.shutdown_seconds:g} and were killed; their last batches may not be checkpointed")
            codes.append(1)
        if self._abandoned:
            codes.append(1)
        return max(codes, default=0)


def launch(config: Config) -> int:
    """Run ``streammas run`` as a launcher of ``[distributed] workers`` workers; returns the exit status."""
    return Launcher(config).run()


def _describe_failure(error: ChildFailedError) -> str:
    """The first failure, with the worker's exception when it raised one (torch's error file) or the signal
    that killed it."""
    rank, failure = error.get_first_failure()
    text = f"worker {rank} failed (exit code {failure.exitcode}"
    message = failure.message if isinstance(failure.message, str) else failure.message.get("message", "")
    if failure.exitcode < 0 or os.path.isfile(failure.error_file):  # else torch's message only says it has none
        text += f": {message}"
    return text + ")"


def _say(message: str) -> None:
    print(f"streammas run: error: {message}", file=sys.stderr)


def _read_int(source: Path | str) -> int | None:
    """The number in a file (a ``Path``) or in a file name such as ``worker-3.pid`` (a ``str``)."""
    try:
        text = source.read_text() if isinstance(source, Path) else source.split("-", 1)[1].split(".", 1)[0]
        return int(text.strip())
    except (OSError, ValueError, IndexError):
        return None


def _is_child(pid: int) -> bool:
    """Whether ``pid`` is a live child of this process: a pid file left behind must not make the launcher
    signal an unrelated process that reused the pid (Linux ``/proc``; elsewhere, whether it exists)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return False
    except OSError:
        return False
    else:  # "pid (comm) state ppid ...": comm may hold spaces and parentheses, the last ")" ends it
        fields = stat.rsplit(")", 1)[-1].split()
        return len(fields) > 1 and fields[1] == str(os.getpid())
    try:
        os.kill(pid, 0)
    except OSError:  # gone, or another user's: not ours either way
        return False
    return True
