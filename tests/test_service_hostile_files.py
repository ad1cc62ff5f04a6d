"""The daemon, a real subprocess, against hostile array files: samples with no value and a small ``.npz`` that
decompresses hugely are turned away and counted, and the daemon learns the rest and exits normally."""

from __future__ import annotations

import time

import numpy as np
import pytest
from service_support import QUIET_STATE, Daemon, peak_rss_mib, write_config

from streammas.service.checkpoint import CheckpointStore

pytestmark = pytest.mark.slow  # daemons as real subprocesses


def _run(tmp_path, uri: str) -> tuple[Daemon, int, float]:
    config = write_config(tmp_path / "streammas.toml", f'[source]\nuri = "{uri}"\nbatch_size = 16\n' + QUIET_STATE)
    daemon = Daemon(config, tmp_path)
    peak = 0.0
    try:
        while daemon.proc.poll() is None:
            peak = max(peak, peak_rss_mib(daemon.proc.pid))
            time.sleep(0.05)
        code = daemon.wait()
    finally:
        daemon.kill()
    return daemon, code, peak


def test_npy_files_of_samples_without_a_value_are_counted_not_learned(tmp_path):
    """Files of shape [N, 0] (or a bare [N]) once reached the learner and ended the daemon after 100 failed
    batches; ZeroMQ rejects them in the header, and so do the file sources now."""
    (tmp_path / "parts").mkdir()
    np.save(tmp_path / "parts" / "a.npy", np.random.default_rng(0).random((200, 8), dtype=np.float32))
    np.save(tmp_path / "parts" / "b.npy", np.zeros((3000, 0), np.float32))
    np.save(tmp_path / "parts" / "c.npy", np.zeros(500, np.float32))
    np.save(tmp_path / "parts" / "d.npy", np.random.default_rng(1).random((100, 8), dtype=np.float32))
    daemon, code, _ = _run(tmp_path, "npy:parts/*.npy")
    assert code == 0, daemon.log()
    stopped = daemon.events("stopped")[-1]
    assert stopped["samples_seen"] == 300 and stopped["rejected"] == 3500, stopped
    saved = CheckpointStore(tmp_path / "state", create=False).load_latest()
    assert saved.meta["service"]["rejected"] == {"shape": 3500}


def test_a_small_npz_that_decompresses_hugely_is_refused_before_it_is_decompressed(tmp_path):
    (tmp_path / "parts").mkdir()
    np.savez(tmp_path / "parts" / "a.npz", x=np.random.default_rng(0).random((200, 8), dtype=np.float32))
    bomb = tmp_path / "parts" / "b.npz"
    np.savez_compressed(bomb, x=np.zeros((80_000, 8 * 784), np.float32))  # 2 GB of zeros in about 2 MB
    assert bomb.stat().st_size < 4 << 20
    daemon, code, peak = _run(tmp_path, "npz:parts/*.npz")
    assert code == 0, daemon.log()
    assert peak < 1024, peak  # the 2 GB were never allocated
    stopped = daemon.events("stopped")[-1]
    assert stopped["samples_seen"] == 200 and stopped["rejected"] == 1, stopped
    assert "max_array_bytes" in daemon.log()
