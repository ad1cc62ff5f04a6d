"""``streammas run --workers N``: the ``[distributed]`` section and its flag (fast), and the launcher with real
worker processes (slow): a finite file learned by two workers, SIGHUP and SIGTERM forwarded to them, a
launcher killed with SIGKILL, workers killed after ``shutdown_seconds``, a worker failing beyond
``max_restarts``, a worker that cannot start stopping the group, and ``streammas run`` under torchrun."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from service_support import PATIENCE, QUIET_STATE, Daemon, child_env, streammas, write_config

from streammas.config import ConfigError, DistributedConfig, parse_config
from streammas.service import logs
from streammas.service.cli import FLAG_KEYS, add_arguments, config_from_args
from streammas.service.errors import ServiceError
from streammas.service.launch import RUN_DIR, Launcher, is_worker, should_launch
from streammas.service.statelock import DirLock
from streammas.service.worker import RankFilter

MINIMAL = '[source]\nuri = "npy:x.npy"\n'


# -- the [distributed] section and --workers ----------------------------------------------------------------------
def test_defaults_keep_one_process():
    cfg = parse_config(MINIMAL)
    assert cfg.distributed == DistributedConfig()
    assert cfg.as_dict()["distributed"] == {"workers": 1, "backend": "auto", "mode": "exact", "average_every": 16,
                                            "timeout_seconds": 300.0, "shutdown_seconds": 60.0, "max_restarts": 3,
                                            "reshard": False}
    assert not should_launch(cfg, {})


@pytest.mark.parametrize(("key", "value", "message"), [
    ("workers", "0", "[distributed] workers must be >= 1; got 0"),
    ("workers", "2.0", "[distributed] workers must be an integer, got number 2.0"),
    ("backend", '"mpi"', "[distributed] backend must be one of 'auto', 'gloo', 'nccl'; got 'mpi'"),
    ("mode", '"gossip"', "[distributed] mode must be one of 'exact', 'average'; got 'gossip'"),
    ("average_every", "0", "[distributed] average_every must be >= 1; got 0"),
    ("timeout_seconds", "0", "[distributed] timeout_seconds must be > 0; got 0.0"),
    ("shutdown_seconds", "-1", "[distributed] shutdown_seconds must be >= 0; got -1.0"),
    ("max_restarts", "-1", "[distributed] max_restarts must be >= 0; got -1"),
    ("reshard", '"yes"', "[distributed] reshard must be true or false, got string 'yes'"),
    ("worker", "2", "[distributed] unknown key 'worker'; accepted keys: workers, backend, mode, average_every, "
                    "timeout_seconds, shutdown_seconds, max_restarts, reshard"),
])
def test_bad_values_name_the_key_and_what_it_accepts(key, value, message):
    with pytest.raises(ConfigError) as info:
        parse_config(f"{MINIMAL}[distributed]\n{key} = {value}\n")
    assert str(info.value) == message


def test_nccl_needs_a_cuda_device():
    with pytest.raises(ConfigError, match=r'\[distributed\] backend = "nccl" needs a CUDA \[learner\] device'):
        parse_config(f'{MINIMAL}[learner]\ndevice = "cpu"\n[distributed]\nbackend = "nccl"\n')
    cfg = parse_config(f'{MINIMAL}[learner]\ndevice = "cuda"\n[distributed]\nbackend = "nccl"\n')
    assert (cfg.learner.device, cfg.distributed.backend) == ("cuda", "nccl")
    cfg = parse_config(f'{MINIMAL}[distributed]\nbackend = "nccl"\n')  # device auto: CUDA where there is one
    assert (cfg.learner.device, cfg.distributed.backend) == ("auto", "nccl")


def _args(*flags: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--source", "npy:x.npy", *flags])


def test_workers_flag_sets_distributed_workers():
    assert FLAG_KEYS["workers"] == "distributed.workers"
    cfg = config_from_args(_args("--workers", "2"))
    assert cfg.distributed.workers == 2 and should_launch(cfg, {})
    assert config_from_args(_args()).distributed.workers == 1
    cfg = config_from_args(_args("--workers", "3", "--set", "distributed.max_restarts=0"))
    assert (cfg.distributed.workers, cfg.distributed.max_restarts) == (3, 0)
    with pytest.raises(ConfigError, match=r"\[distributed\] workers must be >= 1; got 0"):
        config_from_args(_args("--workers", "0"))
    assert config_from_args(_args("--start-fresh")).state.start_fresh  # unchanged beside it


def test_a_worker_of_torchrun_serves_instead_of_launching():
    cfg = parse_config(MINIMAL, {"distributed.workers": 4})
    torchrun = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert is_worker(torchrun) and not should_launch(cfg, torchrun)
    assert not is_worker({"RANK": "0"})  # both are needed


def test_only_live_children_are_signalled(tmp_path):
    """A pid file left behind (its process gone, or the pid taken by an unrelated process) is never signalled."""
    cfg = parse_config(MINIMAL, {"state.dir": str(tmp_path / "state"), "distributed.workers": 2})
    launcher = Launcher(cfg, handle_signals=False)
    run = tmp_path / "state" / RUN_DIR
    run.mkdir(parents=True)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / "worker-0.pid").write_text(f"{child.pid}\n")
        (run / "worker-1.pid").write_text("1\n")  # init: alive, not ours
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        (run / "worker-2.pid").write_text(f"{gone.pid}\n")
        (run / "worker-x.pid").write_text("garbage\n")
        assert launcher.worker_pids() == {0: child.pid}
    finally:
        child.kill()
        child.wait()
    assert launcher.worker_pids() == {}


def test_one_launcher_per_state_directory(tmp_path):
    cfg = parse_config(MINIMAL, {"state.dir": str(tmp_path / "state"), "distributed.workers": 2})
    (tmp_path / "state" / RUN_DIR).mkdir(parents=True)
    first = DirLock(tmp_path / "state" / RUN_DIR)
    first.acquire()
    try:
        with pytest.raises(ServiceError, match=r"another launcher runs on this \[state\] dir: .* in use by pid"):
            Launcher(cfg, handle_signals=False).run()
    finally:
        first.release()


def test_rank_is_a_field_of_every_line():
    record = logging.makeLogRecord({"name": "torch.distributed", "levelname": "WARNING", "msg": "plain", "created": 0})
    assert RankFilter(2).filter(record)
    line = json.loads(logs.StructuredFormatter("json").format(record))
    assert line["rank"] == 2 and line["msg"] == "plain"


# -- real workers --------------------------------------------------------------------------------------------------
FINITE = """
[source]
uri = "npy:{data}"
batch_size = 16
""" + QUIET_STATE + """
[distributed]
workers = 2
max_restarts = {restarts}
shutdown_seconds = {shutdown}
"""

FOLLOWED = """
[source]
uri = "csv:{data}"
batch_size = 16
max_latency_ms = 5
options = {{ follow = true, poll_interval = 0.02 }}
""" + QUIET_STATE + """
[distributed]
workers = 2
shutdown_seconds = {shutdown}
"""


def _finite(tmp_path: Path, rows: int = 256, restarts: int = 3, shutdown: float = 60, extra: str = "") -> Path:
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((rows, 4), dtype=np.float32))
    text = FINITE.format(data=tmp_path / "x.npy", restarts=restarts, shutdown=shutdown) + extra
    return write_config(tmp_path / "streammas.toml", text)


def _followed(tmp_path: Path, shutdown: float = 60) -> Path:
    (tmp_path / "rows.csv").write_text("a,b,c\n")
    return write_config(tmp_path / "streammas.toml", FOLLOWED.format(data=tmp_path / "rows.csv", shutdown=shutdown))


def _append(path: Path, n: int, start: int = 0) -> None:
    with open(path, "a") as f:
        f.writelines(f"{i % 7 / 7:.3f},{i % 5 / 5:.3f},{i % 3 / 3:.3f}\n" for i in range(start, start + n))


def _records(stderr: str) -> list[dict]:
    out = []
    for line in stderr.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def _events(records: list[dict], name: str) -> list[dict]:
    return [r for r in records if r.get("event") == name]


def _worker_pids(daemon: Daemon, cwd: Path) -> dict[int, int]:
    """``{rank: pid}`` once both workers said they started, checked against their pid files."""
    daemon.wait_for("worker", lambda r: r.get("rank") == 0)
    daemon.wait_for("worker", lambda r: r.get("rank") == 1)
    pids = {r["rank"]: r["pid"] for r in daemon.events("worker")}
    files = {p.name: int(p.read_text()) for p in (cwd / "state" / RUN_DIR).glob("worker-*.pid")}
    assert files == {f"worker-{rank}.pid": pid for rank, pid in pids.items()}
    return pids


def _alive(pid: int) -> bool:
    """Running (a zombie is not: in a container, nobody may reap the orphans of a killed launcher)."""
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _all_gone(pids, within: float = PATIENCE) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if not any(_alive(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_two_workers_learn_a_finite_file(tmp_path):
    config = _finite(tmp_path)
    done = streammas("run", "--config", str(config), "--log-format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    records = _records(done.stderr)
    workers = {r["rank"]: r["pid"] for r in _events(records, "worker")}
    assert sorted(workers) == [0, 1] and len(set(workers.values())) == 2, done.stderr
    assert all(r["world_size"] == 2 for r in _events(records, "worker"))
    stopped = {r["rank"]: r for r in _events(records, "stopped")}
    assert sorted(stopped) == [0, 1] and all(r["exit_code"] == 0 for r in stopped.values()), done.stderr
    assert _events(records, "group_stopped")[-1]["exit_code"] == 0
    assert all("rank" in r for r in records if r.get("logger") == "streammas.service")
    assert list((tmp_path / "state").glob("ckpt-*.pt")), "the group's final checkpoint"
    assert not list((tmp_path / "state" / RUN_DIR).glob("worker-*")), "pid files are removed at exit"
    assert _all_gone(workers.values(), within=10)


@pytest.mark.slow
def test_sighup_and_sigterm_are_forwarded_to_every_worker(tmp_path):
    config = _followed(tmp_path)
    daemon = Daemon(config, tmp_path)
    try:
        pids = _worker_pids(daemon, tmp_path)
        _append(tmp_path / "rows.csv", 200)
        daemon.wait_for("model")  # the group learns: a checkpoint has something to save

        mark = daemon.count
        daemon.send(signal.SIGHUP)
        forwarded = daemon.wait_for("forwarded")
        # to rank 0 alone: the workers share its request at their next turn, one checkpoint for the group
        assert forwarded["signal"] == "SIGHUP" and forwarded["pids"] == [pids[0]]
        checkpoint = daemon.wait_for("checkpoint", lambda r: r.get("reason") == "signal", after=mark)
        assert checkpoint["rank"] == 0  # rank 0 writes the group's checkpoint
        assert daemon.proc.poll() is None, "SIGHUP must not stop the group"
        time.sleep(0.5)
        assert len([r for r in daemon.records[mark:] if r.get("event") == "checkpoint"]) == 1

        assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
    finally:
        daemon.kill()
    stopping = next(r for r in daemon.events("stopping") if r["logger"] == "streammas.launcher")
    assert stopping["reason"] == "SIGTERM" and sorted(stopping["pids"]) == sorted(pids.values())
    stopped = {r["rank"]: r for r in daemon.events("stopped")}
    assert sorted(stopped) == [0, 1] and all(r["exit_code"] == 0 for r in stopped.values()), daemon.log()
    assert daemon.events("group_stopped")[-1]["exit_code"] == 0
    assert _all_gone(pids.values(), within=10), "no worker outlives the launcher"
    assert not list((tmp_path / "state" / RUN_DIR).glob("worker-*"))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("when", ["running", "starting"])
def test_a_launcher_killed_with_sigkill_leaves_no_worker(tmp_path, when):
    config = _followed(tmp_path, shutdown=3)
    daemon = Daemon(config, tmp_path)
    try:
        pids = _worker_pids(daemon, tmp_path)
        if when == "running":
            for rank in (0, 1):
                daemon.wait_for("reading", lambda r, rank=rank: r.get("rank") == rank)
        daemon.proc.kill()
        # the kernel tells each worker with SIGTERM: it stops as on a SIGTERM, and does not wait for a reader;
        # one still joining the group through the dead launcher's store exits shutdown_seconds later
        assert _all_gone(pids.values()), daemon.log()
    finally:
        daemon.kill()
    if when == "running":
        # both stop cleanly in the same turn; one that saw the other's SIGTERM first says so as its reason
        stopped = {r["rank"]: r for r in daemon.events("stopped")}
        assert sorted(stopped) == [0, 1] and all(r["exit_code"] == 0 for r in stopped.values()), daemon.log()
        assert any(r["reason"] == "SIGTERM" for r in stopped.values())
        assert all(r["reason"] in ("SIGTERM", "a worker was asked to stop") for r in stopped.values())


@pytest.mark.slow
def test_workers_still_running_after_shutdown_seconds_are_killed(tmp_path):
    config = _followed(tmp_path, shutdown=0)
    daemon = Daemon(config, tmp_path)
    try:
        pids = _worker_pids(daemon, tmp_path)
        assert daemon.stop(signal.SIGTERM) == 1, daemon.log()
    finally:
        daemon.kill()
    killed = daemon.wait_for("killed")
    assert sorted(killed["pids"]) == sorted(pids.values())
    assert "did not stop within [distributed] shutdown_seconds = 0" in daemon.log()
    assert daemon.events("group_stopped")[-1]["exit_code"] == 1
    # torch restarts the killed group; the restarted workers see that the group is stopping and return
    assert all(r.get("event") != "worker" or r["pid"] in pids.values() for r in daemon.records)
    assert _all_gone(pids.values(), within=10)


FAILING_MODEL = '''
import os


def make(sample_shape):
    os._exit(3)  # a worker that dies, as a segfault would, each time it builds its model
'''


@pytest.mark.slow
def test_a_worker_failing_beyond_max_restarts_fails_the_launcher(tmp_path):
    (tmp_path / "failing_model.py").write_text(FAILING_MODEL)
    config = _finite(tmp_path, restarts=1, shutdown=5, extra='[model]\nfactory = "failing_model:make"\n')
    done = streammas("run", "--config", str(config), "--log-format", "json", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert "failed (exit code 3), and the group was restarted [distributed] max_restarts = 1 times; giving up" \
        in done.stderr
    restarts = {r["restart"] for r in _events(_records(done.stderr), "worker")}
    assert restarts == {0, 1}, done.stderr


@pytest.mark.slow
def test_a_worker_that_cannot_start_stops_the_group(tmp_path):
    config = _finite(tmp_path)
    state = tmp_path / "state"
    state.mkdir()
    (state / "ckpt-00000001.pt").write_bytes(b"not a checkpoint")  # every checkpoint damaged: rank 0 refuses
    started = time.monotonic()
    done = streammas("run", "--config", str(config), "--log-format", "json", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "--start-fresh" in done.stderr
    exited = _events(_records(done.stderr), "worker_exited")
    assert exited and exited[0]["worker"] == 0 and exited[0]["exit_code"] == 2, done.stderr
    assert time.monotonic() - started < 60, "the others are stopped, not left to time out"


@pytest.mark.slow
def test_under_torchrun_each_process_is_a_worker(tmp_path):
    config = _finite(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend",
         "c10d", "--rdzv-endpoint", "127.0.0.1:0", "-m", "streammas", "run", "--config", str(config), "--log-format",
         "json"], cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=PATIENCE)
    assert done.returncode == 0, done.stderr
    records = _records(done.stderr)
    assert sorted(r["rank"] for r in _events(records, "worker")) == [0, 1], done.stderr
    assert not _events(records, "launching"), "no launcher of its own under torchrun"
    assert sorted(r["rank"] for r in _events(records, "stopped") if r["exit_code"] == 0) == [0, 1]
    assert not (tmp_path / "state" / RUN_DIR).exists()
