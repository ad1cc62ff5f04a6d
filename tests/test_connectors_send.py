"""`streammas send`: a file into a ZeroMQ source."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from connectors import send
from connectors.zmq import ZmqSource

REPO = Path(__file__).resolve().parents[1]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    send.add_arguments(parser)
    return parser.parse_args(list(argv))


def receive(src: ZmqSource, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    xs, ys, got = [], [], 0
    deadline = time.monotonic() + 60
    while got < n:
        batch = src.read(timeout=0.5)
        if batch is None:
            assert time.monotonic() < deadline, "stalled"
            continue
        xs.append(batch.x)
        ys.append(batch.y)
        got += len(batch)
    return np.concatenate(xs), None if ys[0] is None else np.concatenate(ys)


@pytest.mark.slow
def test_send_a_csv_file_from_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b,label\n" + "".join(f"{i},{-i},{i % 4}\n" for i in range(50)) + "oops\n")
    with ZmqSource("tcp://127.0.0.1:*", batch_size=64, max_latency_ms=5) as src:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run(
            [sys.executable, "-m", "streammas", "send", str(path), "--to", src.address, "--batch-size", "7"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        x, y = receive(src, 50)
        assert src.counters["messages"] == 8
    assert x[:, 0].tolist() == list(range(50)) and y.tolist() == [i % 4 for i in range(50)]
    assert "sent 50 samples in 8 messages" in done.stderr
    assert "columns 1" in done.stderr


def test_send_in_process_with_rate_and_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(40, dtype=np.float64).reshape(20, 2), y=np.arange(20))
    with ZmqSource("tcp://127.0.0.1:*", batch_size=64, max_latency_ms=5) as src:
        args = parse(str(path), "--to", src.address, "--rate", "1e6", "--no-labels", "--no-progress")
        assert send.run_command(args) == 0
        x, y = receive(src, 20)
    assert x.shape == (20, 2) and y is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["missing.csv"], "No such file"),
        (["missing/*.csv"], "no file matches"),
        (["data.txt"], "cannot tell"),
        (["d.npy", "--label", "y"], "--label is for CSV"),
        (["d.npy", "--to", "nonsense://x"], "cannot open"),
        (["d.npy", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_send_reports_errors_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, argv, message
) -> None:
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "d.npy", np.zeros((2, 2), np.float32))
    assert send.run_command(parse(*argv)) == 2
    assert message in capsys.readouterr().err


def test_batch_size_follows_the_rate() -> None:
    assert send._batch_size(parse("f.csv")) == 256
    assert send._batch_size(parse("f.csv", "--rate", "100")) == 5
    assert send._batch_size(parse("f.csv", "--rate", "1e9")) == 256
    assert send._batch_size(parse("f.csv", "--rate", "100", "--batch-size", "50")) == 50
