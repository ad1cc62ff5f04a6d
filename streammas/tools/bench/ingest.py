"""``streammas bench ingest``: how fast samples come in.

* ZeroMQ: 784-float32 samples, 256 per message, over TCP on 127.0.0.1 from a producer process, read
  through :class:`connectors.zmq.ZmqSource` (decoding, validation, micro-batching) against bare pyzmq
  receive loops measured in the same run, interleaved. The figure of merit is the source's median
  throughput over the bare loop's, ``recv_multipart()``: pyzmq's default, which brings every byte
  into Python once, as any consumer of the data must. The zero-copy loop, which never reads the
  payload, is shown as an upper bound; the source's only pass over the data is its NaN/infinity scan,
  which ``check_finite=False`` skips (shown too).
* Files: rows per second (of CPU time) of the CSV and ``.npy`` sources reading a freshly written file
  (in the page cache), for the same 784 features and for 16.
* Brokers: the Redis Streams and MQTT sources against bare client loops over the same queued messages, on
  the ``redis-server`` and ``mosquitto`` the machine has (:mod:`streammas.tools.bench.ingest_brokers`).

Medians over ``--repeats``; ``--json`` prints the machine-readable result instead of the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from streammas.tools.bench.ingest_brokers import bench_brokers
from streammas.tools.bench.ingest_brokers import table as broker_table

#: Runs in the producer process: connect a PUSH socket and send the same wire-v1 message N times.
_PRODUCER = r"""
import json, sys
import numpy as np, zmq
address, messages, per, features = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ctx = zmq.Context()
sock = ctx.socket(zmq.PUSH)
sock.sndhwm = 100
sock.connect(address)
x = np.random.default_rng(0).standard_normal((per, features), dtype=np.float32)
header = zmq.Frame(json.dumps({"v": 1, "dtype": "float32", "shape": [per, features]}).encode())
payload = zmq.Frame(x.tobytes())
for _ in range(messages):
    sock.send(header, zmq.SNDMORE, copy=False)
    sock.send(payload, copy=False)
sock.close(linger=-1)
ctx.term()
"""

TARGET = 0.90


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=11,
                        help="runs per variant; medians are reported, and the target is judged on the ratios of "
                             "the runs paired within a round")
    parser.add_argument("--messages", type=int, default=1500, help="messages per ZeroMQ run (after warm-up)")
    parser.add_argument("--warmup", type=int, default=100, help="messages received before the clock starts")
    parser.add_argument("--per-message", type=int, default=256, help="samples per message")
    parser.add_argument("--features", type=int, default=784, help="float32 values per sample")
    parser.add_argument("--batch-size", type=int, default=None, help="ZmqSource batch size (default: --per-message)")
    parser.add_argument("--csv-rows", type=int, default=4000, help="rows of the CSV file (784 features)")
    parser.add_argument("--npy-rows", type=int, default=50_000, help="rows of the .npy file (784 features)")
    parser.add_argument("--no-files", action="store_true", help="skip the file sources")
    parser.add_argument("--broker-messages", type=int, default=400, help="messages queued per broker run")
    parser.add_argument("--broker-per-message", type=int, default=32, help="samples per broker message")
    parser.add_argument("--broker-batch", type=int, default=64, help="entries per XREADGROUP (both Redis readers)")
    parser.add_argument("--no-brokers", action="store_true", help="skip the brokers (redis-server, mosquitto)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 if ZmqSource < {TARGET * 100:.0f}%% of the bare loop")


# -- ZeroMQ --------------------------------------------------------------------------------------------
def _producer(address: str, messages: int, per: int, features: int) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, address, str(messages), str(per), str(features)],
        stdin=subprocess.DEVNULL,
    )


def _timed(receive: Callable[[], int], warmup_samples: int, samples: int, per_message: int) -> dict[str, float]:
    """Over the samples received after the first ``warmup_samples``: samples per second (wall clock) and
    this process's CPU time (all its threads, libzmq's I/O thread included) per message."""
    got = 0
    while got < warmup_samples:
        got += receive()
    start, t0, c0 = got, time.perf_counter(), time.process_time()
    while got < warmup_samples + samples:
        got += receive()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = got - start
    if n == 0:
        raise RuntimeError("the warm-up took every sample: send more messages or use a smaller batch")
    return {"samples_per_s": n / wall, "cpu_us_per_message": cpu / (n / per_message) * 1e6}


def _bare(args: argparse.Namespace, copy: bool) -> dict[str, float]:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PULL)
    sock.rcvhwm = 100
    sock.bind("tcp://127.0.0.1:*")
    address = sock.last_endpoint.decode()
    per = args.per_message
    proc = _producer(address, args.warmup + args.messages, per, args.features)
    try:

        def receive() -> int:
            sock.recv_multipart(copy=copy)
            return per

        return _timed(receive, args.warmup * per, args.messages * per, per)
    finally:
        proc.wait()
        sock.close(linger=0)
        ctx.term()


def _source(args: argparse.Namespace, check_finite: bool = True) -> dict[str, float]:
    from connectors.zmq import ZmqSource

    with ZmqSource(
        "tcp://127.0.0.1:*", batch_size=args.batch_size, max_latency_ms=50, check_finite=check_finite
    ) as src:
        proc = _producer(src.address, args.warmup + args.messages, args.per_message, args.features)
        try:

            def receive() -> int:
                batch = src.read(timeout=30)
                if batch is None:
                    raise RuntimeError("the producer stopped sending")
                return len(batch)

            result = _timed(receive, args.warmup * args.per_message, args.messages * args.per_message, args.per_message)
        finally:
            proc.wait()
        if any(k.startswith("rejected") and v for k, v in src.counters.items()):
            raise RuntimeError(f"unexpected rejects: {dict(src.counters)}")
    return result


def bench_zmq(args: argparse.Namespace) -> dict:
    variants: dict[str, Callable[[], dict[str, float]]] = {
        "bare_copy": lambda: _bare(args, copy=True),
        "bare_zerocopy": lambda: _bare(args, copy=False),
        "zmq_source": lambda: _source(args),
        "zmq_source_unchecked": lambda: _source(args, check_finite=False),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    for _ in range(args.repeats):  # interleaved, so that drift in the machine's load hits all alike
        for name, fn in variants.items():
            runs[name].append(fn())

    def median(key: str) -> dict[str, float]:
        return {name: statistics.median(r[key] for r in rs) for name, rs in runs.items()}

    rates = median("samples_per_s")
    # each round's own ratio (its runs shared the machine's load): the target is judged on their spread
    paired = sorted(a["samples_per_s"] / b["samples_per_s"] for a, b in zip(runs["zmq_source"], runs["bare_copy"]))
    return {
        "samples_per_s": rates,
        "paired_ratios": paired,
        "verdict": judge(paired, TARGET),
        "cpu_us_per_message": median("cpu_us_per_message"),
        "runs": runs,
        "ratio": rates["zmq_source"] / rates["bare_copy"],
        "ratio_vs_zerocopy": rates["zmq_source"] / rates["bare_zerocopy"],
        "unchecked_ratio_vs_zerocopy": rates["zmq_source_unchecked"] / rates["bare_zerocopy"],
    }


def judge(ratios: list[float], target: float) -> str:
    """``met`` or ``missed`` when the middle half of the paired ratios (the quartiles) lies on one side of the
    target; ``within noise`` when it straddles it (more repeats, or a quieter machine, can tell).

    >>> judge([0.91, 0.93, 0.95, 0.97], 0.9), judge([0.85, 0.88, 0.92, 0.95], 0.9)
    ('met', 'within noise')
    """
    q1, _, q3 = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else (ratios[0],) * 3
    return "met" if q1 >= target else "missed" if q3 < target else "within noise"


# -- files ---------------------------------------------------------------------------------------------
def _write_csv(path: str, rows: int, features: int) -> None:
    rng = np.random.default_rng(0)
    block = rng.standard_normal((min(rows, 1000), features)).astype(np.float32)
    text = "\n".join(",".join(f"{v:.6g}" for v in row) for row in block) + "\n"
    with open(path, "w") as f:
        f.write(",".join(f"f{i}" for i in range(features)) + "\n")
        left = rows
        while left > 0:
            n = min(left, len(block))
            f.write(text if n == len(block) else "\n".join(text.split("\n")[:n]) + "\n")
            left -= n


def _rows_per_s(uri: str, batch_size: int = 256) -> float:
    """Rows per second of this process's CPU time (a file in the page cache makes reading CPU-bound;
    CPU time is what a busy neighbour cannot inflate)."""
    from connectors.registry import open_source

    with open_source(uri, batch_size=batch_size) as src:
        c0 = time.process_time()
        n = sum(len(b) for b in src)
        elapsed = time.process_time() - c0
        if src.counters.get("samples") != n or any(k.startswith("rejected:") for k in src.counters):
            raise RuntimeError(f"unexpected counters {dict(src.counters)}")
    return n / max(elapsed, 1e-9)


def bench_files(args: argparse.Namespace) -> dict:
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="streammas-bench-") as d:
        for features, csv_rows, npy_rows in (
            (args.features, args.csv_rows, args.npy_rows),
            (16, args.csv_rows * 10, args.npy_rows * 10),
        ):
            csv_path = os.path.join(d, f"f{features}.csv")
            npy_path = os.path.join(d, f"f{features}.npy")
            _write_csv(csv_path, csv_rows, features)
            np.save(npy_path, np.random.default_rng(0).standard_normal((npy_rows, features), dtype=np.float32))
            for kind, uri, rows in (("csv", f"csv:{csv_path}", csv_rows), ("npy", f"npy:{npy_path}", npy_rows)):
                runs = [_rows_per_s(uri) for _ in range(args.repeats)]
                out[f"{kind}_{features}"] = {
                    "rows_per_s": statistics.median(runs),
                    "runs": runs,
                    "rows": rows,
                    "features": features,
                }
            os.unlink(npy_path)
    return out


# -- report --------------------------------------------------------------------------------------------
def _table(result: dict) -> str:
    cfg = result["config"]
    z = result["zmq"]
    rates, cpu = z["samples_per_s"], z["cpu_us_per_message"]
    lines = [
        f"streammas bench ingest: medians of {cfg['repeats']} interleaved runs on {cfg['machine']}",
        "",
        f"ZeroMQ PUSH -> PULL, tcp 127.0.0.1, {cfg['features']} float32 per sample, "
        f"{cfg['per_message']} samples per message, producer in another process",
        f"  {'receiver':<48}{'samples/s':>11}{'vs bare':>9}{'vs 0-copy':>11}{'CPU us/msg':>12}",
    ]
    names = {
        "bare_copy": "bare loop: recv_multipart()",
        "bare_zerocopy": "bare loop: recv_multipart(copy=False)",
        "zmq_source": f"ZmqSource (decode, validate, batch {cfg['batch_size']})",
        "zmq_source_unchecked": "ZmqSource, check_finite=False",
    }
    for key, label in names.items():
        rate = rates[key]
        lines.append(
            f"  {label:<48}{rate:>11,.0f}{rate / rates['bare_copy']:>9.2f}"
            f"{rate / rates['bare_zerocopy']:>11.2f}{cpu[key]:>12,.0f}"
        )
    paired = z["paired_ratios"]
    lines.append(f"  ZmqSource / bare loop = {z['ratio']:.2f} (per round {paired[0]:.2f}-{paired[-1]:.2f}, "
                 f"{len(paired)} rounds): target >= {TARGET:.2f} {z['verdict'].upper()} (judged on the rounds' "
                 "quartiles)")
    lines.append("  (CPU us/msg: the receiving process, libzmq's I/O thread included)")
    if "files" in result:
        lines += [
            "",
            "File sources (file in the page cache, batch 256, per second of CPU time)",
            f"  {'source':<48}{'rows/s':>11}",
        ]
        for key, r in result["files"].items():
            kind = "CSV" if key.startswith("csv") else ".npy (memory-mapped)"
            label = f"{kind}, {r['features']} features, {r['rows']:,} rows"
            lines.append(f"  {label:<48}{r['rows_per_s']:>11,.0f}")
    if result.get("brokers"):
        lines += broker_table(result["brokers"], cfg)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1 or args.messages < 1:
        raise SystemExit("--repeats and --messages must be >= 1")
    if args.batch_size is None:
        args.batch_size = args.per_message
    # Two cores are shared by the producer and the receiver: no spinning OpenMP threads (producers
    # inherit the setting), and torch, when the package imported it, on one thread.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    result: dict = {
        "config": {
            "repeats": args.repeats,
            "messages": args.messages,
            "warmup": args.warmup,
            "per_message": args.per_message,
            "features": args.features,
            "batch_size": args.batch_size,
            "broker_messages": args.broker_messages,
            "broker_per_message": args.broker_per_message,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        },
        "zmq": bench_zmq(args),
    }
    if not args.no_files:
        result["files"] = bench_files(args)
    if not args.no_brokers:
        result["brokers"] = bench_brokers(args)
    print(json.dumps(result, indent=2) if args.json else _table(result))
    if args.check and result["zmq"]["ratio"] < TARGET:
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streammas.tools.bench.ingest", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
