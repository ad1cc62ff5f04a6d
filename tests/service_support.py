"""Helpers for the service tests: the daemon as a real subprocess with its JSON log lines, data, a counting model.

(No tests here, so no ``test_`` prefix: pytest does not collect it, and the test modules import it by name from the
tests folder, which pytest puts on ``sys.path``.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: A safety net for waits, never an assertion about speed (the machine may be loaded).
PATIENCE = 120.0


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def streammas(*args: str, cwd: Path, timeout: float = PATIENCE) -> subprocess.CompletedProcess:
    """Run ``python -m streammas ARGS`` to completion."""
    return subprocess.run([sys.executable, "-m", "streammas", *args], cwd=cwd, env=child_env(), capture_output=True,
                          text=True, timeout=timeout)


class Daemon:
    """``streammas run`` in a subprocess, logging JSON lines that the test can wait for."""

    def __init__(self, config: Path, cwd: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streammas", "run", "--config", str(config), "--log-format", "json", *extra],
            cwd=cwd, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.records: list[dict[str, Any]] = []
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if isinstance(record, dict):
                    self.records.append(record)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.records if r.get("event") == name]

    def wait_for(self, name: str, where: Callable[[dict], bool] = lambda r: True, after: int = 0) -> dict[str, Any]:
        """The first log record ``event == name`` (from record number ``after``) that satisfies ``where``."""
        deadline = time.monotonic() + PATIENCE
        with self._cond:
            while True:
                for record in self.records[after:]:
                    if record.get("event") == name and where(record):
                        return record
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"the daemon exited ({self.proc.returncode}) before {name!r}:\n{self.log()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {name!r} event:\n{self.log()}")
                self._cond.wait(min(left, 0.5))

    @property
    def count(self) -> int:
        with self._cond:
            return len(self.records)

    def send(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal and wait for the exit status."""
        self.proc.send_signal(sig)
        return self.wait()

    def wait(self) -> int:
        rc = self.proc.wait(timeout=PATIENCE)
        self._reader.join(timeout=10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait()


def address(daemon: Daemon) -> str:
    return daemon.wait_for("listening")["address"]


def metrics_url(daemon: Daemon) -> str:
    return daemon.wait_for("metrics")["url"]


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text page as ``{"name{labels}": value}``."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def peak_rss_mib(pid: int) -> float:
    """A process's peak resident memory so far (``VmHWM`` in ``/proc``), in MiB; 0 once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in text.splitlines() if line.startswith("VmHWM:")), 0.0)


def digits(n: int | None = None) -> np.ndarray:
    from sklearn.datasets import load_digits

    x = (load_digits().data / 16.0).astype(np.float32)
    if n is not None:
        x = np.resize(x, (n, x.shape[1]))
    return x


#: A state directory that checkpoints only at shutdown or when asked, and no periodic status line: the tail of
#: most test configurations.
QUIET_STATE = """[state]
dir = "state"
every_samples = 0
every_seconds = 0
[log]
status_every_seconds = 0"""


def write_config(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


COUNTING_MODEL = '''
import torch
from torch import nn


class Counting(nn.Module):
    """Passes the row id (column 0) through, learns the rest, and counts in a buffer how often each row is
    learned (a training-mode forward): the buffer is part of the checkpointed model state."""

    def __init__(self, n_rows, ballast_mb=0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 2))
        self.register_buffer("seen", torch.zeros(n_rows, dtype=torch.int32))
        # Dead weight that makes each checkpoint take a while to write, so that kills land inside writes.
        self.register_buffer("ballast", torch.zeros(ballast_mb << 18))

    def forward(self, x):
        if self.training:
            ids = x[:, 0].round().long()
            self.seen.index_add_(0, ids, torch.ones(len(ids), dtype=torch.int32))
        return torch.cat([x[:, :1], self.net(x[:, 1:])], dim=1)


def make(sample_shape, n_rows=100, ballast_mb=0):
    return Counting(n_rows, ballast_mb)
'''


def write_counting_model(directory: Path) -> None:
    (directory / "counting_model.py").write_text(COUNTING_MODEL)
