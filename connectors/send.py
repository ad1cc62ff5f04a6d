"""``streammas send``: stream a file into a ZeroMQ source (the producer side), with a progress bar.

    streammas send data.csv --to tcp://127.0.0.1:5555 [--batch-size N] [--rate R]

The file is anything a file source reads (CSV, JSON Lines, ``.npy``, ``.npz``, a directory or a glob,
or a URI such as ``csv:data.txt``); bad rows are skipped and counted as the sources do. Messages are
wire format v1 (binary), sent over PUSH (connecting to the service's PULL source) or PUB (``--pattern
pub``, binding, for SUB sources). ``--rate`` paces the samples per second; ``--follow`` keeps sending
what is appended to a CSV or JSON Lines file.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import Any

DEFAULT_BATCH = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="file, directory or glob to send (csv, jsonl, npy, npz), or a source URI")
    parser.add_argument("--to", default="tcp://127.0.0.1:5555", help="address to send to (default: %(default)s)")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help=f"samples per message (default {DEFAULT_BATCH}; with --rate, about 20 messages a second)",
    )
    parser.add_argument("--rate", type=float, default=None, help="samples per second (default: as fast as taken)")
    parser.add_argument("--pattern", choices=("push", "pub"), default="push", help="socket type (default: push)")
    parser.add_argument("--bind", action="store_true", help="bind --to instead of connecting (default for pub)")
    parser.add_argument("--topic", default=None, help="topic frame for --pattern pub")
    parser.add_argument("--follow", action="store_true", help="keep sending lines appended to a CSV/JSONL file")
    parser.add_argument("--label", default=None, help="CSV label column (default: a column named 'label', if any)")
    parser.add_argument("--no-labels", action="store_true", help="send the samples without their labels")
    parser.add_argument(
        "--timeout", type=float, default=None, help="fail when the receiver takes nothing for this many seconds"
    )
    parser.add_argument(
        "--linger", type=float, default=30.0, help="seconds to wait at the end for queued messages (default: 30)"
    )
    parser.add_argument("--curve-server-key", default=None, help="the server's public key file (enables Curve)")
    parser.add_argument("--curve-secret-key", default=None, help="this client's secret key file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int | None, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    # disable=None: no bar when stderr is not a terminal (logs, pipes, tests).
    return tqdm(total=total, unit="sample", unit_scale=True, dynamic_ncols=True, disable=None, file=sys.stderr)


class Pacer:
    """Sleeps so that ``n`` samples sent so far take at least ``n / rate`` seconds.

    Each :meth:`wait` comes before a batch is sent and counts its samples.

    Parameters
    ----------
    rate : float or None
        Samples per second, above 0 (``None``: never waits).

    Examples
    --------
    >>> p = Pacer(None)
    >>> p.wait(10)  # no rate: never waits
    """

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("--rate must be > 0")
        self.rate = rate
        self._start = time.monotonic()
        self._sent = 0

    def wait(self, n: int) -> None:
        if self.rate is None:
            return
        due = self._start + self._sent / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._sent += n


def _batch_size(args: argparse.Namespace) -> int:
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise ValueError("--batch-size must be >= 1")
        return args.batch_size
    if args.rate is not None:
        return max(1, min(DEFAULT_BATCH, int(args.rate / 20)))
    return DEFAULT_BATCH


def run_command(args: argparse.Namespace) -> int:
    from connectors.curve import CurveOptions
    from connectors.registry import open_source, split_uri
    from connectors.zmq import ZmqProducer

    if not logging.getLogger().handlers:  # skipped rows are reported as they happen, tersely
        logging.basicConfig(level=logging.WARNING, format="streammas send: %(message)s")

    def fail(message: str) -> int:
        print(f"streammas send: error: {message}", file=sys.stderr)
        return 2

    options: dict[str, Any] = {}
    try:
        scheme = split_uri(args.file)[0]
        if args.follow:
            options["follow"] = True
        if args.label is not None:
            if scheme != "csv":
                return fail("--label is for CSV files")
            options["label"] = args.label
        source = open_source(args.file, batch_size=_batch_size(args), max_latency_ms=50, **options)
    except (OSError, ValueError) as e:
        return fail(str(e))
    try:
        producer = ZmqProducer(
            args.to,
            pattern=args.pattern,
            bind=True if args.bind else None,
            topic=args.topic,
            send_timeout=args.timeout,
            linger_ms=int(args.linger * 1000),
            curve=CurveOptions(server_key=args.curve_server_key, secret_key=args.curve_secret_key),
        )
    except Exception as e:  # a bad address or key file: say so, no traceback
        source.close()
        return fail(f"cannot open {args.to}: {e}")

    bar = _progress(getattr(source, "size_hint", None), not args.no_progress)
    pacer = Pacer(args.rate)
    sent = 0
    code = 0
    start = time.monotonic()
    try:
        for batch in source:
            pacer.wait(len(batch))
            producer.send(batch.x, None if args.no_labels else batch.y)
            sent += len(batch)
            bar.update(len(batch))
    except KeyboardInterrupt:
        code = 130
    except TimeoutError as e:
        print(f"streammas send: error: {e} (after {sent} samples)", file=sys.stderr)
        code = 1
    finally:
        bar.close()
        counters = dict(source.counters)
        source.close()
        producer.close()
    elapsed = max(time.monotonic() - start, 1e-9)
    summary = (
        f"sent {sent:,} samples in {producer.sent:,} messages to {producer.address} "
        f"in {elapsed:.1f} s ({sent / elapsed:,.0f} samples/s)"
    )
    rejected = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("rejected:") and v}
    if rejected:
        summary += "; skipped bad input: " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items()))
    print(summary, file=sys.stderr)
    return code
