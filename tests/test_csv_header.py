"""CSV files with and without a header row: no row is lost to a header that is not there."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from connectors.csv_source import CsvSource
from connectors.registry import open_source


def read_all(src) -> tuple[np.ndarray, np.ndarray | None]:
    xs, ys = [], []
    for batch in src:
        xs.append(batch.x)
        ys.append(batch.y)
    return np.concatenate(xs), None if ys[0] is None else np.concatenate(ys)


def write_rows(path: Path, n: int, header: str | None = None, start: int = 0) -> None:
    rows = "".join(f"{i},{i * 0.5},{i % 3}\n" for i in range(start, start + n))
    path.write_text(("" if header is None else header + "\n") + rows)


def test_a_headerless_file_loses_no_row_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "bare.csv"
    write_rows(path, 500)
    with caplog.at_level(logging.INFO, logger="connectors"), \
            open_source(f"csv:{path}", batch_size=64, max_latency_ms=0) as src:
        x, y = read_all(src)
        counters = src.counters
    assert x.shape == (500, 3) and y is None  # no column is named "label"
    assert x[:, 0].tolist() == list(range(500))
    assert counters["samples"] == 500 and not any(k.startswith("rejected:") for k in counters)
    told = [r.getMessage() for r in caplog.records if "no header row" in r.getMessage()]
    assert len(told) == 1 and "numbered 0 to 2" in told[0]


def test_numbered_columns_select_features_and_the_label(tmp_path: Path) -> None:
    path = tmp_path / "bare.csv"
    write_rows(path, 20)
    with CsvSource(str(path), label="2", columns=["1"], batch_size=64, max_latency_ms=0) as src:
        x, y = read_all(src)
    assert x[:, 0].tolist() == [i * 0.5 for i in range(20)] and y.tolist() == [i % 3 for i in range(20)]


def test_a_header_keeps_its_meaning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "named.csv"
    write_rows(path, 50, header="a,b,label")
    with caplog.at_level(logging.INFO, logger="connectors"), \
            CsvSource(str(path), batch_size=64, max_latency_ms=0) as src:
        x, y = read_all(src)
    assert x.shape == (50, 2) and y.tolist() == [i % 3 for i in range(50)]
    assert not [r for r in caplog.records if "no header row" in r.getMessage()]


def test_an_explicit_header_option_overrides_the_guess(tmp_path: Path) -> None:
    numeric_names = tmp_path / "years.csv"
    write_rows(numeric_names, 10, header="2023,2024,2025")
    with CsvSource(str(numeric_names), header=True, columns=["2023", "2024"], batch_size=64) as src:
        x, _ = read_all(src)
    assert x.shape == (10, 2) and x[0, 0] == 0.0  # the first row named the columns

    words_first = tmp_path / "words.csv"
    write_rows(words_first, 10, header="a,b,c")
    with CsvSource(str(words_first), header=False, batch_size=64) as src:
        x, _ = read_all(src)
        assert src.counters["rejected:parse"] == 1  # the row of words is data that is not numbers
    assert x.shape == (10, 3)

    with pytest.raises(ValueError, match="header must be"):
        CsvSource(str(words_first), header="maybe")


def test_a_headerless_file_resumes_where_it_stopped(tmp_path: Path) -> None:
    path = tmp_path / "bare.csv"
    write_rows(path, 100)
    with CsvSource(str(path), batch_size=30, max_latency_ms=0) as src:
        first = src.read()
        position = src.position
    with CsvSource(str(path), batch_size=30, max_latency_ms=0, position=position) as src:
        rest, _ = read_all(src)
    assert first.x[:, 0].tolist() + rest[:, 0].tolist() == list(range(100))


def test_each_file_of_a_directory_is_judged_by_its_own_first_row(tmp_path: Path) -> None:
    write_rows(tmp_path / "a.csv", 10, header="x,y,z")
    write_rows(tmp_path / "b.csv", 10, start=10)
    with open_source(f"csv:{tmp_path}", batch_size=64, max_latency_ms=0) as src:
        x, _ = read_all(src)
    assert x[:, 0].tolist() == list(range(20))
