"""Bad configuration and start-up problems exit with status 2 and a message (no bare traceback); a producer
sending garbage does not stop the daemon, and its rejects show in the metrics by reason."""

from __future__ import annotations

import json
import signal
import socket
import time

import numpy as np
import pytest
from service_support import Daemon, address, digits, metrics_url, scrape, streammas, write_config

from connectors.zmq import ZmqProducer
from streammas.cli import main
from streammas.service.checkpoint import CheckpointStore


def test_bad_configuration_exits_2_naming_the_key(tmp_path):
    config = write_config(tmp_path / "bad.toml", '[source]\nuri = "csv:x.csv"\n[learner]\nlearning_rate = 0.1\n')
    result = streammas("run", "--config", str(config), cwd=tmp_path)
    assert result.returncode == 2
    assert "[learner] unknown key 'learning_rate'" in result.stderr
    assert "accepted keys: objective, optimizer, lr," in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("text", "message"), [
    ('[source]\nuri = "csv:x.csv"\nbatch_size = "32"\n', "[source] batch_size must be an integer, got string '32'"),
    ('[learner]\nlr = 0.1\n', "[source] is required"),
    ('[source]\nbatch_size = 32\n', "[source] uri is required"),
    ('[source]\nuri = "csv:x.csv"\n[sorce]\n', "unknown section [sorce]; accepted sections: source, model, learner"),
    ('[source]\nuri = "csv:x.csv"\n[learner.plateau]\nwindow = 0\n', "[learner.plateau] window must be >= 2"),
    ('[source]\nuri = "csv:x.csv"\n[model]\nkind = "transformer"\n',
     "[model] kind must be one of 'mlp-autoencoder', 'conv-autoencoder'"),
    ('[source]\nuri = "csv:x.csv"\n[learner]\noptimizer = "rmsprop"\n', "[learner] optimizer must be one of"),
    ('[source]\nuri = "csv:x.csv"\n[learner]\nimportance_source = "buffer"\nhard_buffer = 0\n',
     "[learner] importance_source='buffer' needs a hard buffer"),
    ('[source]\nuri = "csv:x.csv"\n[learner]\nhard_buffer_decay = 1.5\n',
     "[learner] hard_buffer_decay must be in (0, 1]"),
    ('[source\nuri = "csv:x.csv"\n', "is not valid TOML"),
])
def test_configuration_errors(tmp_path, capsys, text, message):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    config = write_config(tmp_path / "c.toml", text)
    assert main(["run", "--config", str(config), "--state-dir", str(tmp_path / "state")]) == 2
    assert message in capsys.readouterr().err


def test_flags_override_keys_and_are_checked_like_them(tmp_path, capsys):
    config = write_config(tmp_path / "c.toml", '[source]\nuri = "csv:x.csv"\nbatch_size = 8\n')
    assert main(["run", "-c", str(config), "--batch-size", "16", "--set", "learner.lr=0.5", "--check"]) == 0
    effective = json.loads(capsys.readouterr().out)
    assert effective["source"]["batch_size"] == 16 and effective["learner"]["lr"] == 0.5
    assert main(["run", "-c", str(config), "--set", "learner.lr=fast"]) == 2
    assert "[learner] lr must be a number, got string 'fast'" in capsys.readouterr().err


def _startup_error(tmp_path, capsys, *args: str) -> str:
    rc = main(["run", "--state-dir", str(tmp_path / "state"), *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    return err


def test_port_in_use_unreadable_file_and_missing_factory_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.zeros((4, 3), dtype=np.float32))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        err = _startup_error(tmp_path, capsys, "--source", "npy:x.npy", "--metrics-port", str(port))
        assert f"[metrics] metrics port 127.0.0.1:{port} is already in use" in err
        err = _startup_error(tmp_path, capsys, "--source", f"zmq+pull://127.0.0.1:{port}")
        assert f"[source] cannot open zmq+pull://127.0.0.1:{port}: Address already in use" in err
    err = _startup_error(tmp_path, capsys, "--source", "csv:missing.csv")
    assert "[source] cannot open csv:missing.csv: No such file or directory" in err
    (tmp_path / "garbage.npy").write_bytes(b"not an array at all")
    err = _startup_error(tmp_path, capsys, "--source", "npy:garbage.npy")
    assert "[source] cannot open npy:garbage.npy" in err
    err = _startup_error(tmp_path, capsys, "--source", "npy:x.npy", "--set", 'model.factory="no_such_pkg.models:make"')
    assert "[model] cannot import the model factory 'no_such_pkg.models:make': No module named 'no_such_pkg'" in err
    (tmp_path / "broken_models.py").write_text("import torch\nraise RuntimeError('boom at import')\n")
    err = _startup_error(tmp_path, capsys, "--source", "npy:x.npy", "--set", 'model.factory="broken_models:make"')
    assert "cannot import the model factory 'broken_models:make': RuntimeError: boom at import" in err
    (tmp_path / "ok_models.py").write_text("def other():\n    pass\n")
    err = _startup_error(tmp_path, capsys, "--source", "npy:x.npy", "--set", 'model.factory="ok_models:make"')
    assert "module 'ok_models' has no attribute 'make'" in err


def test_resume_with_another_model_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((40, 3), dtype=np.float32))
    assert main(["run", "--source", "npy:x.npy", "--state-dir", "state"]) == 0
    capsys.readouterr()
    err = _startup_error(tmp_path, capsys, "--source", "npy:x.npy", "--set", "model.options={latent = 2}")
    assert "holds a different model (options:" in err


@pytest.mark.slow
def test_state_dir_in_use_and_garbage_producer(tmp_path):
    config = write_config(tmp_path / "streammas.toml", """
[source]
uri = "zmq+pull://127.0.0.1:*"
batch_size = 16
max_latency_ms = 5
[state]
dir = "state"
[metrics]
port = 0
every_batches = 1
[log]
status_every_seconds = 0
""")
    daemon = Daemon(config, tmp_path)
    try:
        addr = address(daemon)
        url = metrics_url(daemon)

        second = streammas("run", "--config", str(config), cwd=tmp_path)
        assert second.returncode == 2
        assert "[state] state directory state is in use by pid" in second.stderr

        header = json.dumps({"v": 1, "dtype": "float32", "shape": [2, 64]}).encode()
        garbage = [
            [b"\xff\xfe not json"],                                                    # json
            [json.dumps({"v": 9, "dtype": "float32", "shape": [1, 64]}).encode(), b"\0" * 256],  # version
            [header, b"\0" * 10],                                                      # size
            [json.dumps({"v": 1, "dtype": "complex64", "shape": [1, 64]}).encode(), b"\0" * 512],  # dtype
            [header, b"\0" * 512, b"x", b"y"],                                         # frames
            [json.dumps({"x": [[float("nan")] * 64]}).encode()],                       # nonfinite
            [json.dumps({"x": [[1.0] * 5]}).encode()],                                 # shape
        ]
        with ZmqProducer(addr) as producer:  # one connection: the messages arrive in this order
            producer.send(digits(32))  # fixes the stream's sample shape
            for frames in garbage:
                producer.send_frames(frames)
            producer.send(digits(64))

        # Still alive and learning: wait for the metrics to show every valid sample.
        for _ in range(1200):
            assert daemon.proc.poll() is None, daemon.log()
            values = scrape(url)
            if values.get("streammas_samples_total") == 96:
                break
            time.sleep(0.1)
        assert values.get("streammas_samples_total") == 96, values
        rejected = {k: v for k, v in values.items() if k.startswith("streammas_rejected_samples_total")}
        reasons = {k.split('reason="')[1].rstrip('"}') for k in rejected}
        assert {"json", "version", "size", "dtype", "frames", "nonfinite", "shape"} <= reasons, rejected
        assert values["streammas_batches_total"] >= 1
        assert values["streammas_step_seconds_count"] >= 1
        assert values["streammas_prequential_loss"] > 0
        assert "streammas_seconds_since_checkpoint" in values
        assert daemon.stop(signal.SIGTERM) == 0, daemon.log()
    finally:
        daemon.kill()
    saved = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert saved.meta["samples_seen"] == 96
    assert saved.meta["service"]["rejected"]["json"] >= 1
