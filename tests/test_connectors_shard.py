"""Data-parallel sources: worker ``rank`` of ``world_size`` reads its own part of the input
(``open_source(uri, shard=(rank, world_size))``), resumes it from its own positions, and the workers
together read every sample once; ZeroMQ workers bind a port each and ``streammas send`` feeds them all."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from service_support import streammas

from connectors.base import Source
from connectors.registry import open_source, register, unregister
from connectors.zmq import ZmqProducer, ZmqSource

ROWS = 23  # not a multiple of 2 or 3: the last worker's share is a row short


def ids(source: Source) -> list[int]:
    """The first feature of every sample a finite source yields, in order."""
    return [int(v) for batch in source for v in batch.x[:, 0]]


def write_csv(path: Path, first: int, last: int, header: str | None = "id,f,label") -> None:
    with open(path, "a") as f:
        f.write((f"{header}\n" if header else "") + "".join(f"{i},{-i},{i % 3}\n" for i in range(first, last)))


def make_csv(tmp_path: Path) -> str:
    write_csv(tmp_path / "d.csv", 0, ROWS)
    return str(tmp_path / "d.csv")


def make_bare_csv(tmp_path: Path) -> str:
    write_csv(tmp_path / "bare.csv", 0, ROWS, header=None)
    return str(tmp_path / "bare.csv")


def make_jsonl(tmp_path: Path) -> str:
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"x": [i, -i], "y": i % 3}) + "\n" for i in range(ROWS)))
    return str(path)


def make_npy(tmp_path: Path) -> str:
    np.save(tmp_path / "d.npy", np.stack([np.arange(ROWS), -np.arange(ROWS)], axis=1).astype(np.float64))
    return str(tmp_path / "d.npy")


def make_npz(tmp_path: Path) -> str:
    np.savez(tmp_path / "d.npz", x=np.stack([np.arange(ROWS), -np.arange(ROWS)], axis=1), y=np.arange(ROWS) % 3)
    return str(tmp_path / "d.npz")


def make_glob(tmp_path: Path) -> str:
    # 7 files of 3 rows (ids 3k .. 3k+2 in file k): file k is worker k % world_size's
    for k in range(7):
        write_csv(tmp_path / f"part-{k:02d}.csv", 3 * k, 3 * k + 3)
    return f"{tmp_path}/part-*.csv"


MAKERS = {"csv": make_csv, "bare-csv": make_bare_csv, "jsonl": make_jsonl, "npy": make_npy, "npz": make_npz}


def expected(kind: str, rank: int, world: int) -> list[int]:
    if kind == "glob":
        return [i for k in range(rank, 7, world) for i in range(3 * k, 3 * k + 3)]
    return list(range(ROWS))[rank::world]


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("kind", [*MAKERS, "glob"])
def test_the_shares_are_the_whole_input_once_each_in_file_order(tmp_path: Path, kind: str, world: int) -> None:
    uri = (make_glob if kind == "glob" else MAKERS[kind])(tmp_path)
    shares = []
    for rank in range(world):
        with open_source(uri, batch_size=4, max_latency_ms=0, shard=(rank, world)) as src:
            shares.append(ids(src))
            assert src.position["shard"] == [rank, world]
        assert shares[-1] == expected(kind, rank, world)
    total = sorted(i for share in shares for i in share)
    assert total == list(range(21 if kind == "glob" else ROWS))


@pytest.mark.parametrize("kind", [*MAKERS, "glob"])
def test_each_worker_resumes_its_own_share_from_a_mid_position(tmp_path: Path, kind: str) -> None:
    uri = (make_glob if kind == "glob" else MAKERS[kind])(tmp_path)
    for rank in range(3):
        with open_source(uri, batch_size=2, max_latency_ms=0, shard=(rank, 3)) as src:
            head = [int(v) for v in src.read().x[:, 0]]
            position = json.loads(json.dumps(src.position))  # as a checkpoint stores it
        with open_source(uri, batch_size=2, max_latency_ms=0, position=position, shard=(rank, 3)) as src:
            assert head + ids(src) == expected(kind, rank, 3)
        # another world size, another rank or no shard at all: the saved position does not fit
        for other in [(rank % 2, 2), ((rank + 1) % 3, 3), None]:
            with pytest.raises(ValueError, match="saved position was taken as worker"):
                open_source(uri, batch_size=2, position=position, shard=other)


def test_a_world_of_one_is_the_unsplit_source_with_its_old_positions(tmp_path: Path) -> None:
    uri = make_csv(tmp_path)
    with open_source(uri, batch_size=5) as plain, open_source(uri, batch_size=5, shard=(0, 1)) as one:
        first = plain.read()
        assert one.read().position == first.position and "shard" not in first.position
    with open_source(uri, batch_size=50, position=first.position, shard=(0, 1)) as resumed:
        assert ids(resumed) == list(range(5, ROWS))
    with pytest.raises(ValueError, match="0 <= rank < world_size"):
        open_source(uri, shard=(2, 2))


def test_multi_sample_jsonl_lines_go_whole_to_one_worker_and_resume_inside_a_line(tmp_path: Path) -> None:
    path = tmp_path / "multi.jsonl"
    # line k holds k + 1 samples, ids 100 k + j: a split batch must resume inside its line
    path.write_text("".join(json.dumps({"x": [[100 * k + j] for j in range(k + 1)]}) + "\n" for k in range(6)))
    for rank in range(2):
        want = [100 * k + j for k in range(rank, 6, 2) for j in range(k + 1)]
        with open_source(str(path), batch_size=3, max_latency_ms=0, shard=(rank, 2)) as src:
            first = src.read()
            rest = ids(src)
        assert [int(v) for v in first.x[:, 0]] + rest == want
        with open_source(str(path), batch_size=3, position=first.position, shard=(rank, 2)) as src:
            assert ids(src) == rest


def test_a_worker_with_no_file_of_a_glob_is_finished_or_idle_not_an_error(tmp_path: Path) -> None:
    for k in range(2):
        write_csv(tmp_path / f"p{k}.csv", 3 * k, 3 * k + 3)
    with open_source(f"{tmp_path}/p*.csv", shard=(2, 3)) as src:
        assert src.read(timeout=0.1) is None and src.finished
        position = src.position
    assert position == {"shard": [2, 3]}  # nothing read, but a resume with another world size is told apart
    with open_source(f"{tmp_path}/p*.csv", shard=(2, 3), position=position) as src:
        assert ids(src) == []
    with open_source(f"{tmp_path}/p*.csv", shard=(2, 3), follow=True, poll_interval=0.01) as followed:
        assert followed.read(timeout=0.1) is None and not followed.finished
        write_csv(tmp_path / "p2.csv", 6, 9)  # a third file: worker 2's
        assert follow_until([followed], [3]) == [[6, 7, 8]]
    with pytest.raises(FileNotFoundError, match="no file matches"):
        open_source(f"{tmp_path}/none-*.csv", shard=(1, 2))
    for k in range(2):
        np.save(tmp_path / f"a{k}.npy", np.full((2, 1), k, np.float32))
    with open_source(f"{tmp_path}/a*.npy", shard=(2, 3)) as arrays:
        assert ids(arrays) == [] and arrays.finished and arrays.position["shard"] == [2, 3]


def follow_until(sources: list[Source], wanted: list[int]) -> list[list[int]]:
    got: list[list[int]] = [[] for _ in sources]
    deadline = time.monotonic() + 20
    while [len(g) for g in got] != wanted:
        assert time.monotonic() < deadline, f"stalled at {got}"
        for k, src in enumerate(sources):
            batch = src.read(timeout=0.02)
            if batch is not None:
                got[k] += [int(v) for v in batch.x[:, 0]]
    return got


@pytest.mark.parametrize("header", ["id,f,label", None])
def test_a_followed_file_splits_the_rows_appended_later(tmp_path: Path, header: str | None) -> None:
    path = tmp_path / "live.csv"
    write_csv(path, 0, 5, header=header)
    options = {"batch_size": 4, "max_latency_ms": 0, "follow": True, "poll_interval": 0.01}
    with open_source(str(path), shard=(0, 2), **options) as a, open_source(str(path), shard=(1, 2), **options) as b:
        assert follow_until([a, b], [3, 2]) == [[0, 2, 4], [1, 3]]
        write_csv(path, 5, 12, header=None)
        with open(path, "a") as f:
            f.write("12,-12")  # half a row: nobody's yet
        assert follow_until([a, b], [3, 4]) == [[6, 8, 10], [5, 7, 9, 11]]
        saved = b.position
        with open(path, "a") as f:
            f.write(",0\n13,-13,1\n")
        assert follow_until([a, b], [1, 1]) == [[12], [13]]
    # worker 1 restarts from its position before the last rows: exactly its rest
    with open_source(str(path), shard=(1, 2), position=saved, **options) as b:
        assert follow_until([b], [1]) == [[13]]


def vacant_port_pair() -> int:
    """A base port whose next port is free as well (taken from the system, then let go)."""
    for _ in range(50):
        with ZmqSource("tcp://127.0.0.1:*", batch_size=1) as probe:
            base = int(probe.address.rpartition(":")[2])
        if base < 65535:
            try:
                with ZmqSource(f"tcp://127.0.0.1:{base + 1}", batch_size=1):
                    return base
            except zmq.ZMQError:
                continue
    raise AssertionError("no two free ports in a row")


def receive_all(sources: list[ZmqSource], total: int) -> list[list[int]]:
    got: list[list[int]] = [[] for _ in sources]
    deadline = time.monotonic() + 60
    while sum(map(len, got)) < total:
        assert time.monotonic() < deadline, f"stalled at {[len(g) for g in got]}"
        for k, src in enumerate(sources):
            batch = src.read(timeout=0.02)
            if batch is not None:
                got[k] += [int(v) for v in batch.x[:, 0]]
    for src in sources:
        assert src.read(timeout=0.1) is None  # and nothing more
    return got


def test_zmq_workers_bind_the_base_port_plus_their_rank(tmp_path: Path) -> None:
    base = vacant_port_pair()
    uri = f"zmq+pull://127.0.0.1:{base}"
    sources = [open_source(uri, batch_size=64, max_latency_ms=1, shard=(r, 2)) for r in range(2)]
    try:
        assert [s.address for s in sources] == [f"tcp://127.0.0.1:{base}", f"tcp://127.0.0.1:{base + 1}"]
        with ZmqProducer([s.address for s in sources]) as producer:
            assert producer.wait_for_peers(10) == []
            for k in range(40):
                producer.send(np.full((1, 2), k, dtype=np.float32))
        got = receive_all(sources, 40)
    finally:
        for s in sources:
            s.close()
    assert sorted(got[0] + got[1]) == list(range(40)) and got[0] and got[1]
    with open_source("zmq+pull://127.0.0.1:*", shard=(1, 2)) as free:
        assert free.address != "tcp://127.0.0.1:*"  # still a port of the system's choosing
    with open_source(f"zmq+pull:ipc://{tmp_path}/in.sock", shard=(1, 2)) as ipc:
        assert ipc.address == f"ipc://{tmp_path}/in.sock.1"
    with open_source(f"zmq+pull://127.0.0.1:{base}?bind=0", shard=(1, 2)) as connecting:
        assert connecting.address == f"tcp://127.0.0.1:{base}"  # a binding PUSH spreads its messages
    with pytest.raises(ValueError, match="every subscriber receives every message"):
        open_source("zmq+sub://127.0.0.1:5556", shard=(0, 2))
    with open_source("zmq+sub://127.0.0.1:5556", shard=(0, 1)) as single:
        assert single.address == "tcp://127.0.0.1:5556"


def test_send_spreads_a_file_over_two_workers(tmp_path: Path) -> None:
    path = tmp_path / "d.npy"
    np.save(path, np.arange(200, dtype=np.float32).reshape(100, 2))
    base = vacant_port_pair()
    sources = [open_source(f"zmq+pull://127.0.0.1:{base}", batch_size=64, max_latency_ms=1, shard=(r, 2))
               for r in range(2)]
    try:
        done = streammas("send", str(path), "--to", f":{base},:{base + 1}", "--batch-size", "10", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        got = receive_all(sources, 100)
    finally:
        for s in sources:
            s.close()
    assert [len(g) for g in got] == [50, 50]  # ten messages, taken in turn
    assert sorted(got[0] + got[1]) == list(range(0, 200, 2))
    assert f"to tcp://127.0.0.1:{base}, tcp://127.0.0.1:{base + 1}" in done.stderr


class Plain:
    def open_source(self, uri, *, batch_size, max_latency_ms, position, **options):
        return open_source(uri.split(":", 1)[1], batch_size=batch_size, position=position, **options)


class Splits:
    def open_source(self, uri, *, batch_size, max_latency_ms, position, rank=0, world_size=1, **options):
        self.given = (rank, world_size)
        return Plain().open_source(uri, batch_size=batch_size, max_latency_ms=0, position=position,
                                   shard=(rank, world_size), **options)


def test_a_plugin_shards_only_when_it_names_rank_and_world_size(tmp_path: Path) -> None:
    uri = make_csv(tmp_path)
    splits = Splits()
    register("plain", Plain())
    register("splits", splits)
    try:
        with pytest.raises(ValueError, match="'plain' does not say it can shard.*run it with one worker"):
            open_source(f"plain:{uri}", shard=(0, 2))
        with open_source(f"plain:{uri}", shard=(0, 1)) as src:  # a world of one needs no split
            assert ids(src) == list(range(ROWS))
        with open_source(f"splits:{uri}", batch_size=8, shard=(1, 2)) as src:
            assert ids(src) == list(range(1, ROWS, 2)) and splits.given == (1, 2)
    finally:
        unregister("plain")
        unregister("splits")


def test_a_bad_row_is_counted_by_the_worker_whose_row_it_is(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,b\n1,2\n" + "9" * 200 + "\n3,x\n5,6\n")  # row 1 too long, row 2 not a number
    counts = []
    for rank in range(2):
        with open_source(str(path), batch_size=8, max_line_bytes=100, shard=(rank, 2)) as src:
            counts.append((ids(src), src.counters.get("rejected:too_large", 0), src.counters.get("rejected:parse", 0)))
    assert counts == [([1], 0, 1), ([5], 1, 0)]
