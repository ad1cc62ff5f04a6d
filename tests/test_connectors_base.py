"""Contracts, micro-batching, counters and the URI registry, and the positions of the real sources (files and a
ZeroMQ socket on 127.0.0.1) as a checkpoint keeps them."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from connectors.base import Batch, Sink, Source
from connectors.batching import BatchingSource, MicroBatcher
from connectors.counters import Counters, RateLimitedLog, Reject
from connectors.registry import available, find_connector, open_sink, open_source, register, split_uri, unregister
from connectors.zmq import ZmqProducer, ZmqSource


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def arr(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)[:, None]


# -- MicroBatcher -------------------------------------------------------------------------------------
def test_batcher_cuts_full_batches_in_order_without_copying_whole_chunks() -> None:
    mb = MicroBatcher(batch_size=3, max_latency_s=1.0)
    big = np.arange(7, dtype=np.float32)[:, None]
    mb.add(big)
    assert mb.ready and mb.pending == 7
    x1, _, _ = mb.take()
    x2, _, _ = mb.take()
    assert np.shares_memory(x1, big) and np.shares_memory(x2, big)
    assert not mb.ready
    x3, _, _ = mb.take()
    assert [x1[:, 0].tolist(), x2[:, 0].tolist(), x3[:, 0].tolist()] == [[0, 1, 2], [3, 4, 5], [6]]
    assert mb.pending == 0 and mb.deadline is None


def test_batcher_concatenates_small_chunks() -> None:
    mb = MicroBatcher(batch_size=4, max_latency_s=1.0)
    for v in range(5):
        mb.add(arr(v), np.array([v]))
    x, y, _ = mb.take()
    assert x[:, 0].tolist() == [0, 1, 2, 3] and y.tolist() == [0, 1, 2, 3]
    assert x.flags.c_contiguous and x.dtype == np.float32
    assert mb.pending == 1


def test_batcher_never_mixes_labelled_and_unlabelled_samples() -> None:
    mb = MicroBatcher(batch_size=10, max_latency_s=1.0)
    mb.add(arr(1, 2), np.array([0, 1]))
    assert not mb.ready
    mb.add(arr(3))
    assert mb.ready  # the labelled group is complete
    x, y, _ = mb.take()
    assert x[:, 0].tolist() == [1, 2] and y.tolist() == [0, 1]
    mb.add(arr(4))
    x, y, _ = mb.take()
    assert x[:, 0].tolist() == [3, 4] and y is None


def test_batcher_seal_ends_a_batch() -> None:
    mb = MicroBatcher(batch_size=10, max_latency_s=1.0)
    mb.add(arr(1), end={"f": "a"})
    mb.seal()
    mb.add(arr(2), end={"f": "b"})
    assert mb.ready
    assert mb.take()[2] == {"f": "a"}
    assert not mb.ready


def test_batcher_deadline_is_oldest_sample_plus_latency() -> None:
    clock = FakeClock()
    mb = MicroBatcher(batch_size=10, max_latency_s=0.25, clock=clock)
    mb.add(arr(1))
    clock.t += 0.1
    mb.add(arr(2))
    assert mb.deadline == pytest.approx(100.25)


def test_batcher_positions_of_whole_and_split_chunks() -> None:
    mb = MicroBatcher(batch_size=2, max_latency_s=1.0)
    mb.add(arr(1, 2, 3), start={"offset": 0}, end={"offset": 10})
    assert mb.take()[2] == {"offset": 0, "skip": 2}
    assert mb.take()[2] == {"offset": 10}


@pytest.mark.parametrize("bad", [dict(batch_size=0, max_latency_s=1), dict(batch_size=1, max_latency_s=-1)])
def test_batcher_rejects_bad_settings(bad: dict) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(**bad)


# -- BatchingSource -----------------------------------------------------------------------------------
class Scripted(BatchingSource):
    """Pushes a scripted list of chunks, one per _fill call; None in the script means 'nothing now'."""

    def __init__(self, script: list, finite: bool = True, **kw) -> None:
        super().__init__("scripted", **kw)
        self.script = list(script)
        self.finite = finite
        self.fills = 0
        self.released = False

    def _fill(self, until: float | None) -> None:
        self.fills += 1
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, Reject):
                self._reject(item)
            elif item is not None:
                self._push(item)
        if not self.script and self.finite:
            self._exhausted = True

    def _release(self) -> None:
        self.released = True


def test_read_returns_none_when_nothing_arrives_and_tries_at_least_once() -> None:
    src = Scripted([None, arr(1)], finite=False, batch_size=4, max_latency_ms=0)
    assert src.read(timeout=0) is None
    assert src.fills == 1
    batch = src.read(timeout=0)
    assert batch is not None and batch.x[:, 0].tolist() == [1]  # flushed: max_latency_ms=0
    assert not src.finished


def test_finite_source_flushes_its_remainder_and_finishes() -> None:
    src = Scripted([arr(1, 2, 3), Reject("parse", "bad"), arr(4)], batch_size=3, max_latency_ms=10_000)
    batches = list(src)
    assert [len(b) for b in batches] == [3, 1]
    assert src.finished
    assert src.read() is None
    assert src.counters == {"samples": 4, "batches": 2, "rejected:parse": 1}


def test_close_is_idempotent_and_reading_a_closed_source_fails() -> None:
    with Scripted([arr(1)]) as src:
        pass
    assert src.released
    src.close()
    with pytest.raises(ValueError):
        src.read()


def test_abstract_contracts() -> None:
    with pytest.raises(TypeError):
        Source()  # type: ignore[abstract]
    with pytest.raises(TypeError):
        Sink()  # type: ignore[abstract]
    b = Batch(np.zeros((4, 2), dtype=np.float32))
    assert len(b) == 4 and b.y is None and b.position is None


# -- counters -----------------------------------------------------------------------------------------
def test_rate_limited_log_refills_and_reports_what_it_suppressed() -> None:
    clock = FakeClock()
    out: list[str] = []
    log = RateLimitedLog(out.append, burst=2, interval=10.0, clock=clock)
    for i in range(6):
        log.emit(f"m{i}")
    assert out == ["m0", "m1"] and log.suppressed == 4
    clock.t += 10.0
    log.emit("m6")
    assert out[-1] == "m6 (4 more rejects not logged before this one)"
    assert log.suppressed == 0


def test_counters_count_by_reason_and_log_boundedly(caplog: pytest.LogCaptureFixture) -> None:
    counters = Counters(logging.getLogger("test.counters"), "src", burst=3, interval=3600)
    with caplog.at_level(logging.WARNING, logger="test.counters"):
        for i in range(100):
            counters.reject(Reject("json", f"line {i}"))
        counters.reject(Reject("nonfinite", "3 samples", count=3))
    assert counters.snapshot() == {"samples": 0, "batches": 0, "rejected:json": 100, "rejected:nonfinite": 3}
    assert counters.rejected == 103
    assert len(caplog.records) == 3
    assert "src: skipped input (json): line 0" in caplog.text


# -- registry -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("zmq+pull://127.0.0.1:5555", ("zmq+pull", "//127.0.0.1:5555")),
        ("CSV:data.csv", ("csv", "data.csv")),
        ("data/x.npy", ("npy", "data/x.npy")),
        ("logs/*.ndjson", ("jsonl", "logs/*.ndjson")),
        ("C:\\data\\x.npz", ("npz", "C:\\data\\x.npz")),
        ("my.plugin+v2:thing", ("my.plugin+v2", "thing")),
    ],
)
def test_split_uri(uri: str, expected: tuple[str, str]) -> None:
    assert split_uri(uri) == expected


def test_unknown_scheme_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known schemes:.*csv.*zmq\\+pull"):
        open_source("nosuchscheme:whatever")
    with pytest.raises(ValueError, match="cannot tell"):
        split_uri("data.txt")


def test_register_serves_a_scheme_ahead_of_builtins() -> None:
    class Conn:
        def open_source(self, uri, *, batch_size, max_latency_ms, position, **options):
            return Scripted([arr(1, 2)], batch_size=batch_size, max_latency_ms=max_latency_ms)

    register("Mine", Conn())
    try:
        assert available()["mine"] == "registered"
        with open_source("mine:anything", batch_size=5) as src:
            assert [len(b) for b in src] == [2]
        with pytest.raises(ValueError, match="sink"):
            open_sink("mine:x")
    finally:
        unregister("mine")
    with pytest.raises(ValueError):
        find_connector("mine")


def test_builtin_schemes_are_listed_and_sink_source_roles_checked() -> None:
    schemes = available()
    for scheme in ("zmq+pull", "zmq+sub", "zmq+pub", "csv", "jsonl", "npy", "npz"):
        assert schemes[scheme] == "builtin"
    with pytest.raises(ValueError, match="sink"):
        open_source("zmq+pub://127.0.0.1:5556")
    with pytest.raises(ValueError, match="source"):
        open_sink("zmq+pull://127.0.0.1:5556")
    with pytest.raises(ValueError, match="read, not written"):
        open_sink("csv:out.csv")
    with pytest.raises(ValueError):
        open_source("csv:x.csv", batch_size=0)


# -- positions of real sources ------------------------------------------------------------------------
def _write_input(kind: str, folder: Path) -> str:
    """A small input of ``kind`` whose rows are ``[i, -i]`` in order.

    The JSON Lines file holds two rows a line after a first of one, so that a position can fall inside a line;
    the glob is five files, so that the reading crosses from one to the next.
    """
    rows = np.stack([np.arange(30), -np.arange(30)], axis=1).astype(np.float32)
    if kind == "csv":
        (folder / "d.csv").write_text("a,b\n" + "".join(f"{a:g},{b:g}\n" for a, b in rows))
        return f"csv:{folder}/d.csv"
    if kind == "jsonl":
        lines = [json.dumps({"x": rows[i:i + 2].tolist()}) for i in range(1, 30, 2)]
        lines.insert(0, json.dumps({"x": rows[:1].tolist()}))
        (folder / "d.jsonl").write_text("\n".join(lines) + "\n")
        return f"jsonl:{folder}/d.jsonl"
    if kind == "npy":
        np.save(folder / "d.npy", rows)
        return f"npy:{folder}/d.npy"
    if kind == "npz":
        np.savez(folder / "d.npz", x=rows)
        return f"npz:{folder}/d.npz"
    for k in range(5):  # a glob of .npy files (split among workers by file)
        np.save(folder / f"p{k}.npy", rows[6 * k:6 * k + 6])
    return f"npy:{folder}/p*.npy"


@pytest.mark.parametrize("shard", [None, (1, 2)], ids=["whole", "shard"])
@pytest.mark.parametrize("kind", ["csv", "jsonl", "npy", "npz", "glob"])
def test_positions_of_real_sources_survive_json_and_resume_where_they_were(
        kind: str, shard: tuple[int, int] | None, tmp_path: Path) -> None:
    uri = _write_input(kind, tmp_path)
    with open_source(uri, batch_size=4, shard=shard) as src:
        whole = np.concatenate([b.x for b in src])
    with open_source(uri, batch_size=4, shard=shard) as src:
        head = [src.read() for _ in range(3)]
        assert all(b is not None for b in head) and not src.finished  # some is left to resume
        position = src.position
    assert position is not None and position == head[-1].position  # where the last batch returned left it
    saved = json.loads(json.dumps(position, allow_nan=False))
    assert saved == position  # nothing JSON changes: lists, not tuples; Python numbers, not numpy's
    if shard is not None:
        assert saved["shard"] == list(shard)
    with open_source(uri, batch_size=4, shard=shard, position=saved) as resumed:
        rest = [b.x for b in resumed]
    np.testing.assert_array_equal(np.concatenate([b.x for b in head] + rest), whole)
    assert rest  # it did resume in the middle
    if shard is None:
        np.testing.assert_array_equal(whole[:, 0], np.arange(30))


def test_a_zeromq_source_is_not_resumable_and_says_so_with_none() -> None:
    with ZmqSource("tcp://127.0.0.1:*", batch_size=2, max_latency_ms=0) as src:
        with ZmqProducer(src.address) as producer:
            for k in range(3):
                producer.send(np.full((2, 2), k, np.float32))
        got = []
        deadline = time.monotonic() + 60.0  # a safety net against a hang, never a performance assertion
        while len(got) < 3 and time.monotonic() < deadline:
            batch = src.read(timeout=0.5)
            if batch is not None:
                got.append(batch)
        assert [b.x[0, 0] for b in got] == [0, 1, 2]
        assert [b.position for b in got] == [None] * 3 and src.position is None
        assert json.loads(json.dumps(src.position)) is None  # a checkpoint stores null: start where the stream is
