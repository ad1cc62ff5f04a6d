"""The replay memory's options: the bound in bytes with samples kept in the stream's own dtype, the balanced
retention of pseudo-regimes, the replay ratio; each through a real learner and a real checkpoint file."""

from __future__ import annotations

import copy
import io

import pytest
import torch

from streammas import OnlineMAS
from streammas.learner.objectives import reconstruction
from streammas.learner.replay import ReplayMemory
from streammas.models import MLPAutoencoder


def _pixels(n: int, width: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_uint8_pixels_are_kept_as_bytes_exactly_and_four_times_as_many_fit():
    budget = 64 * 400  # bytes: 400 pixel samples, or 100 float32 ones
    as_bytes = OnlineMAS(MLPAutoencoder(in_features=64, hidden=(16,), latent=4), replay=10_000, replay_max_bytes=budget)
    as_floats = OnlineMAS(MLPAutoencoder(in_features=64, hidden=(16,), latent=4), replay=10_000,
                          replay_max_bytes=budget)
    stream = _pixels(600)
    for start in range(0, 600, 20):
        as_bytes.learn_many(stream[start:start + 20])
        as_floats.learn_many(stream[start:start + 20].float())
    assert as_bytes.replay.x.dtype == torch.uint8 and as_floats.replay.x.dtype == torch.float32
    assert len(as_bytes.replay) == 400 and len(as_floats.replay) == 100
    assert as_bytes.state_nbytes()["replay"] <= budget and as_floats.state_nbytes()["replay"] <= budget
    # every kept sample is one of the stream's, bit for bit
    rows = {bytes(r.tolist()) for r in stream}
    assert all(bytes(r.tolist()) in rows for r in as_bytes.replay.x)


def test_a_wider_batch_widens_the_memory_within_its_bytes():
    memory = ReplayMemory(1000, max_bytes=8 * 100, seed=0)
    memory.add(_pixels(50, width=8).float(), None, dtype=torch.uint8)
    assert memory.x.dtype == torch.uint8 and memory.x.shape[0] == 100
    fine = torch.full((10, 8), 0.25)  # a value uint8 cannot hold
    memory.add(fine, None, dtype=torch.float32)
    assert memory.x.dtype == torch.float32 and memory.nbytes() <= 8 * 100
    assert memory.x.shape[0] == 25 and len(memory) == 25
    memory.add(fine, None, dtype=torch.float32)
    assert bool((memory.x == 0.25).any())  # kept exactly, after the widening


def _regime_stream(lengths: list[int], width: int = 16):
    """Blocks of samples, each regime its own mean; yields (regime, batch)."""
    g = torch.Generator().manual_seed(3)
    for regime, length in enumerate(lengths):
        for _ in range(length // 10):
            yield regime, torch.randn(10, width, generator=g) + 4.0 * regime


@pytest.mark.parametrize("retention", ["reservoir", "balanced"])
def test_balanced_retention_keeps_a_rare_regime_that_a_reservoir_lets_go(retention):
    memory = ReplayMemory(100, seed=1, retention=retention)
    for regime, batch in _regime_stream([3000, 100, 3000]):
        memory.add(batch, None, regime=regime)
    kept = torch.bincount((memory.x.mean(dim=1) / 4.0).round().long(), minlength=3)
    if retention == "balanced":
        assert kept.tolist() in ([34, 33, 33], [33, 34, 33], [33, 33, 34])
    else:
        assert int(kept[1]) < 10  # about 100 * 100 / 6100 of the rare regime


def test_balanced_retention_survives_a_checkpoint_file(tmp_path):
    learner = OnlineMAS(torch.nn.Linear(16, 16), replay=60, replay_retention="balanced")
    stream = list(_regime_stream([400, 200]))
    for regime, batch in stream:
        learner.regimes.peaks = regime  # the detector's pseudo-regimes, set here as it would set them
        learner.learn_many(batch)
    path = tmp_path / "state.pt"
    torch.save(learner.state_dict(), path)
    restored = OnlineMAS(torch.nn.Linear(16, 16), replay=60, replay_retention="balanced")
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.replay.retention.held() == learner.replay.retention.held() == {0: 30, 1: 30}
    assert torch.equal(restored.replay.x, learner.replay.x)
    # the restored memory goes on as the original does
    for memory in (learner, restored):
        memory.regimes.peaks = 2
        memory.learn_many(stream[-1][1] + 100.0)
    assert torch.equal(restored.replay.x, learner.replay.x)


def test_a_reservoir_state_loads_into_a_balanced_memory_as_one_earlier_regime():
    reservoir = OnlineMAS(torch.nn.Linear(4, 4), replay=20)
    for _ in range(5):
        reservoir.learn_many(torch.randn(10, 4))
    buffer = io.BytesIO()
    torch.save(reservoir.state_dict(), buffer)
    buffer.seek(0)
    balanced = OnlineMAS(torch.nn.Linear(4, 4), replay=20, replay_retention="balanced")
    balanced.load_state_dict(torch.load(buffer, weights_only=True))
    assert balanced.replay.retention.held() == {-1: 20}
    balanced.learn_many(torch.randn(10, 4))
    assert balanced.replay.retention.held() == {-1: 10, 0: 10}


@pytest.mark.parametrize("ratio", [1, 3])
def test_the_replay_ratio_sets_the_rows_each_step_learns(ratio):
    learner = OnlineMAS(torch.nn.Linear(4, 4), replay=50, replay_ratio=ratio)
    learner.learn_many(torch.randn(8, 4))
    assert learner.update.last_rows[0].shape[0] == 8  # the memory was empty before this step
    learner.learn_many(torch.randn(8, 4))
    assert learner.update.last_rows[0].shape[0] == 8 * (1 + ratio)


def test_the_ratio_keeps_a_groups_draws_alike():
    whole, part = ReplayMemory(16, seed=5, ratio=2), ReplayMemory(16, seed=5, ratio=2)
    for memory in (whole, part):
        memory.add(torch.arange(16.0).unsqueeze(1), None)
    everything = whole.extend(torch.zeros(3, 1), None)[0][3:]
    mine = part.extend(torch.zeros(1, 1), None, draws=3, positions=[2])[0][1:]
    assert torch.equal(mine, everything[4:6])


def _two_regimes_learned(seed: int = 0) -> tuple[OnlineMAS, torch.Tensor, torch.Tensor]:
    """A learner (SGD) that learned regime A (noisy copies of one prototype), then regime B (of another)."""
    torch.manual_seed(seed)
    learner = OnlineMAS(MLPAutoencoder(in_features=16, hidden=(8,), latent=2), optimizer="sgd", lr=0.1, replay=400,
                        replay_retrieval="interfered", replay_candidates=4)
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(2, 16, generator=g)
    a, b = (base[i] + 0.3 * torch.randn(1000, 16, generator=g) for i in range(2))
    for stream in (a, b):
        for start in range(0, 1000, 10):
            learner.learn_many(stream[start:start + 10])
    return learner, a, b


@pytest.mark.parametrize("seed", [0, 1])
def test_interfered_retrieval_replays_what_the_optimizers_real_step_would_hurt_most(seed):
    learner, a, b = _two_regimes_learned(seed)
    rule = learner.replay.retrieval
    z = learner.scaler.transform(b[:10])
    pool = learner.scaler.transform(torch.cat([a[:40], b[10:50]]))
    picked = set(rule.pick(z, None, pool, None, 20).tolist())
    # the same step taken for real, by a copy of the model and its own SGD optimizer
    twin = copy.deepcopy(learner.model)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1)
    with torch.no_grad():
        before = reconstruction(twin(pool), pool, None)
    reconstruction(twin(z), z, None).mean().backward()
    sgd.step()
    with torch.no_grad():
        harm = reconstruction(twin(pool), pool, None) - before
    assert picked == set(torch.topk(harm, 20).indices.tolist())
    assert harm[sorted(picked)].min() >= harm.median()


def test_interfered_retrieval_draws_candidates_and_replays_the_ratios_share():
    learner, a, b = _two_regimes_learned()
    x_all, _ = learner.replay.extend(b[:10], None, scale=learner.scaler.transform)
    assert x_all.shape[0] == 10 + 10 * learner.replay_ratio
    held = learner.scaler.transform(learner.replay.x[:len(learner.replay)])
    nearest = (x_all[10:, None, :] - held[None]).abs().amax(dim=2).min(dim=1).values
    assert bool((nearest < 1e-6).all())  # every one a stored sample

def test_interfered_retrieval_learns_and_survives_a_checkpoint(tmp_path):
    learner, a, b = _two_regimes_learned(seed=1)
    path = tmp_path / "state.pt"
    torch.save(learner.state_dict(), path)
    restored = OnlineMAS(MLPAutoencoder(in_features=16, hidden=(8,), latent=2), optimizer="sgd", lr=0.1, replay=400,
                         replay_retrieval="interfered", replay_candidates=4)
    restored.load_state_dict(torch.load(path, weights_only=True))
    # the same draws and picks on both: the next steps are identical
    for start in range(0, 50, 10):
        assert torch.equal(learner.learn_many(a[start:start + 10]), restored.learn_many(a[start:start + 10]))
    plain = OnlineMAS(MLPAutoencoder(in_features=16, hidden=(8,), latent=2), optimizer="sgd", lr=0.1, replay=0)
    for stream in (a, b):
        for start in range(0, 1000, 10):
            plain.learn_many(stream[start:start + 10])
    # regime A kept better than without a memory
    assert float(learner.learn_many(a[:100]).mean()) < 0.8 * float(plain.learn_many(a[:100]).mean())


def test_an_unknown_retrieval_is_refused_by_name():
    with pytest.raises(ValueError, match="replay_retrieval"):
        OnlineMAS(torch.nn.Linear(4, 4), replay_retrieval="loss")
