"""The service loop in-process on real files: sink records, events, metrics, inspect, errors while learning."""

from __future__ import annotations

import json

import numpy as np
import pytest
from service_support import digits

from streammas.cli import main
from streammas.config import validate
from streammas.service import Service
from streammas.tools.inspect import render, summarize


def _config(tmp_path, **sections):
    raw = {
        "source": {"uri": f"npy:{tmp_path / 'x.npy'}", "batch_size": 32},
        # the defaults: no regulariser, the importance measured all the same and shown by inspect
        "learner": {"consolidate_at": "plateau",
                    "plateau": {"window": 10, "patience": 10, "progress_steps": 20}},
        "state": {"dir": str(tmp_path / "state"), "every_samples": 2000},
        "log": {"status_every_seconds": 0.0},
    }
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return validate(raw)


def test_file_source_to_sink_with_events_metrics_and_inspect(tmp_path, capsys):
    np.save(tmp_path / "x.npy", digits(6400))
    cfg = _config(tmp_path, sink={"uri": f"jsonl:{tmp_path / 'scores.jsonl'}"}, metrics={"every_batches": 5})
    service = Service(cfg, handle_signals=False)
    assert service.run() == 0
    learner = service.learner
    assert learner.samples_seen == 6400 and learner.consolidations >= 1

    records = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(records) == 6400
    assert [r["sample"] for r in records] == list(range(6400))
    assert all(r["score"] is not None and r["score"] >= 0 for r in records)
    events = [e for r in records for e in r.get("events", [])]
    assert any(e["kind"] == "consolidation" for e in events)

    text = service.metrics.render()
    assert "streammas_samples_total 6400.0" in text
    assert f"streammas_consolidations_total {float(learner.consolidations)}" in text
    assert 'streammas_importance{param="all",stat="max"}' in text
    assert "streammas_checkpoints_total" in text
    assert "streammas_recoveries_total 0.0" in text

    summary = summarize(tmp_path / "state")
    assert summary["samples_seen"] == 6400 and summary["consolidations"] == learner.consolidations
    assert summary["source"]["position"]["row"] == 6400
    assert any(e["kind"] == "consolidation" for e in summary["plateau_history"])
    weight = summary["importance"]["encoder.0.weight"]
    assert weight["shape"] == [128, 64] and weight["max"] > 0
    shown = render(summary)
    assert "consolidations  " in shown and "encoder.0.weight" in shown and "plateau history" in shown

    assert main(["inspect", str(tmp_path / "state"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples_seen"] == 6400

    # A second run over the same file learns nothing more: the position says it is all learned.
    again = Service(cfg, handle_signals=False)
    assert again.run() == 0
    assert again.learner.samples_seen == 6400 and again.resumed_from is not None


def test_inspect_reports_errors(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["inspect", str(tmp_path)]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err
    (tmp_path / "ckpt-00000001.pt").write_bytes(b"junk")
    assert main(["inspect", str(tmp_path)]) == 2
    assert "no valid checkpoint" in capsys.readouterr().err


FLAKY_MODEL = '''
import torch
from torch import nn


class Picky(nn.Module):
    """Fails on any batch whose first feature is negative (a bug in a user's model, say)."""

    def __init__(self, n):
        super().__init__()
        self.net = nn.Linear(n, n)

    def forward(self, x):
        if bool((x[:, 0] < 0).any()):
            raise RuntimeError("negative input")
        return self.net(x)


def make(shape):
    return Picky(shape[0])
'''


@pytest.mark.parametrize("all_bad", [False, True])
def test_a_failing_batch_is_counted_and_the_service_goes_on(tmp_path, monkeypatch, all_bad):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "picky_model.py").write_text(FLAKY_MODEL)
    x = np.random.default_rng(0).random((3200 if all_bad else 640, 4), dtype=np.float32)
    if all_bad:
        x[:, 0] = -1.0
    else:
        x[64:96, 0] = -1.0  # exactly one batch of 32
    np.save(tmp_path / "x.npy", x)
    # the raw input: standardised, the marked feature would be negative in every batch (or in none)
    cfg = _config(tmp_path, model={"factory": "picky_model:make"}, learner={"scale_inputs": "none"})
    service = Service(cfg, handle_signals=False)
    code = service.run()
    if all_bad:
        assert code == 1 and "in a row failed" in service.stop_reason
    else:
        assert code == 0
        assert service.learner.samples_seen == 640 - 32
        assert service.rejected()["learner_error"] == 32


def test_progress_bar_and_json_logs(tmp_path, capsys):
    np.save(tmp_path / "x.npy", digits(300))
    config = tmp_path / "c.toml"
    config.write_text(f'[source]\nuri = "npy:{tmp_path / "x.npy"}"\n[state]\ndir = "{tmp_path / "state"}"\n'
                      '[log]\nprogress = "always"\nformat = "json"\n')
    assert main(["run", "-c", str(config)]) == 0
    err = capsys.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert {"model", "checkpoint", "stopped"} <= {r.get("event") for r in lines}
    assert "300/300" in err  # the bar, sized from the file
