"""The daemon and its state directory under abuse, as a real subprocess: the directory deleted while it runs,
taken by a second daemon, made impossible to write; every checkpoint damaged; a followed file rewritten at
once; a model factory's directory holding a module named like a package the service needs."""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from service_support import Daemon, address, digits, streammas, write_config, write_counting_model
from test_connectors_follow import rewrite_in_place

from connectors.zmq import ZmqProducer
from streammas.service.checkpoint import CheckpointStore
from streammas.service.cli import add_arguments, config_from_args

CONFIG = """
[source]
uri = "csv:{data}"
batch_size = 50
max_latency_ms = 5
options = {{ follow = {follow}, poll_interval = 0.02 }}
[model]
factory = "counting_model:make"
options = {{ n_rows = {n_rows} }}
[learner]
# the model counts the rows of each training forward by their raw id: no held or replayed rows, no scaling
hard_buffer = 0
replay = 0
scale_inputs = "none"
[state]
dir = "{state}"
every_samples = {every}
every_seconds = 0
keep = 2
[log]
status_every_seconds = 0
"""


def rows(ids) -> str:
    return "".join(["id,a,b\n"] + [f"{i},{i % 7 / 7:.4f},{i % 5 / 5:.4f}\n" for i in ids])


def append(path: Path, ids) -> None:
    with open(path, "a") as f:
        f.write(rows(ids).split("\n", 1)[1])


def setup(tmp_path: Path, ids, *, n_rows: int, every: int = 100, follow: bool = True) -> Path:
    write_counting_model(tmp_path)
    (tmp_path / "rows.csv").write_text(rows(ids))
    return write_config(tmp_path / "streammas.toml", CONFIG.format(
        data=tmp_path / "rows.csv", state=tmp_path / "state", n_rows=n_rows, every=every,
        follow=str(follow).lower()))


def learned(tmp_path: Path) -> tuple[int, torch.Tensor]:
    """The newest checkpoint's samples seen, and how often the model learned each row id."""
    ckpt = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert ckpt is not None, "no checkpoint"
    return ckpt.meta["samples_seen"], ckpt.learner["model"]["seen"]


def at(n: int):
    return lambda record: record["samples_seen"] >= n


# -- the state directory deleted, taken, unwritable --------------------------------------------------------------
@pytest.mark.slow
def test_a_deleted_state_dir_is_recreated_and_locked_and_sigterm_saves_the_state(tmp_path):
    config = setup(tmp_path, range(300), n_rows=600)
    daemon = Daemon(config, tmp_path)
    try:
        daemon.wait_for("checkpoint", at(300))
        shutil.rmtree(tmp_path / "state")
        recreated = daemon.wait_for("state_dir_recreated")
        assert recreated["level"] == "warning"
        # The directory lost its checkpoints: one is written at once, without waiting for every_samples.
        daemon.wait_for("checkpoint", lambda r: r["reason"] == "state_dir")
        # The lock was taken again: a second daemon on the recreated directory is refused.
        second = streammas("run", "--config", str(config), cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        assert f"is in use by pid {daemon.proc.pid}" in second.stderr

        append(tmp_path / "rows.csv", range(300, 400))
        daemon.wait_for("checkpoint", at(400))
        # Deleted again while it is stopped, then SIGTERM: the shutdown checkpoint recreates the directory.
        daemon.send(signal.SIGSTOP)
        shutil.rmtree(tmp_path / "state")
        daemon.send(signal.SIGTERM)
        daemon.send(signal.SIGCONT)
        assert daemon.wait() == 0, daemon.log()
    finally:
        daemon.kill()
    assert daemon.events("checkpoint_failed") == []
    samples, seen = learned(tmp_path)
    assert samples == 400 and seen[:400].eq(1).all() and seen[400:].eq(0).all()

    # A restart resumes from the recreated directory's checkpoint, exactly where it stopped.
    append(tmp_path / "rows.csv", range(400, 500))
    again = Daemon(config, tmp_path)
    try:
        assert again.wait_for("resumed")["samples_seen"] == 400
        again.wait_for("checkpoint", at(500))
        assert again.stop() == 0, again.log()
    finally:
        again.kill()
    samples, seen = learned(tmp_path)
    assert samples == 500 and seen[:500].eq(1).all()


@pytest.mark.slow
def test_a_daemon_whose_state_dir_was_taken_stops_without_writing_beside_the_new_owner(tmp_path):
    config = setup(tmp_path, range(300), n_rows=300)
    first = Daemon(config, tmp_path)
    second = None
    try:
        first.wait_for("checkpoint", at(300))
        written = len(first.events("checkpoint"))
        # While the first one cannot notice, its directory is deleted and a second daemon makes it its own.
        first.send(signal.SIGSTOP)
        shutil.rmtree(tmp_path / "state")
        second = Daemon(config, tmp_path)
        second.wait_for("checkpoint", at(100))
        first.send(signal.SIGCONT)
        assert first.wait() == 2, first.log()
        taken = first.wait_for("state_dir_taken")
        assert taken["level"] == "error" and f"in use by pid {second.proc.pid}" in taken["msg"]
        assert len(first.events("checkpoint")) == written, "the first daemon wrote beside the second"
        assert first.events("stopped")[-1]["exit_code"] == 2

        second.wait_for("checkpoint", at(300))
        assert second.stop() == 0, second.log()
    finally:
        first.kill()
        if second is not None:
            second.kill()
    samples, seen = learned(tmp_path)
    assert samples == 300 and seen.eq(1).all()


@pytest.mark.slow
def test_failing_checkpoints_back_off_and_the_shutdown_checkpoint_is_still_tried(tmp_path):
    config = setup(tmp_path, range(100), n_rows=2000, every=10)
    daemon = Daemon(config, tmp_path)
    try:
        daemon.wait_for("checkpoint", at(100))
        daemon.send(signal.SIGSTOP)
        shutil.rmtree(tmp_path / "state")
        (tmp_path / "state").write_text("a file where the state directory was: it cannot be created\n")
        daemon.send(signal.SIGCONT)
        # Three seconds of batches, each one making a checkpoint due (every 10 samples).
        start = time.monotonic()
        n = 100
        while time.monotonic() - start < 3.0:
            append(tmp_path / "rows.csv", range(n, n + 20))
            n += 20
            time.sleep(0.05)
        daemon.wait_for("checkpoint_failed")
        failed = daemon.events("checkpoint_failed")
        (tmp_path / "state").unlink()
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.kill()
    # Pauses of 1, 2, 4 ... seconds between tries: a few lines in three seconds, not one per batch.
    assert 1 <= len(failed) <= 4, [(r["reason"], r["error"]) for r in failed]
    assert [r["retry_in"] for r in failed] == [2.0 ** i for i in range(len(failed))]
    assert daemon.events("state_dir_recreated")
    # Everything learned is in the shutdown checkpoint, in the recreated directory; the rest is still in the file.
    samples, seen = learned(tmp_path)
    assert samples == daemon.events("stopped")[-1]["samples_seen"] > 100
    assert seen[:samples].eq(1).all() and seen[samples:].eq(0).all()


# -- every checkpoint damaged ------------------------------------------------------------------------------------
def _damage(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _run(config: Path, cwd: Path, *flags: str):
    return streammas("run", "--config", str(config), "--log-format", "json", *flags, cwd=cwd)


@pytest.mark.slow
def test_every_checkpoint_damaged_refuses_to_start_unless_told_to_start_fresh(tmp_path):
    config = setup(tmp_path, range(300), n_rows=300, follow=False)
    assert _run(config, tmp_path).returncode == 0
    store = CheckpointStore(tmp_path / "state", create=False)
    damaged = store.paths()
    assert len(damaged) == 2
    for path in damaged:
        _damage(path)

    refused = _run(config, tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert "every checkpoint" in refused.stderr and "--start-fresh" in refused.stderr
    assert all(path.name in refused.stderr for path in damaged)
    assert store.paths() == damaged, "a refused start must leave the directory as it was"

    fresh = _run(config, tmp_path, "--start-fresh")
    assert fresh.returncode == 0, fresh.stderr
    assert '"event": "starting_fresh"' in fresh.stderr
    assert all(path.with_name(path.name + ".corrupt").exists() and not path.exists() for path in damaged)
    samples, seen = learned(tmp_path)
    assert samples == 300 and seen.eq(1).all()  # learned from the start, once

    # Some valid: the newest valid one is resumed, the damaged newer one set aside (no start_fresh needed).
    newest = store.paths()[-1]
    _damage(newest)
    resumed = _run(config, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert '"event": "corrupt_checkpoint"' in resumed.stderr and '"event": "resumed"' in resumed.stderr
    assert newest.with_name(newest.name + ".corrupt").exists()


def test_the_start_fresh_flag_sets_the_state_key_and_leaves_it_alone_when_absent(tmp_path):
    config = write_config(tmp_path / "streammas.toml", '[source]\nuri = "csv:a.csv"\n[state]\nstart_fresh = true\n')
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert config_from_args(parser.parse_args(["--source", "csv:a.csv"])).state.start_fresh is False
    assert config_from_args(parser.parse_args(["--source", "csv:a.csv", "--start-fresh"])).state.start_fresh is True
    assert config_from_args(parser.parse_args(["--config", str(config)])).state.start_fresh is True


# -- a followed file rewritten at once ---------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("how", ["renamed_over", "in_place", "while_stopped"])
def test_a_followed_file_rewritten_longer_at_once_is_learned_whole(tmp_path, how):
    config = setup(tmp_path, range(500), n_rows=3500)
    data = tmp_path / "rows.csv"
    new = rows(range(500, 3500))  # 3,000 other rows: six times as long
    daemon = Daemon(config, tmp_path)
    try:
        daemon.wait_for("checkpoint", at(500))
        if how == "renamed_over":
            (tmp_path / "rows.csv.tmp").write_text(new)
            os.replace(tmp_path / "rows.csv.tmp", data)
        elif how == "in_place":
            rewrite_in_place(data, new)
        else:
            assert daemon.stop() == 0, daemon.log()
            rewrite_in_place(data, new)
            daemon = Daemon(config, tmp_path)
            assert daemon.wait_for("resumed")["samples_seen"] == 500
        daemon.wait_for("checkpoint", at(3500))
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.kill()
    samples, seen = learned(tmp_path)
    never = torch.nonzero(seen == 0).flatten().tolist()
    twice = torch.nonzero(seen > 1).flatten().tolist()
    assert samples == 3500 and never == [] and twice == [], f"never: {never[:10]}, twice: {twice[:10]}"


# -- a model factory beside a module named like a package ---------------------------------------------------------
FACTORY = """
from torch import nn

from shadow_layers import width  # a neighbour, imported with the factory's module


def make(sample_shape):
    from shadow_late import activation  # a neighbour imported when the factory is called

    return nn.Sequential(nn.Linear(sample_shape[0], width()), activation(), nn.Linear(width(), sample_shape[0]))
"""


@pytest.mark.slow
def test_a_zmq_module_beside_the_factory_does_not_shadow_pyzmq(tmp_path):
    conf, cwd = tmp_path / "conf", tmp_path / "elsewhere"
    conf.mkdir()
    cwd.mkdir()
    (conf / "shadow_models.py").write_text(FACTORY)
    (conf / "shadow_layers.py").write_text("def width():\n    return 8\n")
    (conf / "shadow_late.py").write_text("from torch.nn import Tanh as activation  # noqa: F401\n")
    (conf / "zmq.py").write_text('raise ImportError("the zmq.py beside the configuration was imported")\n')
    config = write_config(conf / "streammas.toml", f"""
[source]
uri = "zmq+pull://127.0.0.1:*"
[model]
factory = "shadow_models:make"
[state]
dir = "{tmp_path / 'state'}"
every_samples = 64
every_seconds = 0
[log]
status_every_seconds = 0
""")
    daemon = Daemon(config, cwd)
    try:
        with ZmqProducer(address(daemon)) as producer:
            producer.send(digits(64))
        daemon.wait_for("checkpoint", at(64))
        assert daemon.stop() == 0, daemon.log()
    finally:
        daemon.kill()
    ckpt = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert ckpt.meta["model"]["factory"] == "shadow_models:make" and ckpt.meta["samples_seen"] == 64


class _RunsCode:
    """An object whose unpickling would run a command: what a hostile checkpoint holds."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.slow
def test_a_damaged_checkpoint_is_described_in_our_words_never_with_unsafe_advice(tmp_path):
    """torch's own message, cut at 200 characters, once advised re-running torch.load with weights_only=False
    (cut just before its warning that this runs arbitrary code), and called a zero-filled file "legacy .tar"."""
    config = setup(tmp_path, range(300), n_rows=300, follow=False)
    assert _run(config, tmp_path).returncode == 0
    store = CheckpointStore(tmp_path / "state", create=False)
    zeros, hostile = store.paths()[-2:]
    zeros.write_bytes(bytes(4096))
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    torch.save({"format": "streammas-checkpoint", "payload": _RunsCode(marker)}, buffer)
    hostile.write_bytes(buffer.getvalue())

    refused = _run(config, tmp_path)
    assert refused.returncode == 2, refused.stderr
    assert not marker.exists()
    assert "its first bytes are all zeros" in refused.stderr
    assert "holds objects other than plain data and tensors" in refused.stderr
    for unsafe in ("weights_only` set to `False`", "weights_only=False)", "legacy", "Re-running"):
        assert unsafe not in refused.stderr, refused.stderr


@pytest.mark.slow
def test_after_start_fresh_the_sinks_sample_numbers_go_on_instead_of_repeating(tmp_path):
    """``sample`` is the dedup key of a sink's records; a new state directory (``--start-fresh``) appending to
    the same sink file once numbered its samples from 0 again while ``seq`` went on."""
    config = setup(tmp_path, range(300), n_rows=300, follow=False)
    with open(config, "a") as f:
        f.write(f'[sink]\nuri = "jsonl:{tmp_path / "scores.jsonl"}"\n')
    assert _run(config, tmp_path).returncode == 0
    for path in CheckpointStore(tmp_path / "state", create=False).paths():
        path.write_bytes(bytes(64))  # damaged: a restart must be told to start fresh
    fresh = _run(config, tmp_path, "--start-fresh")
    assert fresh.returncode == 0, fresh.stderr
    records = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(records) == 600
    assert [r["seq"] for r in records] == list(range(600))
    assert [r["sample"] for r in records] == list(range(600))
    saved = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert saved.meta["service"]["first_sample"] == 300
