"""``streammas bench scale --daemon``: the whole service on 1 and 2 workers, as a user runs it.

The learner-level measurement (:mod:`streammas.tools.bench.scale`) leaves out what the service adds around each step:
reading the source, the workers' agreement every turn (exact mode) or every ``average_every`` steps (averaging
mode), metrics and checkpoints. Here ``streammas run --config C --workers N`` runs as a subprocess on a
generated ``.npy`` file (samples near an 8-dimensional subspace, 64 features, the default MLP autoencoder), with
JSON logs; the rate is the file's rows over the time from the model's creation to the end of the file, both
as rank 0 logs them (start-up, the launcher and the final checkpoint left out).
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

FEATURES = 64


def _stream(rows: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(8, FEATURES)) * 10 + 5
    return (rng.normal(size=(rows, 8)) @ base + rng.normal(size=(rows, FEATURES))).astype(np.float32)


def _config(folder: Path, name: str, batch: int, mode: str, every: int) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f"""[source]
uri = "npy:x.npy"
batch_size = {batch}
[state]
dir = "state-{name}"
[log]
format = "json"
progress = "never"
[distributed]
mode = "{mode}"
average_every = {every}
""")
    return path


def log_events(output: str) -> dict[str, float]:
    """When rank 0 (or a service alone) first logged each event, in seconds since the epoch, from the service's
    JSON log lines in ``output`` (other lines are skipped)."""
    times: dict[str, float] = {}
    for line in output.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        event = record.get("event") if isinstance(record, dict) and record.get("rank", 0) == 0 else None
        if event is not None and event not in times:
            times[event] = datetime.datetime.fromisoformat(record["ts"].replace("Z", "+00:00")).timestamp()
    return times


def _elapsed(output: str) -> float:
    """Seconds from rank 0's ``model`` event to its ``source_finished`` event in the service's JSON log."""
    times = log_events(output)
    if not {"model", "source_finished"} <= set(times):
        raise RuntimeError("the service's log lacks its model or source_finished event:\n" + output[-2000:])
    return times["source_finished"] - times["model"]


def measure(rows: int, batch: int, modes: list[str], every: int) -> dict[str, dict[str, float]]:
    """Samples per second of the service alone and of 2 workers in each of ``modes``, on ``rows`` rows."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    runs = [("1 worker", 1, "exact")] + [(f"2 workers, {mode}", 2, mode) for mode in modes]
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        np.save(folder / "x.npy", _stream(rows))
        for label, workers, mode in runs:
            config = _config(folder, f"{workers}-{mode}", batch, mode, every)
            done = subprocess.run([sys.executable, "-m", "streammas", "run", "--config", str(config), "--workers",
                                   str(workers)], cwd=folder, env=env, capture_output=True, text=True, timeout=3600)
            if done.returncode != 0:
                raise RuntimeError(f"streammas run ({label}) exited {done.returncode}:\n{done.stderr[-2000:]}")
            seconds = _elapsed(done.stdout + "\n" + done.stderr)
            out[label] = {"workers": workers, "seconds": seconds, "samples_per_s": rows / seconds}
    one = out["1 worker"]["samples_per_s"]
    for result in out.values():
        result["efficiency"] = result["samples_per_s"] / (result["workers"] * one)
    return out


def print_table(results: dict[str, dict[str, float]], rows: int, batch: int, every: int) -> None:
    print(f"\nthe service (streammas run --workers N, a {rows:,}-row .npy file of {FEATURES} features, batch {batch} "
          f"per worker, average_every {every}; from the model's creation to the end of the file):")
    print("| run | seconds | samples/s | efficiency |")
    print("|---|---|---|---|")
    for label, r in results.items():
        print(f"| {label} | {r['seconds']:.1f} | {r['samples_per_s']:,.0f} | {r['efficiency']:.2f} |")
