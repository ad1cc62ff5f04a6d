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
from service_support import child_env, streammas

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


def vacant_address() -> str:
    """A TCP address on 127.0.0.1 that nothing listens on: a port the system just gave a source and took back."""
    with ZmqSource("tcp://127.0.0.1:*", batch_size=1) as src:
        return src.address


def test_nobody_listening_fails_within_the_connect_timeout(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\n" + "".join(f"{i},{i}\n" for i in range(5000)))
    host_port = vacant_address().removeprefix("tcp://")  # the bare host:port form
    started = time.monotonic()
    done = streammas("send", str(path), "--to", host_port, "--connect-timeout", "1", cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 20  # not the 30 s linger
    assert f"no receiver connected to tcp://{host_port} within 1 s" in done.stderr
    assert "nothing sent" in done.stderr and "sent 5,000" not in done.stderr


def test_a_file_with_no_valid_row_fails_and_names_the_columns_option(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,when,b\n" + "".join(f"{i},2024-05-{i % 28 + 1:02d},{-i}\n" for i in range(500)))
    with ZmqSource("tcp://127.0.0.1:*", batch_size=1000, max_latency_ms=5) as src:
        done = streammas("send", str(path), "--to", src.address, cwd=tmp_path)
        assert done.returncode == 1, done.stderr
        assert "no valid samples" in done.stderr and "nothing sent" in done.stderr
        warnings = [line for line in done.stderr.splitlines() if "skipped input (parse)" in line]
        assert len(warnings) == send.SHOWN_SKIPS
        assert "--columns" in warnings[0]
        assert "490 more bad rows skipped after the first 10 warnings" in done.stderr
        assert "skipped bad input: parse 500" in done.stderr

        # the option the warning names is the way out
        done = streammas("send", str(path), "--to", src.address, "--columns", "a,b", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        x, _ = receive(src, 500)
    assert x[:, 0].tolist() == list(range(500)) and x[:, 1].tolist() == [-i for i in range(500)]


def test_host_port_and_port_alone_mean_tcp_on_that_host(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "d.npy"
    np.save(path, np.arange(12, dtype=np.float32).reshape(6, 2))
    with ZmqSource("tcp://127.0.0.1:*", batch_size=64, max_latency_ms=5) as src:
        port = src.address.rpartition(":")[2]
        for to in (f"127.0.0.1:{port}", f":{port}"):
            assert send.run_command(parse(str(path), "--to", to, "--no-progress")) == 0
            assert f"sent 6 samples in 1 messages to tcp://127.0.0.1:{port}" in capsys.readouterr().err
        x, _ = receive(src, 12)
    assert x.shape == (12, 2)


def test_a_peer_that_is_no_receiver_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import zmq

    np.save(tmp_path / "d.npy", np.zeros((3, 2), np.float32))
    context = zmq.Context()
    wrong = context.socket(zmq.PUSH)  # a PUSH cannot feed a PUSH: the handshake fails
    try:
        port = wrong.bind_to_random_port("tcp://127.0.0.1")
        args = parse(str(tmp_path / "d.npy"), "--to", f"tcp://127.0.0.1:{port}", "--connect-timeout", "1")
        assert send.run_command(args) == 1
    finally:
        wrong.close(0)
        context.term()
    assert "did not complete the ZeroMQ handshake" in capsys.readouterr().err


def test_without_waiting_the_queue_reaches_a_receiver_that_comes_late(tmp_path: Path) -> None:
    path = tmp_path / "d.npy"
    np.save(path, np.arange(20, dtype=np.float32).reshape(10, 2))
    address = vacant_address()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streammas", "send", str(path), "--to", address, "--connect-timeout", "0"],
        cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        time.sleep(1.0)  # the sender has queued everything by now, with nobody there
        with ZmqSource(address, batch_size=64, max_latency_ms=5) as src:
            x, _ = receive(src, 10)
            _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    assert "no receiver connected" in err and "yet" in err  # the warning, not an error
    assert "sent 10 samples" in err
    assert x[:, 0].tolist() == list(range(0, 20, 2))


def test_a_headerless_csv_is_sent_whole(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "bare.csv"
    path.write_text("".join(f"{i},{i * 2}\n" for i in range(500)))
    with ZmqSource("tcp://127.0.0.1:*", batch_size=1000, max_latency_ms=5) as src:
        assert send.run_command(parse(str(path), "--to", src.address, "--no-progress")) == 0
        x, y = receive(src, 500)
    assert x[:, 0].tolist() == list(range(500)) and y is None
    err = capsys.readouterr().err
    assert "no header row" in err and "sent 500 samples" in err


def test_several_addresses_take_turns_and_one_nobody_listens_on_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "d.npy"
    np.save(path, np.arange(40, dtype=np.float32).reshape(20, 2))
    with ZmqSource("tcp://127.0.0.1:*", batch_size=64, max_latency_ms=5) as a, \
            ZmqSource("tcp://127.0.0.1:*", batch_size=64, max_latency_ms=5) as b:
        # --to repeated and comma-separated are the same list
        args = parse(str(path), "--to", a.address, "--to", f"{b.address},{a.address}", "--batch-size", "2",
                     "--no-progress")
        assert send.addresses(args) == [a.address, b.address]
        assert send.run_command(args) == 0
        (xa, _), (xb, _) = receive(a, 10), receive(b, 10)
        assert sorted(xa[:, 0].tolist() + xb[:, 0].tolist()) == list(range(0, 40, 2))
        assert f"sent 20 samples in 10 messages to {a.address}, {b.address}" in capsys.readouterr().err

        # a worker that never comes: the others get their turns, the run says whose were not delivered
        missing = vacant_address()
        args = parse(str(path), "--to", f"{a.address},{missing}", "--batch-size", "2", "--connect-timeout", "0.5",
                     "--linger", "0.5", "--no-progress")
        started = time.monotonic()
        assert send.run_command(args) == 1
        assert time.monotonic() - started < 10
        got = []
        while (batch := a.read(timeout=0.5)) is not None:
            got += batch.x[:, 0].tolist()
    err = capsys.readouterr().err
    assert f"warning: no receiver connected to {missing} within 0.5 s" in err
    assert f"no receiver connected to {missing} within --linger (0.5 s): the messages queued for it were not" in err
    # a took its turns (which messages exactly depends on when libzmq gave up on the missing peer), once each
    assert got and got == sorted(set(got)) and set(got) <= set(range(0, 40, 2))
