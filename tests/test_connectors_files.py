"""File sources (CSV, JSON Lines, .npy, .npz), positions, and the JSON Lines sink (following files:
test_connectors_follow.py)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest

from connectors.base import Batch
from connectors.jsonl_sink import JsonlSink
from connectors.lines import LineCursor
from connectors.registry import open_sink, open_source

GUARD_S = 60.0  # a safety net against hangs, never a performance assertion


def write_csv(path: Path, rows, header="a,b,label", mode="w") -> None:
    with open(path, mode, newline="") as f:
        if header is not None:
            f.write(header + "\n")
        for row in rows:
            f.write(row + "\n")


def all_batches(src) -> list[Batch]:
    return list(src)


def read_n(src, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Read until ``n`` samples came (a followed file never finishes)."""
    batches: list[Batch] = []
    got = 0
    deadline = time.monotonic() + GUARD_S
    while got < n:
        batch = src.read(timeout=0.2)
        if batch is None:
            assert time.monotonic() < deadline, f"stalled at {got} of {n}: {dict(src.counters)}"
            continue
        batches.append(batch)
        got += len(batch)
    assert got == n, f"got {got} samples, expected {n}"
    x = np.concatenate([b.x for b in batches])
    y = None if batches[0].y is None else np.concatenate([b.y for b in batches])
    return x, y


# -- CSV ----------------------------------------------------------------------------------------------
def test_csv_reads_features_and_the_label_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    write_csv(path, [f"{i},{i / 2},{i % 3}" for i in range(10)])
    with open_source(str(path), batch_size=4) as src:
        batches = all_batches(src)
        assert src.finished
    assert [len(b) for b in batches] == [4, 4, 2]
    x = np.concatenate([b.x for b in batches])
    y = np.concatenate([b.y for b in batches])
    assert x.dtype == np.float32 and x.shape == (10, 2) and x.flags.c_contiguous
    assert x[:, 1].tolist() == [i / 2 for i in range(10)]
    assert y.dtype == np.int64 and y.tolist() == [i % 3 for i in range(10)]


@pytest.mark.parametrize(
    ("options", "header", "row", "x", "y"),
    [
        ({}, "a,b,c", "1,2,3", [1, 2, 3], None),
        ({"label": None}, "a,b,label", "1,2,3", [1, 2, 3], None),
        ({"label": "t"}, "t,a,b", "1,2,3", [2, 3], [1]),
        ({"columns": ["b"]}, "a,b,label", "1,2,3", [2], [3]),
        ({"label_dtype": "float32"}, "a,label", "1,0.5", [1], [0.5]),
        ({"delimiter": ";"}, "a;b", "1.5;-2e3", [1.5, -2000], None),
        ({}, "\ufeffa,b", "1,2", [1, 2], None),
        ({}, '"a","b"', '"1",2', [1, 2], None),
        ({}, "a,b", "1,2\r", [1, 2], None),
    ],
)
def test_csv_options(tmp_path: Path, options, header, row, x, y) -> None:
    path = tmp_path / "d.csv"
    write_csv(path, [row, "", row], header=header)
    with open_source(f"csv:{path}", batch_size=8, **options) as src:
        batch = src.read()
    assert batch.x.tolist() == [x, x]
    assert (None if batch.y is None else batch.y.tolist()) == (None if y is None else y * 2)


def test_csv_configuration_errors_fail_at_open(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    write_csv(path, ["1,2,3"])
    with pytest.raises(ValueError, match="no label column 'target'"):
        open_source(str(path), label="target")
    with pytest.raises(ValueError, match="not in the header"):
        open_source(str(path), columns=["zzz"])
    with pytest.raises(FileNotFoundError):
        open_source(str(tmp_path / "missing.csv"))


def test_csv_bad_rows_are_counted_logged_with_line_numbers_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "d.csv"
    rows = [
        "1,1,0",  # line 2
        "2,2",  # 3: columns
        "3,x,1",  # 4: parse
        "4,4,1.5",  # 5: label
        "5,nan,0",  # 6: nonfinite
        "6,inf,0",  # 7: nonfinite
        "7,7,",  # 8: label (empty)
        "8,8,8,8",  # 9: columns
        "9,,1",  # 10: parse (empty field)
        "10,10,1",  # 11
    ]
    write_csv(path, rows)
    with open(path, "ab") as f:
        f.write(b"11,\xff\xfe,1\n12,12,0\n")  # line 12: encoding
    with caplog.at_level(logging.WARNING), open_source(str(path), batch_size=100) as src:
        batches = all_batches(src)
        counters = dict(src.counters)
    x = np.concatenate([b.x for b in batches])
    assert x[:, 0].tolist() == [1, 10, 12]
    assert counters == {
        "samples": 3,
        "batches": 1,
        "rejected:columns": 2,
        "rejected:parse": 2,
        "rejected:label": 2,
        "rejected:nonfinite": 2,
        "rejected:encoding": 1,
    }
    text = caplog.text
    for needle in ("lines 3, 9: not 3 fields", "line 4: column 'b': 'x' is not a number", "line 12: not UTF-8"):
        assert needle in text
    assert "lines 6, 7: NaN or infinity" in text


def test_csv_and_npy_position_round_trip_at_every_batch(tmp_path: Path) -> None:
    csv_path = tmp_path / "d.csv"
    write_csv(csv_path, [f"{i},{i},{i % 2}" if i % 7 else "bad,row" for i in range(1, 60)])
    npy_path = tmp_path / "d.npy"
    np.save(npy_path, np.arange(118, dtype=np.float64).reshape(59, 2))
    for uri in (f"csv:{csv_path}", f"npy:{npy_path}"):
        with open_source(uri, batch_size=8) as src:
            batches = all_batches(src)
        full = np.concatenate([b.x for b in batches])
        for k, batch in enumerate(batches):
            position = json.loads(json.dumps(batch.position))  # survives a JSON checkpoint
            with open_source(uri, batch_size=8, position=position) as resumed:
                rest = [b.x for b in resumed]
            done = sum(len(b) for b in batches[: k + 1])
            got = np.concatenate(rest) if rest else np.empty((0, 2), np.float32)
            np.testing.assert_array_equal(got, full[done:])


def test_jsonl_position_round_trip_inside_multi_sample_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    lines, k = [], 0
    for n in (1, 5, 2, 9, 1, 3):
        lines.append(json.dumps({"x": [[k + i, 0] for i in range(n)], "y": list(range(n))}))
        k += n
    path.write_text("\n".join(lines) + "\n")
    with open_source(str(path), batch_size=4) as src:
        batches = all_batches(src)
    assert [len(b) for b in batches] == [4, 4, 4, 4, 4, 1]
    for i, batch in enumerate(batches):
        with open_source(str(path), batch_size=4, position=batch.position) as resumed:
            rest = [b.x[:, 0] for b in resumed]
        start = 4 * (i + 1)
        assert (np.concatenate(rest).tolist() if rest else []) == list(range(start, k))


def test_a_position_for_another_file_restarts_from_the_beginning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "d.csv"
    write_csv(path, [f"{i},{i},0" for i in range(20)])
    with open_source(str(path), batch_size=5) as src:
        position = src.read().position
    write_csv(path, [f"{i + 100},{i},0" for i in range(20)], header="a,b,label")  # other content, same path
    with caplog.at_level(logging.WARNING), open_source(str(path), batch_size=50, position=position) as src:
        assert src.read().x[0, 0] == 100
    assert "not the file the saved position was taken in" in caplog.text


def test_source_position_moves_past_trailing_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    write_csv(path, ["1,1,0", "2,2,0", "oops", "oops"])
    with open_source(str(path), batch_size=2) as src:
        all_batches(src)
        position = src.position
    with open_source(str(path), batch_size=2, position=position) as src:
        assert all_batches(src) == [] and src.counters.get("rejected:columns", 0) == 0


# -- JSON Lines -----------------------------------------------------------------------------------------
def test_jsonl_formats_and_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(
            [
                '{"x": [1, 2], "y": 0}',
                "[3, 4]",
                '{"x": [[5, 6], [7, 8]], "y": [1, 1]}',
                "not json",
                '{"x": [1, 2, 3]}',
                '{"x": [1, NaN]}',
                '{"z": 1}',
                '{"x": [9, 10], "y": "a"}',
                "",
                '{"x": [11, 12], "y": 2}',
            ]
        )
    )  # no final newline: the last line of a finished file still counts
    with open_source(f"jsonl:{path}", batch_size=16) as src:
        batches = all_batches(src)
        counters = dict(src.counters)
    assert [(b.x.tolist(), None if b.y is None else b.y.tolist()) for b in batches] == [
        ([[1, 2]], [0]),
        ([[3, 4]], None),
        ([[5, 6], [7, 8], [11, 12]], [1, 1, 2]),
    ]
    assert {k: v for k, v in counters.items() if k.startswith("rejected")} == {
        "rejected:json": 1,
        "rejected:shape": 1,
        "rejected:nonfinite": 1,
        "rejected:schema": 1,
        "rejected:label": 1,
    }


# -- numpy files --------------------------------------------------------------------------------------
def test_npy_is_memory_mapped_converted_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "d.npy"
    x = np.arange(40, dtype=np.int16).reshape(10, 2, 2).astype(np.float64)
    x[3, 1, 1] = np.nan
    np.save(path, x)
    with open_source(f"npy:{path}", batch_size=4) as src:
        assert src.size_hint == 10
        batches = all_batches(src)
        counters = dict(src.counters)
    got = np.concatenate([b.x for b in batches])
    assert got.dtype == np.float32 and got.shape == (9, 2, 2)
    np.testing.assert_array_equal(got, np.delete(x, 3, axis=0).astype(np.float32))
    assert counters["rejected:nonfinite"] == 1
    assert batches[-1].position == {"path": str(path), "row": 10}


def test_npz_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.ones((3, 2)), y=np.array([1, 2, 3]))
    np.savez(tmp_path / "b.npz", data=np.zeros((2, 2)))
    np.savez(tmp_path / "c.npz", feats=np.zeros((2, 2)), labels=np.arange(2))
    with open_source(str(tmp_path / "a.npz"), batch_size=8) as src:
        assert src.read().y.tolist() == [1, 2, 3]
    with open_source(str(tmp_path / "b.npz"), batch_size=8) as src:
        b = src.read()
        assert b.x.shape == (2, 2) and b.y is None
    with open_source(str(tmp_path / "c.npz"), batch_size=8, x_key="feats", y_key="labels") as src:
        assert src.read().y.tolist() == [0, 1]
    with pytest.raises(ValueError, match="no array 'x'"):
        open_source(str(tmp_path / "c.npz"))
    with pytest.raises(ValueError, match="cannot be followed"):
        open_source(str(tmp_path / "a.npz"), follow=True)


def test_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "o.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError):
        open_source(str(path))


# -- globs and directories ----------------------------------------------------------------------------
def test_glob_reads_files_in_name_order_and_skips_bad_later_files(tmp_path: Path) -> None:
    for name, start in (("p2.npy", 10), ("p1.npy", 0), ("p3.npy", 20)):
        np.save(tmp_path / name, np.arange(start, start + 4, dtype=np.float32)[:, None])
    (tmp_path / "p25.npy").write_bytes(b"not a numpy file")
    with open_source(f"npy:{tmp_path}/p*.npy", batch_size=3) as src:
        batches = all_batches(src)
        counters = dict(src.counters)
    assert [b.x[:, 0].tolist() for b in batches] == [[0, 1, 2], [3], [10, 11, 12], [13], [20, 21, 22], [23]]
    assert counters["rejected:file"] == 1
    with open_source(f"npy:{tmp_path}/p*.npy", batch_size=3, position=batches[3].position) as src:
        assert np.concatenate([b.x for b in src])[:, 0].tolist() == [20, 21, 22, 23]


def test_directory_of_csv_files(tmp_path: Path) -> None:
    write_csv(tmp_path / "2.csv", ["3,3,1"])
    write_csv(tmp_path / "1.csv", ["1,1,0", "2,2,0"])
    (tmp_path / "notes.txt").write_text("ignored")
    with open_source(f"csv:{tmp_path}", batch_size=10) as src:
        batches = all_batches(src)
    assert [b.x[:, 0].tolist() for b in batches] == [[1, 2], [3]]


def test_line_cursor_resume_and_offsets(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"ab\ncd\r\nef")
    with LineCursor(str(path)) as cur:
        lines, first = cur.read_lines(2)
        assert (lines, first) == ([b"ab", b"cd\r"], 1)
        assert cur.line_offsets(lines) == [3, 7]
        position = cur.position()
    with LineCursor(str(path), position=position) as cur:
        lines, first = cur.read_lines(10)
        assert (lines, first, cur.line_offsets(lines), cur.at_end) == ([b"ef"], 3, [9], True)


# -- JSON Lines sink ----------------------------------------------------------------------------------
def test_jsonl_sink_records(tmp_path: Path) -> None:
    path = tmp_path / "out" / "scores.jsonl"
    with open_sink(f"jsonl:{path}") as sink:
        batch = Batch(np.zeros((3, 2), np.float32), y=np.array([1, 0, 1]), position={"row": 3})
        sink.write(batch, np.array([0.1, np.nan, 2.0]), {"loss": np.array([1.0, 2.0, 3.0]), "events": ["plateau"]})
        sink.write(Batch(np.zeros((1, 2), np.float32)), [5.0])
        with pytest.raises(ValueError):
            sink.write(batch, np.array([1.0]))
        with pytest.raises(ValueError):
            sink.write(batch, np.zeros(3), {"score": np.zeros(3)})
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records == [
        {"seq": 0, "score": 0.1, "y": 1, "loss": 1.0},
        {"seq": 1, "score": None, "y": 0, "loss": 2.0},
        {"seq": 2, "score": 2.0, "y": 1, "loss": 3.0, "events": ["plateau"]},
        {"seq": 3, "score": 5.0},
    ]
    with pytest.raises(ValueError):
        sink.write(batch, np.zeros(3))


def test_jsonl_sink_to_stdout(capfdbinary: pytest.CaptureFixture) -> None:
    with JsonlSink("-") as sink:
        sink.write(Batch(np.zeros((1, 1), np.float32)), [1.5])
    assert capfdbinary.readouterr().out == b'{"seq":0,"score":1.5}\n'


def test_lines_too_long_to_hold_are_skipped_and_positions_stay_exact(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    long = json.dumps({"x": [1.0] * 50})
    path.write_text("\n".join(['{"x": [1, 0]}', long, '{"x": [[2, 0], [3, 0], [4, 0]]}', long, '{"x": [5, 0]}']) + "\n")
    with open_source(str(path), batch_size=2, max_line_bytes=64) as src:
        batches = all_batches(src)
        assert src.counters["rejected:too_large"] == 2
    assert np.concatenate([b.x for b in batches])[:, 0].tolist() == [1, 2, 3, 4, 5]
    for k, batch in enumerate(batches):
        with open_source(str(path), batch_size=2, max_line_bytes=64, position=batch.position) as src:
            rest = [b.x[:, 0] for b in src]
        done = sum(len(b) for b in batches[: k + 1])
        assert (np.concatenate(rest).tolist() if rest else []) == [1, 2, 3, 4, 5][done:]


@pytest.mark.parametrize(
    "y",
    [None, np.arange(4), np.array([0.5, np.nan, 1e300, -2.0]), np.array([True, False, True, False]), np.arange(4.0)],
)
@pytest.mark.parametrize(
    "extra",
    [
        None,
        {"sample": np.arange(10, 14, dtype=np.int64)},  # what the service adds
        {"sample": np.arange(4, dtype=np.uint32), "events": [{"type": "plateau", "at": np.float32(0.5)}]},
        {"loss": np.array([1.5, np.nan, 2.0, 3.0], np.float32), 'a "%s" key': np.ones(4, bool), "n": 3},
        {"rows": np.zeros((4, 2))},  # not one number per sample: encoded record by record
        {"names": np.array(["a", "b", "c", "d"])},
        {1: np.arange(4), "1": np.ones(4)},  # one name twice: the last value, as json.dumps keeps it
        {"m": np.ma.masked_array([1.0, 2.0, 3.0, 4.0], mask=[0, 1, 0, 0])},
    ],
)
def test_jsonl_sink_fast_path_writes_what_json_would(tmp_path: Path, y, extra) -> None:
    from connectors.records import sample_records

    batch = Batch(np.zeros((4, 1), np.float32), y=y)
    scores = np.array([0.1, np.nan, np.inf, -5e-320])
    with JsonlSink(str(tmp_path / "s.jsonl")) as sink:
        sink.write(batch, scores, extra)
        sink.write(batch, scores, extra)
    records = sample_records(batch, scores, extra) + sample_records(batch, scores, extra, first_seq=4)
    expected = "".join(json.dumps(r, separators=(",", ":"), allow_nan=False) + "\n" for r in records)
    assert (tmp_path / "s.jsonl").read_text() == expected
