"""`streammas bench ingest` on a tiny configuration: it runs and reports what it promises."""

from __future__ import annotations

import json

import pytest

from streammas.tools.bench import ingest


def test_ingest_benchmark_json(capsys: pytest.CaptureFixture) -> None:
    argv = [
        "--repeats",
        "3",
        "--messages",
        "20",
        "--warmup",
        "5",
        "--features",
        "32",
        "--per-message",
        "16",
        "--batch-size",
        "16",
        "--csv-rows",
        "40",
        "--npy-rows",
        "200",
        "--no-brokers",
        "--json",
    ]
    assert ingest.main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    rates = result["zmq"]["samples_per_s"]
    assert set(rates) == {"bare_copy", "bare_zerocopy", "zmq_source", "zmq_source_unchecked"}
    assert all(r > 0 for r in rates.values())
    assert result["zmq"]["ratio"] == pytest.approx(rates["zmq_source"] / rates["bare_copy"])
    # the target judged on each round's own ratio, the rounds' spread shown
    runs = result["zmq"]["runs"]
    paired = sorted(a["samples_per_s"] / b["samples_per_s"] for a, b in zip(runs["zmq_source"], runs["bare_copy"]))
    assert result["zmq"]["paired_ratios"] == pytest.approx(paired) and len(paired) == 3
    assert result["zmq"]["verdict"] == ingest.judge(paired, ingest.TARGET)
    assert set(result["files"]) == {"csv_32", "npy_32", "csv_16", "npy_16"}
    assert all(r["rows_per_s"] > 0 for r in result["files"].values())


def test_ingest_benchmark_table(capsys: pytest.CaptureFixture) -> None:
    argv = [
        "--repeats",
        "1",
        "--messages",
        "10",
        "--warmup",
        "2",
        "--features",
        "8",
        "--per-message",
        "4",
        "--no-files",
        "--no-brokers",
    ]
    assert ingest.main(argv) == 0
    out = capsys.readouterr().out
    assert "ZmqSource / bare loop" in out and "samples/s" in out


def test_ingest_benchmark_brokers(capsys: pytest.CaptureFixture, redis_server, mosquitto) -> None:
    """The brokers' section, on the redis-server and mosquitto the machine has (the fixtures skip without them)."""
    argv = ["--repeats", "1", "--messages", "5", "--warmup", "1", "--features", "8", "--per-message", "4",
            "--no-files", "--broker-messages", "30", "--broker-per-message", "4", "--broker-batch", "8", "--json"]
    assert ingest.main(argv) == 0
    brokers = json.loads(capsys.readouterr().out)["brokers"]
    assert set(brokers) == {"redis", "mqtt"}
    for result in brokers.values():
        rates = result["samples_per_s"]
        assert rates["bare"] > 0 and rates["source"] > 0
        assert result["ratio"] == pytest.approx(rates["source"] / rates["bare"])
