"""``streammas bench daemon``: ``streammas run`` on a CSV file against the embedded learner on the same rows.

The daemon reads a CSV file (64 features by default, rows near an 8-dimensional subspace), learns it with the
default learner and model and writes a score per row to a JSON Lines sink; its rate is the file's rows over
the time from the model's creation to the end of the file, both as the service logs them (JSON logs), so that
start-up and the final checkpoint are left out, and reported apart: start-up is the wall time from the
process's spawn to its ``reading`` event (imports, configuration, the source opened), then to its ``model``
event (the model and the learner made at the first batch), shutdown from the end of the file to the process's
exit. It runs twice: with its default reader (``[source] reader = "auto"``: a child process parses the file
on the second core) and with ``reader = "inline"`` (the loop's own thread parses it). Its peers, in the same
process as this benchmark and one torch thread, are
the embedded learner (:class:`~streammas.OnlineMAS` with its defaults, the same model) on the rows as tensors,
and the same fed by the project's :class:`~connectors.csv_source.CsvSource`. Rounds are interleaved; medians
are reported, and the target (the daemon at least 0.9x the embedded learner on tensors) is judged on each
round's own ratio, as ``bench ingest`` judges its own.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from streammas.tools.bench.scale_daemon import FEATURES, _stream, log_events

TARGET = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, default=100_000, help="rows of the CSV file")
    parser.add_argument("--batch-size", type=int, default=32, help="samples per batch, everywhere")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are reported")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _write_csv(path: Path, rows: int) -> None:
    x = _stream(rows)
    with open(path, "w") as f:
        f.write(",".join(f"f{j}" for j in range(FEATURES)) + "\n")
        np.savetxt(f, x, delimiter=",", fmt="%.6g")


def _config(folder: Path, name: str, batch: int, reader: str) -> Path:
    path = folder / f"{name}.toml"
    path.write_text(f"""[source]
uri = "csv:data.csv"
batch_size = {batch}
reader = "{reader}"
[sink]
uri = "jsonl:scores-{name}.jsonl"
[state]
dir = "state-{name}"
[log]
format = "json"
progress = "never"
""")
    return path


def _daemon(folder: Path, rows: int, batch: int, round_: int, reader: str) -> dict[str, float]:
    name = f"daemon-{reader}-{round_}"
    config = _config(folder, name, batch, reader)
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    spawned = time.time()
    done = subprocess.run([sys.executable, "-m", "streammas", "run", "--config", str(config)], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=3600)
    ended = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"streammas run exited {done.returncode}:\n{done.stderr[-2000:]}")
    events = log_events(done.stdout + "\n" + done.stderr)
    missing = {"reading", "model", "source_finished"} - set(events)
    if missing:
        raise RuntimeError(f"the service's log lacks {sorted(missing)}:\n{done.stderr[-2000:]}")
    with open(folder / f"scores-{name}.jsonl", "rb") as f:
        scored = sum(1 for _ in f)
    if scored != rows:
        raise RuntimeError(f"the sink holds {scored} records for {rows} rows")
    learning = events["source_finished"] - events["model"]
    return {"samples_per_s": rows / learning, "startup_s": events["reading"] - spawned,
            "model_s": events["model"] - spawned, "shutdown_s": ended - events["source_finished"]}


def _embedded(path: Path, batch: int, from_csv: bool) -> float:
    """Samples per second of the default learner, fed tensors or the CSV source (wall time)."""
    import torch

    from connectors.csv_source import CsvSource
    from streammas.learner import OnlineMAS
    from streammas.models import MLPAutoencoder

    torch.manual_seed(0)
    learner = OnlineMAS(MLPAutoencoder(FEATURES))
    if from_csv:
        start = time.perf_counter()
        rows = 0
        with CsvSource(str(path), batch_size=batch) as source:
            for b in source:
                learner.learn_many(torch.from_numpy(b.x))
                rows += len(b)
        return rows / (time.perf_counter() - start)
    x = torch.from_numpy(np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32))
    start = time.perf_counter()
    for s in range(0, x.shape[0], batch):
        learner.learn_many(x[s:s + batch])
    return x.shape[0] / (time.perf_counter() - start)


def run(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(1)
    names = ("tensors", "csv source", "daemon", "daemon inline")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        path = folder / "data.csv"
        _write_csv(path, args.rows)
        for r in range(args.repeats):
            order = list(runs)
            for name in order[r % len(order):] + order[:r % len(order)]:
                if name.startswith("daemon"):
                    reader = "auto" if name == "daemon" else "inline"
                    runs[name].append(_daemon(folder, args.rows, args.batch_size, r, reader))
                else:
                    runs[name].append({"samples_per_s": _embedded(path, args.batch_size, name == "csv source")})
    ratios = [d["samples_per_s"] / t["samples_per_s"] for d, t in zip(runs["daemon"], runs["tensors"])]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
    verdict = ("met" if quartiles[0] >= TARGET else "MISSED" if quartiles[-1] < TARGET else "within noise")
    result = {"benchmark": "daemon", "rows": args.rows, "features": FEATURES, "batch_size": args.batch_size,
              "runs": runs, "median": {name: {key: statistics.median(r[key] for r in rs) for key in rs[0]}
                                       for name, rs in runs.items()},
              "daemon_vs_tensors": ratios, "target": TARGET, "verdict": verdict}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    med = result["median"]
    tensors = med["tensors"]["samples_per_s"]
    print(f"streammas bench daemon: streammas run on a {args.rows:,}-row CSV of {FEATURES} features (batch "
          f"{args.batch_size}, the default learner and model, a JSON Lines sink) against the embedded learner; "
          f"medians of {args.repeats} interleaved rounds, wall time, one torch thread\n")
    print(f"{'run':<14} {'samples/s':>10} {'vs tensors':>10} {'start-up s':>10} {'model s':>8} {'shutdown s':>10}")
    for name, m in med.items():
        times = [f"{m[key]:.2f}" if key in m else "" for key in ("startup_s", "model_s", "shutdown_s")]
        print(f"{name:<14} {m['samples_per_s']:>10,.0f} {m['samples_per_s'] / tensors:>9.2f}x {times[0]:>10} "
              f"{times[1]:>8} {times[2]:>10}")
    print("\nstart-up: from the spawn to the source opened; model: to the model and learner made at the first batch "
          "(torch imports torch._dynamo when the first optimizer is made); shutdown: from the end of the file to the "
          "exit (the final checkpoint)")
    print(f"\nthe daemon against the embedded learner on tensors, by round: "
          f"{', '.join(f'{r:.2f}x' for r in ratios)}; target >= {TARGET}x: {verdict}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
