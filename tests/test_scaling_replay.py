"""Input scaling, the replay memory and the Adam-preconditioned proximal step, on their own and in the learner."""

import math

import numpy as np
import pytest
import torch

from streammas import OnlineMAS
from streammas.backend import hostsync
from streammas.learner.proximal import ProximalSchedule
from streammas.learner.replay import ReplayMemory
from streammas.learner.scaling import InputScaler
from streammas.learner.synapses import Synapses
from streammas.models import MLPAutoencoder


def _raw_stream(n_batches=300, batch=16, seed=0):
    """Appliance-like rows in raw units: watts in the thousands, a voltage near 230, a flag in {0, 1}."""
    rng = np.random.default_rng(seed)
    for _ in range(n_batches):
        watts = rng.choice([60.0, 2000.0, 4200.0], batch)[:, None] + rng.normal(0, 30, (batch, 3))
        volts = 230 + rng.normal(0, 2, (batch, 2))
        flag = (watts[:, :1] > 1000).astype(np.float64)
        yield np.concatenate([watts, volts, flag], axis=1).astype(np.float32)


def test_running_statistics_match_numpy_over_the_whole_stream():
    scaler = InputScaler("running")
    rows = list(_raw_stream(50))
    for x in rows:
        scaler.fit_transform(torch.from_numpy(x))
    every = np.concatenate(rows).astype(np.float64)
    assert int(scaler.count) == len(every)
    np.testing.assert_allclose(scaler.mean.numpy(), every.mean(0), rtol=1e-9)
    np.testing.assert_allclose(scaler.var.numpy(), every.var(0), rtol=1e-7)


def test_the_host_fold_is_the_torch_fold_and_leaves_an_absurd_row_to_it():
    """A CPU batch is folded in NumPy (a fraction of torch's dispatch); the statistics are those of the torch
    update (Chan's merge with every row kept), and a batch with an absurd row goes to the torch update, which
    leaves that row out."""
    host, reference = InputScaler("running"), InputScaler("running")
    rows = [torch.from_numpy(x) for x in _raw_stream(30)]
    for x in rows:
        host.fit(x)
        if reference.mean is None:
            reference.fit(x)
        else:
            reference._merge(x.reshape(x.shape[0], -1).double(), torch.ones(len(x), dtype=torch.bool))  # torch's
    np.testing.assert_allclose(host.mean.numpy(), reference.mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(host.var.numpy(), reference.var.numpy(), rtol=1e-10)
    assert int(host.count) == int(reference.count) and host.mean.dtype == torch.float64
    before = host.mean
    absurd = rows[0].clone()
    absurd[2, 1] = 1e12
    host.fit(absurd)
    assert int(host.clipped) == 1 and int(host.count) == int(reference.count) + len(absurd) - 1
    assert host.mean is not before  # replaced, never written in place (a cached standardisation relies on it)
    assert float(host.mean[1]) < 1e6


def test_a_bfloat16_model_on_the_cpu_keeps_learning():
    """NumPy has no bfloat16: such batches are folded by torch."""
    learner = OnlineMAS(MLPAutoencoder(6).to(torch.bfloat16))
    for _ in range(4):
        scores = learner.learn_many(torch.rand(8, 6))
    assert scores.dtype == torch.bfloat16 and bool(torch.isfinite(scores).all()) and int(learner.scaler.count) == 32


def test_frozen_statistics_stop_after_the_warmup():
    scaler = InputScaler("frozen", warmup=64)
    for x in _raw_stream(4):  # 64 samples
        scaler.fit_transform(torch.from_numpy(x))
    mean = scaler.mean.clone()
    scaler.fit_transform(torch.full((16, 6), 1e4))
    assert torch.equal(scaler.mean, mean) and int(scaler.count) == 64


def test_an_absurd_sample_is_counted_and_left_out_even_in_the_first_batch():
    x = torch.from_numpy(next(_raw_stream(1)))
    x[3, 0] = 1e20
    scaler = InputScaler()
    z = scaler.fit_transform(x)
    assert int(scaler.clipped) == 1 and int(scaler.count) == len(x) - 1
    assert bool(torch.isfinite(scaler.mean).all()) and scaler.mean[0] < 5000
    assert float(z.abs().max()) <= scaler.clip


def test_learner_on_raw_units_learns_without_skipping_and_predicts_in_input_units():
    torch.manual_seed(0)
    learner = OnlineMAS(MLPAutoencoder(6, hidden=(16,), latent=3), optimizer="adam", lr=1e-2,
                        scale_inputs="running")
    losses = [float(learner.learn_many(x).mean()) for x in _raw_stream(300)]
    learner.flush()
    assert learner.counters["skipped_updates"] == 0 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])
    x = torch.from_numpy(next(_raw_stream(1, seed=1)))
    recon = learner.predict_many(x)
    # A reconstruction in watts and volts, not in standard deviations: its error, in units of each feature's
    # spread, is well below that of predicting the feature's mean.
    spread = torch.from_numpy(np.concatenate(list(_raw_stream(20, seed=2))).std(0)).clamp_min(1e-3)
    assert float(((recon - x) / spread).pow(2).mean()) < 0.5
    assert float((recon[:, 3] - 230).abs().mean()) < 5  # the voltage comes back near 230 V


def test_without_scaling_the_same_raw_stream_overflows_plain_sgd():
    torch.manual_seed(0)
    learner = OnlineMAS(MLPAutoencoder(6, hidden=(16,), latent=3), recover_after=0, optimizer="sgd", lr=0.05,
                        scale_inputs="none", replay=0)
    for x in _raw_stream(100):
        learner.learn_many(x)
    learner.flush()
    assert learner.counters["skipped_updates"] > 50  # what the scaler prevents


def test_one_absurd_sample_in_every_batch_does_not_stop_learning():
    torch.manual_seed(0)
    learner = OnlineMAS(MLPAutoencoder(6, hidden=(16,), latent=3), optimizer="adam", lr=1e-2,
                        scale_inputs="running")
    losses = []
    for x in _raw_stream(200):
        x = x.copy()
        x[0, 1] = 1e20
        losses.append(float(learner.learn_many(x)[1:].mean()))
    learner.flush()
    assert learner.counters["skipped_updates"] == 0
    assert learner.counters["clipped_samples"] == 200
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])


def test_a_feature_constant_so_far_does_not_jump_to_the_clip_with_a_scale_floor():
    """A border pixel black for the whole first regime has a standard deviation of 0: without a floor its first
    ink is standardised to the clip (30 by default; at 100 it blew up plain SGD); the floor bounds it by the
    stream's typical scale."""
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.random((500, 8))).float()
    x[:, 0] = 0.0  # constant so far
    moved = x[:4].clone()
    moved[:, 0] = 1.0
    plain, floored = InputScaler(), InputScaler(floor=0.5)
    for scaler in (plain, floored):
        scaler.fit(x)
    assert plain.transform(moved)[:, 0].max().item() == pytest.approx(30.0)
    typical = float(np.median(x[:, 1:].numpy().std(axis=0)))
    bound = 1.0 / (0.5 * typical)
    assert floored.transform(moved)[:, 0].max().item() == pytest.approx(bound, rel=1e-3)
    # the features that vary keep their own scale
    assert torch.allclose(floored.transform(x)[:, 1:], plain.transform(x)[:, 1:])


def test_reservoir_keeps_every_part_of_the_stream_alike():
    counts = np.zeros(10)
    for seed in range(40):
        memory = ReplayMemory(50, seed=seed)
        for start in range(0, 1000, 10):
            memory.add(torch.arange(start, start + 10, dtype=torch.float32).unsqueeze(1), None)
        counts += np.bincount((memory.x[:, 0].numpy() // 100).astype(int), minlength=10)
    # 2,000 draws over ten tenths of the stream: 200 expected in each (sd about 13)
    assert counts.min() > 150 and counts.max() < 250, counts


def test_the_reservoir_holds_every_sample_alike_wherever_it_sits_in_its_batch():
    # Algorithm R: after n samples each is held with the chance size / n, a later row of a batch taking a slot an
    # earlier row drew too. Batches far larger than the memory make that rule, drawn for a whole batch at once, matter.
    size, batch, n, seeds = 20, 50, 500, 2000
    held = np.zeros(n)
    for seed in range(seeds):
        memory = ReplayMemory(size, seed=seed)
        for start in range(0, n, batch):
            memory.add(torch.arange(start, start + batch, dtype=torch.float32).unsqueeze(1), None)
        values = memory.x[:, 0].long().numpy()
        assert len(set(values.tolist())) == size  # every slot filled, no sample held twice
        held[values] += 1
    per_sample = seeds * size / n  # 80
    by_row = held.reshape(-1, batch).sum(axis=0)  # each place within a batch: 10 samples, 800 expected (sd 28)
    by_batch = held.reshape(-1, batch).sum(axis=1)  # each batch of the stream: 4000 expected (sd 62)
    assert np.abs(by_row - 10 * per_sample).max() < 5 * 28, by_row
    assert np.abs(by_batch - batch * per_sample).max() < 5 * 62, by_batch
    chi2 = ((held - per_sample) ** 2 / per_sample).sum()  # about chi-square with 499 degrees of freedom (sd 32)
    assert chi2 < 499 + 5 * 32, chi2


def test_replayed_samples_are_drawn_alike_from_the_whole_memory():
    memory = ReplayMemory(40, seed=3, ratio=2)
    memory.add(torch.arange(40.0).unsqueeze(1), None)
    drawn = torch.cat([memory.extend(torch.zeros(50, 1), None)[0][50:, 0] for _ in range(200)]).long()
    counts = torch.bincount(drawn, minlength=40).numpy()  # 20,000 draws: 500 per sample expected (sd 22)
    assert np.abs(counts - 500).max() < 5 * 22 and ((counts - 500) ** 2 / 500).sum() < 39 + 5 * 9


def test_a_memory_saved_with_the_earlier_generator_loads_and_draws_alike_each_time():
    import random

    memory = ReplayMemory(8, seed=0)
    memory.add(torch.arange(8.0).unsqueeze(1), None)
    state = memory.state_dict()
    state["generator"] = [list(v) if isinstance(v, tuple) else v for v in random.Random(7).getstate()]
    draws = []
    for _ in range(2):
        copy = ReplayMemory(8, seed=1)
        copy.load_state_dict(state)
        draws.append(copy.extend(torch.zeros(4, 1), None)[0])
    assert torch.equal(draws[0], draws[1]) and draws[0].shape == (8, 1)


def test_replay_memory_respects_its_byte_bound_and_round_trips():
    memory = ReplayMemory(1000, max_bytes=40 * 784 * 4, seed=1)
    memory.add(torch.rand(64, 784), torch.arange(64))
    assert memory.x.shape[0] == 39 and memory.nbytes() <= 40 * 784 * 4  # labels count too
    copy = ReplayMemory(1000, max_bytes=40 * 784 * 4)
    copy.load_state_dict(memory.state_dict())
    a, b = memory.extend(torch.zeros(5, 784), torch.zeros(5, dtype=torch.int64))
    c, d = copy.extend(torch.zeros(5, 784), torch.zeros(5, dtype=torch.int64))
    assert torch.equal(a, c) and torch.equal(b, d)


@pytest.mark.parametrize("reg_lambda", [0.1, 10.0, 1e4])
def test_adam_preconditioned_proximal_step_is_exact_and_stable(reg_lambda):
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    synapses = Synapses([("w", w)], normalization="none")
    synapses.accumulate([torch.tensor([1.0, 2.0, 0.5])], batch_size=1)
    synapses.consolidate()  # theta* = w, Omega = [1, 2, 0.5]
    with torch.no_grad():
        w.add_(torch.tensor([4.0, 4.0, 4.0]))
    v = torch.tensor([0.25, 4.0, 1e-6])
    metric = [v.sqrt() + 1e-8]
    c = 2 * 0.01 * reg_lambda * synapses.omega[0] / metric[0]
    expected = (w.detach() + c * synapses.anchor[0]) / (1 + c)
    synapses.proximal_step(reg_lambda, 0.01, metric=metric)
    torch.testing.assert_close(w.detach(), expected)
    between = (w.detach() - synapses.anchor[0]) / 4.0
    assert bool(((between >= 0) & (between <= 1)).all())  # never past the anchor, for any lambda


def test_under_adam_the_regulariser_now_protects():
    """Adam's lr (1e-3) made c = 2 lr lambda Omega tiny; in Adam's metric the same lambda holds the weights."""
    torch.manual_seed(0)
    a = torch.rand(64, 8)
    b = torch.rand(64, 8) * 0.2 + 0.8

    def drift(reg_lambda):
        torch.manual_seed(0)
        learner = OnlineMAS(MLPAutoencoder(8, hidden=(16,), latent=4), optimizer="adam", lr=1e-2,
                            reg_lambda=reg_lambda, prox_every=1)
        for i in range(300):
            learner.learn_many(a[(i * 8) % 64:][:8])
        learner.flush()
        learner.consolidate()
        anchor = [t.clone() for t in learner.synapses.anchor]
        for i in range(300):
            learner.learn_many(b[(i * 8) % 64:][:8])
        return sum(float((p.detach() - t).pow(2).sum()) for p, t in zip(learner.synapses.params, anchor))

    assert drift(10.0) < 0.2 * drift(0.0)


def test_scaling_and_replay_keep_the_one_read_per_sync_period():
    torch.manual_seed(0)
    learner = OnlineMAS(MLPAutoencoder(6, hidden=(16,), latent=3), optimizer="adam", lr=1e-2,
                        scale_inputs="running", replay=200)
    batches = [torch.from_numpy(x) for x in _raw_stream(64)]
    before = hostsync.host_reads()
    for x in batches:
        learner.learn_many(x)
    assert hostsync.host_reads() - before == 64 // learner.sync_every
    assert len(learner.replay) == 200


def test_a_metric_floor_keeps_a_rarely_moved_weight_from_being_pinned():
    """Adam's metric for a weight with a tiny gradient is tiny, so c is enormous and the proximal step puts it
    back on theta* at once; floored at its tensor's mean metric, it moves only part of the way."""

    def moved(floor: float) -> torch.Tensor:
        w = torch.nn.Parameter(torch.tensor([1.0, 1.0, 1.0]))
        synapses = Synapses([("w", w)], normalization="none")
        synapses.accumulate([torch.tensor([1.0, 1.0, 1.0])], batch_size=1)
        synapses.consolidate()  # theta* = 1, Omega = 1
        optimizer = torch.optim.Adam([w], lr=0.01)
        w.grad = torch.tensor([1.0, 1.0, 1e-6])  # the third weight: Adam has barely seen a gradient
        optimizer.step()
        with torch.no_grad():
            w.fill_(2.0)
        schedule = ProximalSchedule(synapses, optimizer, reg_lambda=10.0, every=1, metric_floor=floor)
        schedule.after_step(None)
        return (w.detach() - 1.0) / 1.0  # the share of the distance to theta* left

    pinned, floored = moved(0.0), moved(1.0)
    assert pinned[2] < 1e-3 and pinned[0] > 0.5  # Adam's own metric: the rarely moved weight is pinned
    assert floored[2] > 0.3 and torch.allclose(floored[:2], pinned[:2], rtol=0.05)


def test_the_batch_and_its_replayed_rows_are_scaled_in_one_call_with_the_same_result():
    scaler = InputScaler("running", clip=3.0)
    scaler.fit(torch.randn(64, 3) * 5 + 2)
    memory, twin = ReplayMemory(100, seed=3, ratio=2), ReplayMemory(100, seed=3, ratio=2)
    stored = torch.randn(50, 3) * 20  # rows far out: some are clipped
    for m in (memory, twin):
        m.add(stored, None)
    x = torch.randn(4, 3) * 5
    together, _ = memory.extend(x, None, scale=scaler.transform)
    raw, _ = twin.extend(x, None)
    apart = torch.cat([scaler.transform(raw[:4]), scaler.transform(raw[4:])])
    assert together.shape == (12, 3) and torch.equal(together, apart)
    assert bool((together.abs() == scaler.clip).any())  # the clip applies to both
