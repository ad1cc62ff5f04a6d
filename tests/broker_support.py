"""Real brokers for the tests: ``redis-server`` and ``mosquitto`` on 127.0.0.1, on a free port, in a directory of
their own, stopped (and restartable on the same port, with what they persisted) by the test.

A test that needs a broker whose binary is not installed is skipped (``.ci/run`` installs both).
(No tests here, so no ``test_`` prefix.)
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

#: A safety net for waits, never an assertion about speed.
PATIENCE = 60.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str, package: str, *extra: str) -> str:
    found = shutil.which(name) or next((p for p in extra if Path(p).exists()), None)
    if found is None:
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return found


class Broker:
    """A broker process on a free port (kept across :meth:`restart`), in ``directory``."""

    name = ""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.start()

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with open(self.directory / f"{self.name}.log", "ab") as log:
            self.proc = subprocess.Popen(self.command(), cwd=self.directory, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + PATIENCE
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start:\n{self.log()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop it as an operator would (SIGTERM: it persists what it holds), and wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=PATIENCE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        path = self.directory / f"{self.name}.log"
        return path.read_text(errors="replace") if path.exists() else ""


class RedisServer(Broker):
    """``redis-server`` with an append-only file synced at every write: a restart loses nothing it acknowledged."""

    name = "redis-server"

    def command(self) -> list[str]:
        return [_binary("redis-server", "redis-server"), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--appendonly", "yes", "--appendfsync", "always", "--save", "",
                "--daemonize", "no"]

    @property
    def uri(self) -> str:
        return f"redis+stream://127.0.0.1:{self.port}"

    def client(self):
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port)


class Mosquitto(Broker):
    """``mosquitto`` with persistence (sessions and their queued messages survive a restart) and no limit on the
    messages it queues for a session."""

    name = "mosquitto"

    def command(self) -> list[str]:
        conf = self.directory / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                        f"persistence_location {self.directory}/\nmax_queued_messages 0\nautosave_interval 1\n")
        return [_binary("mosquitto", "mosquitto", "/usr/sbin/mosquitto"), "-c", str(conf)]

    @property
    def uri(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"


@pytest.fixture
def redis_server(tmp_path):
    pytest.importorskip("redis")
    server = RedisServer(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def mosquitto(tmp_path):
    pytest.importorskip("paho.mqtt")
    broker = Mosquitto(tmp_path / "mosquitto")
    yield broker
    broker.stop()
