"""The daemon under a stand-in for systemd: a real unix datagram socket in ``$NOTIFY_SOCKET`` receives
``READY=1`` once the source is open, ``WATCHDOG=1`` again and again while it runs (``$WATCHDOG_USEC``), and
``STOPPING=1`` after SIGTERM, before a clean exit."""

from __future__ import annotations

import datetime
import os
import signal
import socket
import time

import pytest
from service_support import PATIENCE, Daemon, write_config

from streammas.service.notify import SystemdNotifier

CONFIG = """
[source]
uri = "csv:data.csv"
batch_size = 8
options = {follow = true, poll_interval = 0.05}
[state]
dir = "state"
[log]
status_every_seconds = 0
"""


class Manager:
    """The listening end of ``$NOTIFY_SOCKET``: collects each datagram's ``KEY=value`` lines."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[list[str]] = []

    def wait_for(self, line: str, count: int = 1) -> list[list[str]]:
        """Receive until ``count`` messages held ``line``; returns every message so far."""
        deadline = time.monotonic() + PATIENCE
        while sum(line in m for m in self.messages) < count:
            left = deadline - time.monotonic()
            assert left > 0, f"no {line!r} (x{count}) among {self.messages}"
            self.sock.settimeout(min(left, 1.0))
            try:
                self.messages.append(self.sock.recv(4096).decode().split("\n"))
            except TimeoutError:
                continue
        return self.messages

    def close(self) -> None:
        self.sock.close()


def _run_under_manager(tmp_path, monkeypatch, notify_socket: str, manager: Manager) -> None:
    (tmp_path / "data.csv").write_text("a,b\n" + "".join(f"{i % 7},{i % 3}\n" for i in range(64)))
    config = write_config(tmp_path / "streammas.toml", CONFIG)
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    daemon = Daemon(config, tmp_path)
    try:
        messages = manager.wait_for("READY=1")
        ready_at = time.time()
        # the log line can reach the test after the datagram does: compare when each was made
        reading = daemon.wait_for("reading")
        opened_at = datetime.datetime.strptime(reading["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.UTC).timestamp()
        assert opened_at <= ready_at + 0.001, "READY=1 before the source was open"
        ready_at = len(messages)
        # Pings go on while the followed file has nothing new: the loop turns, idle, every READ_TIMEOUT.
        messages = manager.wait_for("WATCHDOG=1", count=5)
        assert not any("STOPPING=1" in m for m in messages)
        assert all(k == "WATCHDOG=1" or k.startswith("STATUS=") for m in messages[ready_at:] for k in m)
        daemon.send(signal.SIGTERM)
        messages = manager.wait_for("STOPPING=1")
        assert daemon.wait() == 0, daemon.log()
    finally:
        daemon.kill()
    assert messages[0][0] == "READY=1" and "STOPPING=1" in messages[-1]
    assert daemon.events("stopped")[-1]["exit_code"] == 0


@pytest.mark.slow
def test_daemon_notifies_a_path_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify.sock")
    manager = Manager(path)
    try:
        _run_under_manager(tmp_path, monkeypatch, path, manager)
    finally:
        manager.close()


@pytest.mark.slow
def test_daemon_notifies_an_abstract_socket(tmp_path, monkeypatch):
    name = f"streammas-test-{os.getpid()}-{time.monotonic_ns()}"
    manager = Manager(b"\0" + name.encode())
    try:
        _run_under_manager(tmp_path, monkeypatch, "@" + name, manager)
    finally:
        manager.close()


def test_watchdog_is_rate_limited_and_retried_after_a_failed_send(tmp_path):
    now = [0.0]
    path = str(tmp_path / "notify.sock")
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000"}, clock=lambda: now[0])
    assert notifier.interval == 1.0
    assert not notifier.watchdog(), "nobody listens yet: the send fails"
    manager = Manager(path)
    try:
        assert notifier.watchdog(), "a failed ping is retried at once"
        now[0] = 0.5
        assert not notifier.watchdog()
        now[0] = 1.0
        assert notifier.watchdog()
        assert notifier.status("learned 10 samples") and not notifier.status("learned 20 samples")
        assert manager.wait_for("STATUS=learned 10 samples") == [["WATCHDOG=1"], ["WATCHDOG=1"],
                                                                  ["STATUS=learned 10 samples"]]
    finally:
        manager.close()


def test_watchdog_of_another_process_or_no_socket_is_left_alone(tmp_path):
    other = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "s"), "WATCHDOG_USEC": "1000000",
                             "WATCHDOG_PID": str(os.getpid() + 1)})
    assert other.enabled and other.interval is None and not other.watchdog()
    silent = SystemdNotifier({"WATCHDOG_USEC": "1000000"})
    assert not silent.enabled and silent.interval is None
    assert not (silent.ready() or silent.watchdog() or silent.stopping() or silent.status("x"))
    assert silent.sent == 0
