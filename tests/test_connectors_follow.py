"""Following files like ``tail -F``: appends, partial lines, rotation, truncation, rewrites in place (the size
alone cannot tell them from an append), later files of a glob."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from test_connectors_files import read_n, write_csv

from connectors.lines import HEAD_BYTES, LineCursor
from connectors.registry import open_source


def rewrite_in_place(path: Path, text: str) -> None:
    """Truncate and write the new content in one system call: a reader never sees it half written."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def rows(ids, header: str | None = "id,a,label") -> str:
    return "".join([f"{header}\n" if header else ""] + [f"{i},{i % 7},0\n" for i in ids])


def test_follow_picks_up_appends_partial_lines_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "live.csv"
    write_csv(path, ["1,1,0", "2,2,0"])
    with open_source(str(path), batch_size=100, max_latency_ms=1, follow=True, poll_interval=0.01) as src:
        x, _ = read_n(src, 2)
        assert x[:, 0].tolist() == [1, 2]
        assert src.read(timeout=0.05) is None and not src.finished

        write_csv(path, ["3,3,1"], header=None, mode="a")
        with open(path, "a") as f:
            f.write("4,4")  # a writer mid-line: not a row yet
        assert read_n(src, 1)[0][:, 0].tolist() == [3]
        assert src.read(timeout=0.05) is None
        with open(path, "a") as f:
            f.write(",1\n")
        assert read_n(src, 1)[0][:, 0].tolist() == [4]

        # Rotation: the old file is renamed and still written to once, then a new file appears.
        os.rename(path, tmp_path / "live.csv.1")
        write_csv(tmp_path / "live.csv.1", ["5,5,0"], header=None, mode="a")
        with open(tmp_path / "live.csv.1", "a") as f:
            f.write("6,6,0")  # unterminated tail of a rotated file: still a row
        write_csv(path, ["7,7,1", "8,8,1"], header="a,b,label")
        assert read_n(src, 4)[0][:, 0].tolist() == [5, 6, 7, 8]

        # Truncation (copytruncate): start again from the top of the same file.
        with open(path, "w") as f:
            f.write("a,b,label\n9,9,0\n")
        assert read_n(src, 1)[0][:, 0].tolist() == [9]
        position = src.position
    # Resume after all of it: nothing again, then what is appended.
    write_csv(path, ["10,10,0"], header=None, mode="a")
    with open_source(str(path), batch_size=100, max_latency_ms=1, follow=True, position=position) as src:
        assert read_n(src, 1)[0][:, 0].tolist() == [10]


def test_follow_waits_for_the_file_and_for_later_files_of_a_glob(tmp_path: Path) -> None:
    with open_source(
        f"jsonl:{tmp_path}/*.jsonl", batch_size=10, max_latency_ms=1, follow=True, poll_interval=0.01
    ) as src:
        assert src.read(timeout=0.05) is None
        (tmp_path / "a.jsonl").write_text('{"x": [1]}\n')
        assert read_n(src, 1)[0].tolist() == [[1]]
        (tmp_path / "b.jsonl").write_text('{"x": [2]}\n{"x": [3]}\n')
        assert read_n(src, 2)[0].tolist() == [[2], [3]]
        assert src.position["path"].endswith("b.jsonl")


def test_follow_finishes_a_file_with_an_unterminated_line_before_the_next(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text('{"x": [1]}\n{"x": [2]}')
    with open_source(
        f"jsonl:{tmp_path}/*.jsonl", batch_size=10, max_latency_ms=1, follow=True, poll_interval=0.01
    ) as src:
        assert read_n(src, 1)[0].tolist() == [[1]]
        (tmp_path / "b.jsonl").write_text('{"x": [3]}\n')
        assert read_n(src, 2)[0].tolist() == [[2], [3]]


def _follow(path: Path, **options):
    return open_source(str(path), batch_size=64, max_latency_ms=1, follow=True, poll_interval=0.01, **options)


def test_a_file_rewritten_longer_in_place_is_read_again_from_its_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "live.csv"
    path.write_text(rows(range(50)))
    with caplog.at_level(logging.WARNING), _follow(path) as src:
        assert read_n(src, 50)[0][:, 0].tolist() == list(range(50))
        assert src.read(timeout=0.05) is None  # at the end: waiting for more
        rewrite_in_place(path, rows(range(1000, 1300)))  # bigger than before: not a truncation by size
        assert read_n(src, 300)[0][:, 0].tolist() == list(range(1000, 1300))
        assert src.read(timeout=0.05) is None
    assert "was rewritten" in caplog.text


def test_a_rewrite_that_keeps_the_first_bytes_is_noticed_by_the_last_bytes_read(tmp_path: Path) -> None:
    path = tmp_path / "live.csv"
    kept = rows(range(300))
    assert len(kept) > HEAD_BYTES
    path.write_text(rows(range(600)))
    with _follow(path) as src:
        read_n(src, 600)
        # The same first 300 rows (more than HEAD_BYTES), then others: only the end of what was read differs.
        rewrite_in_place(path, kept + rows(range(5000, 5400), header=None))
        x, _ = read_n(src, 700)
        assert x[:, 0].tolist() == list(range(300)) + list(range(5000, 5400))


def test_a_rewrite_with_the_same_content_and_more_is_an_append(tmp_path: Path) -> None:
    path = tmp_path / "live.csv"
    path.write_text(rows(range(50)))
    with _follow(path) as src:
        read_n(src, 50)
        rewrite_in_place(path, rows(range(70)))  # e.g. a tool that saves the whole file again, grown
        assert read_n(src, 20)[0][:, 0].tolist() == list(range(50, 70))
        assert src.read(timeout=0.1) is None


def test_a_cursor_notices_a_rewrite_between_two_reads_in_the_middle_of_a_file(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"".join(b"old %d\n" % i for i in range(10)))
    with LineCursor(str(path), follow=True, read_size=16) as cur:
        lines, first = cur.read_lines(2)  # only part of the file is read yet
        assert (lines, first) == ([b"old 0", b"old 1"], 1)
        rewrite_in_place(path, "".join(f"new {i}\n" for i in range(40)))
        got: list[bytes] = []
        for _ in range(100):  # a bounded number of reads: a cursor that stalls fails, it does not hang
            got += cur.read_lines(100)[0]
        # The old file's unread rest is not mixed in, and no line of the new content is skipped.
        assert got == [b"new %d" % i for i in range(40)]
        assert cur.generation == 2
