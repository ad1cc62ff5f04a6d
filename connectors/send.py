"""``streammas send``: stream a file into a ZeroMQ source or a broker (the producer side), with a progress bar.

    streammas send data.csv --to tcp://127.0.0.1:5555 [--batch-size N] [--rate R]
    streammas send data.csv --to :5555,:5556      # the two workers of a data-parallel service
    streammas send data.csv --to redis+stream://127.0.0.1:6379/rows   # or --to mqtt://127.0.0.1:1883/plant/line-1

With a broker (:mod:`connectors.send_broker`) each batch is one stream entry or one MQTT message (QoS 1 by
default), and the exit status is 1 when the broker could not be reached or did not take every message within
``--linger``.

The file is anything a file source reads (CSV, JSON Lines, ``.npy``, ``.npz``, a directory or a glob,
or a URI such as ``csv:data.txt``); bad rows are skipped and counted as the sources do (the first ten
with a warning each, the rest in one line at the end). Messages are wire format v1 (binary), sent over
PUSH (connecting to the service's PULL source) or PUB (``--pattern pub``, binding, for SUB sources).
``--rate`` paces the samples per second; ``--follow`` keeps sending what is appended to a CSV or JSON
Lines file. Several addresses (comma-separated, or ``--to`` repeated) make one socket connected to all of
them, which hands the messages to the receivers in turn: the workers of a data-parallel service, each
bound to the configured port plus its rank. ``--connect-timeout`` then waits for every address, and
names those that no receiver connected to.

Exit status: 0 when every valid sample went to a receiver that had connected; 1 when nothing could be
delivered (no valid sample in the file, no receiver within ``--connect-timeout``), when one of several
addresses never had a receiver (its turn of the messages was not delivered), or the receiver stopped
taking messages (``--timeout``); 2 for a usage error (a missing file, a bad address); 130 on Ctrl-C.
ZeroMQ does not acknowledge messages, so "delivered" means handed to a receiver that completed the
ZeroMQ handshake; one that dies with messages in flight loses them.
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Mapping
from typing import Any

from connectors.send_broker import deliver, is_broker, open_producer, send_batches

DEFAULT_BATCH = 256
DEFAULT_TO = "tcp://127.0.0.1:5555"
#: Skipped-input warnings shown one by one; the rest are summed up in one line at the end.
SHOWN_SKIPS = 10
_REASON = re.compile(r"skipped input \((\w+)\)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("exit status: 0 when the samples went to a receiver that connected; 1 when nothing could be "
                     "delivered (no valid sample, no receiver within --connect-timeout) or the receiver stopped "
                     "taking messages; 2 for a usage error")
    parser.add_argument("file", help="file, directory or glob to send (csv, jsonl, npy, npz), or a source URI")
    parser.add_argument("--to", action="append", default=None, metavar="ADDRESS[,ADDRESS...]",
                        help="the receiver's address: tcp://HOST:PORT, HOST:PORT or :PORT (host 127.0.0.1), "
                             f"ipc://PATH (default: {DEFAULT_TO}); several (comma-separated, or --to repeated) "
                             "take the messages in turn, e.g. the workers of a data-parallel service; or a broker: "
                             "redis+stream://HOST:PORT/STREAM, mqtt://HOST:PORT/TOPIC")
    parser.add_argument(
        "--connect-timeout", type=float, default=10.0,
        help="seconds to wait for a receiver to connect (to every address) before giving up with status 1, "
             "or, when some connected, warning about the others (default: %(default)s; 0: send at once, "
             "ZeroMQ queues the messages until one connects)",
    )
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
    parser.add_argument("--columns", default=None, metavar="A,B,...",
                        help="CSV feature columns, comma-separated (default: every column but the label); "
                             "in a file with no header row the columns are named 0, 1, 2, ...")
    parser.add_argument("--header", action=argparse.BooleanOptionalAction, default=None,
                        help="whether CSV files start with a header row (default: yes, unless the first row is "
                             "all numbers)")
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


class _SkipReport(logging.Handler):
    """Prints a source's first ``SHOWN_SKIPS`` skipped-input warnings and notes how many rows they covered.

    The source's own rate limit lets its first ten rejects through at once, so the rows skipped by the
    time the tenth is shown are the rows those warnings speak for; the rest are summed up at the end.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._source: Any = None
        self._csv = False
        self.shown = 0
        self.covered = 0
        self._hinted = False

    def watch(self, source: Any, csv: bool) -> None:
        """The source whose counters tell how many rows the warnings shown speak for."""
        self._source, self._csv = source, csv

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        reason = _REASON.search(message)
        if reason is None:
            print(f"streammas send: {message}", file=sys.stderr)
            return
        if self.shown >= SHOWN_SKIPS:
            return
        self.shown += 1
        self.covered = _rejected(self._source.counters) if self._source is not None else self.shown
        if self._csv and reason.group(1) == "parse" and not self._hinted:
            self._hinted = True
            message += " (a column that is not a feature? choose the feature columns with --columns A,B,...)"
        print(f"streammas send: {message}", file=sys.stderr)


def _rejected(counters: Mapping[str, int]) -> int:
    return sum(v for k, v in counters.items() if k.startswith("rejected:"))


def _open_source(args: argparse.Namespace) -> tuple[Any, str]:
    from connectors.registry import open_source, split_uri

    options: dict[str, Any] = {}
    scheme = split_uri(args.file)[0]
    if args.follow:
        options["follow"] = True
    csv_only = {"--label": args.label, "--columns": args.columns, "--header/--no-header": args.header}
    for flag, value in csv_only.items():
        if value is not None and scheme != "csv":
            raise ValueError(f"{flag} is for CSV files")
    if args.label is not None:
        options["label"] = args.label
    if args.columns is not None:
        options["columns"] = [c.strip() for c in args.columns.split(",") if c.strip()]
    if args.header is not None:
        options["header"] = args.header
    return open_source(args.file, batch_size=_batch_size(args), max_latency_ms=50, **options), scheme


def addresses(args: argparse.Namespace) -> list[str]:
    """The receivers' addresses: every ``--to``, each split at its commas, in order, once each.

    >>> addresses(argparse.Namespace(to=[":5555,:5556", ":5557", ":5555"]))
    [':5555', ':5556', ':5557']
    >>> addresses(argparse.Namespace(to=None))
    ['tcp://127.0.0.1:5555']
    """
    given = [a.strip() for value in args.to or [DEFAULT_TO] for a in value.split(",")]
    return list(dict.fromkeys(a for a in given if a)) or [DEFAULT_TO]


def _fail(message: str) -> int:
    print(f"streammas send: error: {message}", file=sys.stderr)
    return 2


def run_command(args: argparse.Namespace) -> int:
    if args.connect_timeout < 0:
        return _fail("--connect-timeout must be >= 0")
    # The sources log what they skip under "connectors", from their first row on (a CSV source reads its
    # header when it opens); here it goes to the terminal, ten at most.
    logger = logging.getLogger("connectors")
    report = _SkipReport()
    saved = logger.propagate, logger.level
    logger.addHandler(report)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        return _open_and_send(args, report)
    finally:
        logger.removeHandler(report)
        logger.propagate, logger.level = saved


def _open_and_send(args: argparse.Namespace, report: _SkipReport) -> int:
    from connectors.curve import CurveOptions
    from connectors.zmq import ZmqProducer

    try:
        source, scheme = _open_source(args)
    except (OSError, ValueError) as e:
        return _fail(str(e))
    report.watch(source, scheme == "csv")
    to = addresses(args)
    if len(to) == 1 and is_broker(to[0]):
        return _send_to_broker(args, source, to[0])
    try:
        producer = ZmqProducer(
            to if len(to) > 1 else to[0],
            pattern=args.pattern,
            bind=True if args.bind else None,
            topic=args.topic,
            send_timeout=args.timeout,
            linger_ms=int(args.linger * 1000),
            curve=CurveOptions(server_key=args.curve_server_key, secret_key=args.curve_secret_key),
        )
    except Exception as e:  # a bad address or key file: say so, no traceback
        source.close()
        return _fail(f"cannot open {', '.join(to)}: {e}")
    return _send(args, source, producer, report)


def _send_to_broker(args: argparse.Namespace, source: Any, uri: str) -> int:
    try:
        producer = open_producer(uri)
    except Exception as e:  # a bad URI, a missing client library
        source.close()
        return _fail(f"cannot open {uri}: {e}")
    bar = _progress(getattr(source, "size_hint", None), not args.no_progress)
    sent, start, problem = 0, time.monotonic(), ""
    try:
        sent = send_batches(source, producer, pacer=Pacer(args.rate), bar=bar, labels=not args.no_labels)
        problem = deliver(producer, args.linger) or ""
    except KeyboardInterrupt:
        problem = "interrupted"
    except Exception as e:  # the broker cannot be reached
        problem = f"{uri}: {type(e).__name__}: {e}"
    finally:
        bar.close()
        source.close()
        producer.close()
    elapsed = max(time.monotonic() - start, 1e-9)
    print(f"sent {sent:,} samples in {producer.sent:,} messages to {uri} in {elapsed:.1f} s "
          f"({sent / elapsed:,.0f} samples/s)", file=sys.stderr)
    if problem:
        print(f"streammas send: error: {problem}", file=sys.stderr)
    return 130 if problem == "interrupted" else 1 if problem or not sent else 0


def _no_receiver(args: argparse.Namespace, producer: Any, waited: float) -> str:
    bound = args.bind or args.pattern == "pub"
    several = len(producer.addresses) > 1
    why = producer.refused or (f"nothing connected to {'these addresses' if several else 'this address'}" if bound
                               else "is the service running, with a zmq+pull source bound there?")
    return f"no receiver connected to {', '.join(producer.addresses)} within {waited:g} s ({why})"


def _it(addresses: list[str]) -> str:
    return "it" if len(addresses) == 1 else "them"


def _send(args: argparse.Namespace, source: Any, producer: Any, report: _SkipReport) -> int:
    bar = _progress(getattr(source, "size_hint", None), not args.no_progress)
    where = ", ".join(producer.addresses)
    pacer = Pacer(args.rate)
    sent = 0
    code = 0
    problem = ""
    connected = False
    start = time.monotonic()
    try:
        for batch in source:
            if not connected:
                # waited for only once there is something to send: a file with nothing valid says so at once
                missing = producer.wait_for_peers(args.connect_timeout)
                connected = len(missing) < len(producer.addresses)
                if not connected and args.connect_timeout > 0:
                    problem, code = f"{_no_receiver(args, producer, args.connect_timeout)}: nothing sent", 1
                    break
                if not connected:
                    print(f"streammas send: warning: no receiver connected to {where} yet; "
                          "the messages wait in the queue for one", file=sys.stderr)
                elif missing:
                    # Some workers are there: sending to them beats waiting for all; the others' turn of the
                    # messages waits in the queue, and the end of the run says whether it was delivered.
                    print(f"streammas send: warning: no receiver connected to {', '.join(missing)} within "
                          f"{args.connect_timeout:g} s; the messages for {_it(missing)} wait in the queue until one "
                          "connects",
                          file=sys.stderr)
            pacer.wait(len(batch))
            producer.send(batch.x, None if args.no_labels else batch.y)
            sent += len(batch)
            bar.update(len(batch))
            connected = connected or producer.peers > 0
    except KeyboardInterrupt:
        code = 130
    except TimeoutError as e:
        problem, code = f"{e} (after {sent:,} samples)", 1
    finally:
        bar.close()
        counters = dict(source.counters)
        source.close()
    if sent and not connected and code == 0:
        # --connect-timeout 0: the queue is delivered if a receiver comes before --linger runs out
        connected = producer.wait_for_peer(args.linger)
        if not connected:
            problem, code = f"{_no_receiver(args, producer, args.linger)}: nothing delivered", 1
    if connected and code == 0 and (never := producer.wait_for_peers(args.linger)):
        for address in never:  # closing must not wait --linger again for receivers that never came
            producer.disconnect(address)
        problem, code = (f"no receiver connected to {', '.join(never)} within --linger ({args.linger:g} s): the "
                         f"messages queued for {_it(never)} were not delivered"), 1
    gone = [a for a in producer.without_peer() if a not in producer.never_connected()]
    if connected and code == 0 and gone:
        print(f"streammas send: warning: the receiver at {', '.join(gone)} went away before the end; what "
              f"was still queued is delivered only if it comes back within --linger ({args.linger:g} s)",
              file=sys.stderr)
    producer.close(None if connected else 0)  # with no receiver, lingering delivers nothing
    elapsed = max(time.monotonic() - start, 1e-9)
    rejected = {k.split(":", 1)[1]: v for k, v in counters.items() if k.startswith("rejected:") and v}
    if report.shown >= SHOWN_SKIPS and sum(rejected.values()) > report.covered:
        print(f"streammas send: {sum(rejected.values()) - report.covered:,} more bad rows skipped after the first "
              f"{SHOWN_SKIPS} warnings, not shown one by one", file=sys.stderr)
    if code == 0 and sent == 0:
        problem, code = f"no valid samples in {args.file}: nothing sent", 1
    parts = []
    if sent:
        parts.append(f"{'sent' if connected else 'queued but not delivered:'} {sent:,} samples in "
                     f"{producer.sent:,} messages to {where} in {elapsed:.1f} s "
                     f"({sent / elapsed:,.0f} samples/s)")
    if rejected:
        parts.append("skipped bad input: " + ", ".join(f"{k} {v:,}" for k, v in sorted(rejected.items())))
    if parts:
        print("; ".join(parts), file=sys.stderr)
    if problem:
        print(f"streammas send: error: {problem}", file=sys.stderr)
    return code
