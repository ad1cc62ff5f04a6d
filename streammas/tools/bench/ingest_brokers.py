"""``streammas bench ingest``, the brokers: the Redis Streams and MQTT sources against bare client loops.

Each run reads the same queued input: ``--broker-messages`` messages of ``--broker-per-message`` samples of
``--features`` float32, wire format v1 (binary; packed for MQTT), already on the broker, so that the receiver's rate
is measured, not the producer's. Redis: a fresh consumer group over a stream filled once; the bare loop is
``XREADGROUP`` (``COUNT`` = the source's ``batch``) and one ``XACK`` per reply, the source decodes, validates,
batches and acknowledges at a commit every 50 batches. MQTT: a persistent session whose QoS 1 messages were
published while it was away; the bare loop is paho's ``on_message`` (acknowledged on receipt), the source acknowledges
once a batch was handed on. Runs are interleaved; medians of ``--repeats``.

The brokers are the ones the machine has (``redis-server``, ``mosquitto``), started on free ports in a temporary
directory and stopped at the end; one that is not installed is left out of the result.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

_PATIENCE = 60.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _server(command: Callable[[int, Path], list[str]]) -> Iterator[int]:
    """A broker process on a free port of 127.0.0.1 in a temporary directory; yields the port."""
    with tempfile.TemporaryDirectory(prefix="streammas-bench-broker-") as d:
        port = _free_port()
        proc = subprocess.Popen(command(port, Path(d)), cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + _PATIENCE
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{command(port, Path(d))[0]} did not start") from None
                    time.sleep(0.05)
            yield port
        finally:
            proc.terminate()
            proc.wait(timeout=_PATIENCE)


def _redis_command(port: int, d: Path) -> list[str]:
    return [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no"]


def _mosquitto_command(port: int, d: Path) -> list[str]:
    (d / "m.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n")
    return [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(d / "m.conf")]


def _sample(args: argparse.Namespace) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((args.broker_per_message, args.features), dtype=np.float32)


def _timed(samples: int, take: Callable[[], int]) -> float:
    got, start = 0, time.perf_counter()
    while got < samples:
        got += take()
    return got / (time.perf_counter() - start)


# -- Redis --------------------------------------------------------------------------------------------------
def bench_redis(args: argparse.Namespace, port: int) -> dict:
    from connectors.redis import RedisStreamProducer, RedisStreamSource, connect
    from connectors.wire import encode

    total = args.broker_messages * args.broker_per_message
    header, payload = encode(_sample(args))
    with RedisStreamProducer("bench", port=port) as producer:
        pipe = producer._client.pipeline(transaction=False)
        for _ in range(args.broker_messages):
            pipe.xadd("bench", {"header": header, "payload": bytes(payload)})
        pipe.execute()
    client = connect("127.0.0.1", port, block_ms=1000)
    groups = iter(range(1_000_000))

    def bare() -> float:
        group = f"bare-{next(groups)}"
        client.xgroup_create("bench", group, id="0")

        def take() -> int:
            reply = client.xreadgroup(group, "c", {"bench": ">"}, count=args.broker_batch, block=1000)
            ids = [i for i, _ in reply[0][1]] if reply else []
            if not ids:
                raise RuntimeError("the stream ran dry")
            client.xack("bench", group, *ids)
            return len(ids) * args.broker_per_message

        return _timed(total, take)

    def source() -> float:
        with RedisStreamSource("bench", port=port, group=f"source-{next(groups)}", batch=args.broker_batch,
                               batch_size=args.batch_size, max_latency_ms=50) as src:
            batches = 0

            def take() -> int:
                nonlocal batches
                batch = src.read(timeout=30)
                if batch is None:
                    raise RuntimeError("the source ran dry")
                batches += 1
                if batches % 50 == 0:
                    src.commit(batch.position)
                return len(batch)

            rate = _timed(total, take)
            src.commit(src.position)
            if src.counters["acked"] != args.broker_messages or any(k.startswith("rejected") for k in src.counters):
                raise RuntimeError(f"unexpected counters {dict(src.counters)}")
        return rate

    try:
        return _compare({"bare": bare, "source": source}, args.repeats)
    finally:
        client.close()


# -- MQTT ---------------------------------------------------------------------------------------------------
def bench_mqtt(args: argparse.Namespace, port: int) -> dict:
    import queue

    from connectors.mqtt import MqttProducer, MqttSource, connect
    from connectors.wire import encode_packed

    total = args.broker_messages * args.broker_per_message
    message = encode_packed(_sample(args))
    sessions = iter(range(1_000_000))

    def queued(client_id: str) -> None:
        """Make the session (subscribed, then away), and publish every message for it while it is away."""
        connected: queue.Queue = queue.Queue()
        client = connect("127.0.0.1", port, client_id, on_connect=lambda c, *a: (c.subscribe("bench", 1),
                                                                                 connected.put(1)))
        connected.get(timeout=_PATIENCE)
        time.sleep(0.2)
        client.disconnect()
        client.loop_stop()
        with MqttProducer("bench", port=port) as producer:
            for _ in range(args.broker_messages):
                producer.publish(message)
            if not producer.flush(timeout=_PATIENCE):
                raise RuntimeError("the broker did not take the messages")

    def bare() -> float:
        client_id = f"bare-{next(sessions)}"
        queued(client_id)
        inbox: queue.Queue = queue.Queue()
        start = time.perf_counter()
        client = connect("127.0.0.1", port, client_id, on_message=lambda c, u, m: inbox.put(len(m.payload)))
        try:
            for _ in range(args.broker_messages):
                inbox.get(timeout=_PATIENCE)
            return total / (time.perf_counter() - start)
        finally:
            client.disconnect()
            client.loop_stop()

    def source() -> float:
        client_id = f"source-{next(sessions)}"
        queued(client_id)
        start = time.perf_counter()
        with MqttSource("bench", port=port, client_id=client_id, batch_size=args.batch_size, max_latency_ms=50) as src:
            got = 0
            while got < total:
                batch = src.read(timeout=_PATIENCE)
                if batch is None:
                    raise RuntimeError("the source ran dry")
                got += len(batch)
            return got / (time.perf_counter() - start)

    return _compare({"bare": bare, "source": source}, args.repeats)


def _compare(variants: dict[str, Callable[[], float]], repeats: int) -> dict:
    runs: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):  # interleaved, so that drift in the machine's load hits both alike
        for name, fn in variants.items():
            runs[name].append(fn())
    rates = {name: statistics.median(r) for name, r in runs.items()}
    return {"samples_per_s": rates, "runs": runs, "ratio": rates["source"] / rates["bare"]}


def bench_brokers(args: argparse.Namespace) -> dict:
    """Each broker the machine has, measured (see the module docstring); the others left out."""
    out: dict[str, dict] = {}
    if shutil.which("redis-server"):
        with _server(_redis_command) as port:
            out["redis"] = bench_redis(args, port)
    if shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists():
        with _server(_mosquitto_command) as port:
            out["mqtt"] = bench_mqtt(args, port)
    return out


def table(result: dict, cfg: dict) -> list[str]:
    lines = ["", f"Brokers on 127.0.0.1, {cfg['broker_messages']} queued messages of {cfg['broker_per_message']} "
                 f"samples of {cfg['features']} float32",
             f"  {'receiver':<48}{'samples/s':>11}{'vs bare':>9}"]
    labels = {"redis": ("Redis: XREADGROUP + XACK loop", "RedisStreamSource (decode, batch, commit)"),
              "mqtt": ("MQTT: paho on_message, QoS 1", "MqttSource (decode, batch, ack when learned)")}
    for broker, r in result.items():
        bare, source = labels[broker]
        rates = r["samples_per_s"]
        lines.append(f"  {bare:<48}{rates['bare']:>11,.0f}{1.0:>9.2f}")
        lines.append(f"  {source:<48}{rates['source']:>11,.0f}{r['ratio']:>9.2f}")
    return lines
