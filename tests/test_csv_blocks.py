"""A CSV file read to its end is parsed in blocks of rows (one call of numpy's parser for many batches): the
samples, their order, every batch's position and every reject's count are those of reading a batch at a time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from connectors.csv_source import BLOCK_ROWS, CsvSource
from connectors.lines import LineCursor

ROWS = 3 * BLOCK_ROWS + 77  # several blocks and a partial one


def _write(path: Path, bad_every: dict[int, str] | None = None) -> list[int]:
    """Rows ``i, 2i, i % 3`` (features a, b; label); the rows in ``bad_every`` replaced by bad text. Returns the
    ids of the good rows, in file order."""
    bad_every = bad_every or {}
    good = []
    with open(path, "w") as f:
        f.write("a,b,label\n")
        for i in range(ROWS):
            if i in bad_every:
                f.write(bad_every[i] + "\n")
            else:
                f.write(f"{i},{2 * i},{i % 3}\n")
                good.append(i)
    return good


def _batches(path: Path, **options) -> list:
    with CsvSource(str(path), **options) as src:
        return list(src)


@pytest.mark.parametrize("batch_size", [1, 7, 32, BLOCK_ROWS + 3])
def test_a_clean_file_gives_every_row_once_in_order_and_each_batch_resumes_exactly(tmp_path, batch_size):
    path = tmp_path / "clean.csv"
    good = _write(path)
    batches = _batches(path, batch_size=batch_size)
    assert all(len(b) <= batch_size for b in batches)
    ids = np.concatenate([b.x[:, 0] for b in batches]).astype(int).tolist()
    assert ids == good
    assert np.concatenate([b.y for b in batches]).tolist() == [i % 3 for i in good]
    done = 0
    for batch in batches[:: max(1, len(batches) // 12)] + batches[-1:]:
        done = ids.index(int(batch.x[-1, 0])) + 1
        position = json.loads(json.dumps(batch.position))  # as a checkpoint keeps it
        with CsvSource(str(path), batch_size=batch_size, position=position) as resumed:
            rest = [int(v) for b in resumed for v in b.x[:, 0]]
        assert rest == ids[done:]


def test_bad_rows_anywhere_are_counted_once_and_never_after_the_batch_that_passes_them(tmp_path):
    bad = {5: "5,oops,1", BLOCK_ROWS - 1: "1,2", BLOCK_ROWS + 40: "nan,1,0", 2 * BLOCK_ROWS + 2: "x,y,z",
           2 * BLOCK_ROWS + 3: "", ROWS - 1: "3,4,1.5"}
    path = tmp_path / "dirty.csv"
    good = _write(path, bad)
    line_of = {i: i + 2 for i in range(ROWS)}  # the header is line 1
    rejected_lines = sorted(line_of[i] for i, text in bad.items() if text)  # a blank line is no row
    with CsvSource(str(path), batch_size=16) as src:
        ids = []
        for batch in src:
            ids += [int(v) for v in batch.x[:, 0]]
            counted = sum(n for k, n in src.counters.items() if k.startswith("rejected:"))
            passed = sum(1 for line in rejected_lines if line <= batch.position["line"])
            # what a checkpoint taken now records: every reject before the position, none after it
            assert counted == passed, (batch.position, counted, passed)
        counters = src.counters
    assert ids == good
    assert counters["rejected:parse"] == 2 and counters["rejected:columns"] == 1
    assert counters["rejected:nonfinite"] == 1 and counters["rejected:label"] == 1


def test_a_block_is_no_faster_path_to_different_numbers(tmp_path):
    """The block and the row-at-a-time parse give the same float32 values, decimals and exponents included."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(ROWS, 2)) * 10.0 ** rng.integers(-8, 8, size=(ROWS, 2))
    path = tmp_path / "floats.csv"
    np.savetxt(path, values, delimiter=",", header="a,b", comments="", fmt="%.9g")
    blocks = np.concatenate([b.x for b in _batches(path, batch_size=32)])
    one_by_one = np.concatenate([b.x for b in _batches(path, batch_size=1)])
    np.testing.assert_array_equal(blocks, one_by_one)
    np.testing.assert_array_equal(blocks, np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float32))


def test_the_cursor_rewinds_to_a_line_it_returned(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(1, 2001)))
    with LineCursor(str(path), read_size=256) as cur:  # the block spans several refills of the buffer
        lines, first = cur.read_lines(1500)
        ends = cur.line_offsets(lines)
        cur.rewind(ends[9], first + 9)
        assert cur.position()["line"] == 10 and cur.position()["offset"] == ends[9]
        again, first_again = cur.read_lines(3)
        assert (again, first_again) == ([b"line 11", b"line 12", b"line 13"], 11)
        position = cur.position()
        with pytest.raises(ValueError, match="not read"):
            cur.rewind(path.stat().st_size + 10, 5000)
    with LineCursor(str(path), position=position) as resumed:  # the position after a rewind resumes too
        assert resumed.read_lines(1) == ([b"line 14"], 14)


def test_a_line_too_long_inside_a_block_is_counted_once_when_its_batch_passes_it(tmp_path):
    path = tmp_path / "long.csv"
    good = _write(path, {100: "1," + "9" * 300 + ",0"})
    with CsvSource(str(path), batch_size=8, max_line_bytes=64) as src:
        ids = []
        for batch in src:
            ids += [int(v) for v in batch.x[:, 0]]
            counted = src.counters.get("rejected:too_large", 0)
            assert counted == (1 if batch.position["line"] >= 102 else 0), batch.position  # file line 102
        assert ids == good and src.counters["rejected:too_large"] == 1
