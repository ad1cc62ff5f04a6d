"""Checkpoints: atomic writes, rotation, verification, corrupt files reported and skipped, one writer."""

from __future__ import annotations

import os

import pytest
import torch

from streammas import OnlineMAS
from streammas.models import MLPAutoencoder
from streammas.service.checkpoint import (
    CheckpointStore,
    CorruptCheckpoint,
    StateDirLocked,
    content_digest,
    read_checkpoint,
)


def _learner(seed: int = 0) -> OnlineMAS:
    torch.manual_seed(seed)
    return OnlineMAS(MLPAutoencoder(in_features=6, hidden=(8,), latent=3), lr=0.05, consolidate_at="plateau",
                     plateau={"window": 5, "patience": 3, "progress_steps": 5})


def _train(learner: OnlineMAS, steps: int, seed: int = 1) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        out.append(float(learner.learn_many(torch.rand(8, 6, generator=g)).sum()))
    return out


def test_round_trip_restores_a_learner_that_continues_identically(tmp_path):
    learner = _learner()
    _train(learner, 300)
    assert learner.consolidations >= 1
    store = CheckpointStore(tmp_path)
    saved = store.save(learner.state_dict(), {"samples_seen": learner.samples_seen, "source": {"position": {"row": 7}}})
    loaded = CheckpointStore(tmp_path).load_latest()
    assert loaded.path == saved.path and loaded.meta["source"]["position"] == {"row": 7}
    twin = _learner(seed=99)
    twin.load_state_dict(loaded.learner)
    assert twin.samples_seen == learner.samples_seen and twin.consolidations == learner.consolidations
    for name, omega in learner.importance.items():
        assert torch.equal(twin.importance[name], omega)
    assert _train(twin, 50, seed=5) == _train(learner, 50, seed=5)


def test_rotation_keeps_the_last_few(tmp_path):
    store = CheckpointStore(tmp_path, keep=3)
    for i in range(6):
        store.save({"i": torch.tensor(i)}, {"i": i})
    assert [p.name for p in store.paths()] == ["ckpt-00000004.pt", "ckpt-00000005.pt", "ckpt-00000006.pt"]
    assert int(store.load_latest().learner["i"]) == 5
    # Numbering continues across instances.
    assert CheckpointStore(tmp_path, keep=3).save({}, {}).seq == 7


@pytest.mark.parametrize("damage", ["flip_middle", "flip_tensor", "truncate", "empty", "garbage"])
def test_corrupt_newest_is_reported_and_skipped(tmp_path, damage, caplog):
    store = CheckpointStore(tmp_path, keep=5)
    store.save({"w": torch.arange(1000, dtype=torch.float32)}, {"n": 1})
    newest = store.save({"w": torch.arange(1000, dtype=torch.float32) * 2}, {"n": 2}).path
    data = bytearray(newest.read_bytes())
    if damage == "flip_middle":
        data[len(data) // 2] ^= 0x01
    elif damage == "flip_tensor":  # a byte inside the tensor's storage, which torch.load does not check
        raw = (torch.arange(1000, dtype=torch.float32) * 2).numpy().tobytes()
        at = bytes(data).find(raw[400:420])
        assert at > 0
        data[at] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "empty":
        data = bytearray()
    else:
        data = bytearray(b"\x00garbage" * 50)
    newest.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint):
        read_checkpoint(newest)
    report = store.load_report(quarantine=True)
    assert report.checkpoint is not None and report.checkpoint.meta == {"n": 1}
    assert [p for p, _ in report.corrupt] == [newest]
    assert "is corrupt" in caplog.text
    assert not newest.exists() and newest.with_name(newest.name + ".corrupt").exists()
    # The quarantined file's number is never reused.
    assert store.save({}, {}).seq == 3


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save({"v": torch.tensor(1)}, {})

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save({"v": torch.tensor(2)}, {})
    monkeypatch.undo()
    assert [p.name for p in store.paths()] == ["ckpt-00000001.pt"]
    assert list(tmp_path.glob("*.tmp")) == []
    assert int(store.load_latest().learner["v"]) == 1


def test_leftover_temporary_files_are_removed(tmp_path):
    store = CheckpointStore(tmp_path)
    (tmp_path / "ckpt-00000009.pt.tmp").write_bytes(b"half a file")
    assert [p.name for p in store.remove_temporary()] == ["ckpt-00000009.pt.tmp"]
    assert store.load_latest() is None


def test_one_writer_per_directory(tmp_path):
    first = CheckpointStore(tmp_path)
    first.lock()
    with pytest.raises(StateDirLocked, match=f"in use by pid {os.getpid()}"):
        CheckpointStore(tmp_path).lock()
    first.unlock()
    again = CheckpointStore(tmp_path)
    again.lock()
    again.unlock()


def test_digest_covers_values_types_and_structure():
    base = {"a": torch.zeros(3), "b": [1, 2.0, "x", None, True], "c": {"d": (1, 2)}}
    same = {"c": {"d": (1, 2)}, "b": [1, 2.0, "x", None, True], "a": torch.zeros(3)}
    assert content_digest(base) == content_digest(same)
    for other in ({**base, "a": torch.zeros(3, dtype=torch.float64)}, {**base, "a": torch.zeros(1, 3)},
                  {**base, "b": [1.0, 2.0, "x", None, True]}, {**base, "c": {"d": [1, 2]}},
                  {**base, "b": [1, 2.0, "x", None, 1]}):
        assert content_digest(other) != content_digest(base)
