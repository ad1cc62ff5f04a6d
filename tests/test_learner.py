"""OnlineMAS end to end: the plain-SGD equivalence, bad input, skipped updates, forgetting, state."""

import copy
import math

import numpy as np
import pytest
import torch

from streammas import OnlineMAS
from streammas.learner.update import FusedUpdate
from streammas.models import ConvAutoencoder, MLPAutoencoder, MLPClassifier

#: The settings the mechanism tests below were written against (the learner's defaults before Adam, input
#: scaling and replay): the raw input, nothing replayed, and plain SGD.
RAW = dict(scale_inputs="none", replay=0)
CLASSIC = dict(optimizer="sgd", lr=0.05, reg_lambda=0.15, **RAW)


def _data(n=256, d=16, seed=0):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fused_step", [False, True], ids=["autograd", "fused"])
def test_without_regulariser_and_buffer_it_is_plain_online_sgd(fused_step):
    torch.manual_seed(0)
    model = MLPAutoencoder(16, hidden=(32,), latent=4)
    reference = copy.deepcopy(model)
    learner = OnlineMAS(model, **{**CLASSIC, "reg_lambda": 0}, hard_buffer=0, fused_step=fused_step)
    assert isinstance(learner.update, FusedUpdate) == fused_step
    # autograd: bit for bit; the hand-derived step sums in another order, so: up to float rounding
    same = torch.equal if not fused_step else lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    opt = torch.optim.SGD(reference.parameters(), lr=0.05)
    data = _data()
    for i in range(200):
        x = data[(i * 8) % 256:][:8]
        scores = learner.learn_many(x)
        loss = (reference(x) - x).pow(2).reshape(8, -1).mean(dim=1)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        assert same(scores, loss.detach())
    for p, q in zip(model.parameters(), reference.parameters()):
        assert same(p, q)


def test_scores_are_prequential_and_exclude_the_regulariser():
    torch.manual_seed(1)
    learner = OnlineMAS(MLPAutoencoder(16, hidden=(16,), latent=4), **{**CLASSIC, "reg_lambda": 1e3})
    data = _data()
    for i in range(50):
        learner.learn_many(data[i:i + 8])
    learner.consolidate()
    x = data[:8]
    before = learner.score_many(x)
    scores = learner.learn_many(x)  # scored before the update, with no penalty term in it
    assert torch.equal(scores, before)
    assert scores.device == learner.device and scores.shape == (8,)


def test_bad_input_raises_with_the_samples_and_the_reason():
    learner = OnlineMAS(MLPAutoencoder(4, hidden=(8,), latent=2))
    x = np.ones((6, 4), dtype=np.float32)
    x[2, 1] = np.nan
    x[5, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 of 6 samples .*NaN or Inf.*\[2, 5\]"):
        learner.learn_many(x)
    learner.learn_many(np.ones((3, 4)))
    with pytest.raises(ValueError, match=r"shape \(5,\).*shape \(4,\)"):
        learner.learn_many(np.ones((3, 5)))
    with pytest.raises(ValueError, match="real numbers"):
        learner.learn_many(np.array([["a", "b", "c", "d"]]))
    with pytest.raises(ValueError, match="batch"):
        learner.learn_many(np.ones(4))
    assert learner.samples_seen == 3


def test_bad_input_can_be_skipped_and_counted():
    events = []
    learner = OnlineMAS(MLPAutoencoder(4, hidden=(8,), latent=2), on_bad_input="skip", callback=events.append)
    x = np.ones((5, 4), dtype=np.float32)
    x[[1, 3]] = np.nan
    scores = learner.learn_many(x).tolist()
    assert math.isnan(scores[1]) and math.isnan(scores[3])
    assert all(math.isfinite(scores[i]) for i in (0, 2, 4))
    assert learner.samples_seen == 3
    assert learner.counters["rejected_samples"] == 2
    learner.learn_many(np.ones((2, 7)))  # wrong shape: all rejected, nothing learned
    assert learner.counters["rejected_samples"] == 4 and learner.samples_seen == 3
    assert [e.kind for e in events] == ["rejected", "rejected"]


@pytest.mark.parametrize("optimizer", ["sgd", "adam", lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9)])
def test_non_finite_loss_skips_the_update_and_leaves_the_model_as_it_was(optimizer):
    def fragile(output, x, y):
        losses = (output - x).pow(2).mean(dim=1)
        return torch.where(x[:, 0] > 5, torch.log(-x[:, 0]), losses)  # NaN for the marked samples

    torch.manual_seed(2)
    # No replay memory: it would keep the marked sample (finite, but NaN under this objective) and replay it.
    learner = OnlineMAS(MLPAutoencoder(4, hidden=(8,), latent=2), objective=fragile, optimizer=optimizer,
                        hard_buffer=4, sync_every=1, replay=0)
    data = _data(64, 4)
    for i in range(20):
        learner.learn_many(data[i:i + 4])
    learner.consolidate()
    for i in range(5):
        learner.learn_many(data[i:i + 4])
    model_before = copy.deepcopy(learner.model.state_dict())
    opt_before = copy.deepcopy(learner.optimizer.state_dict())
    bad = data[:4].clone()
    bad[1, 0] = 10.0
    learner.learn_many(bad)
    for name, value in learner.model.state_dict().items():
        assert torch.equal(value, model_before[name]), name
    for key, state in learner.optimizer.state_dict()["state"].items():
        for field, value in state.items():
            assert torch.equal(value, opt_before["state"][key][field]), field
    assert learner.counters["skipped_updates"] == 1
    learner.learn_many(data[:4])  # and it goes on learning
    assert any(not torch.equal(v, model_before[n]) for n, v in learner.model.state_dict().items())


def _trained(**settings) -> tuple[OnlineMAS, torch.Tensor]:
    torch.manual_seed(4)
    learner = OnlineMAS(MLPAutoencoder(16, hidden=(16,), latent=4), **{**CLASSIC, **settings})
    data = _data(256, 16)
    for i in range(0, 256, 8):
        learner.learn_many(data[i:i + 8])
    learner.flush()
    learner.consolidate()
    return learner, data


@pytest.mark.parametrize("settings", [{"fused_step": True}, {"fused_step": False}, {"optimizer": "adam", "lr": 1e-3}],
                         ids=["fused", "autograd", "adam"])
def test_runaway_weights_are_restored_to_theta_star_and_learning_resumes(settings):
    learner, data = _trained(**settings)
    anchor = [a.clone() for a in learner.synapses.anchor]
    with torch.no_grad():  # what a diverged step leaves: weights so large that every loss overflows
        for p in learner.model.parameters():
            p.mul_(1e20)
    steps = 0
    while not learner.counters["recoveries"] and steps < learner.recover_after + 16:
        learner.learn_many(data[:8])
        steps += 1
    assert learner.counters["recoveries"] == 1, learner.counters
    assert steps == learner.recover_after  # found at the first host read after recover_after skipped updates
    assert learner.counters["skipped_updates"] == learner.recover_after
    assert [e["kind"] for e in learner.events][-2:] == ["skipped_update", "recovered"]
    assert all(torch.equal(p, a) for p, a in zip(learner.model.parameters(), anchor))
    assert all(float(r.abs().sum()) == 0 for r in learner.synapses.running)  # built from the runaway weights
    first = None
    for i in range(0, 256, 8):
        losses = learner.learn_many(data[i:i + 8])
        first = losses.mean().item() if first is None else first
        assert torch.isfinite(losses).all()
    learner.flush()
    assert learner.counters["skipped_updates"] == learner.recover_after
    assert learner.score_many(data).mean().item() < first


@pytest.mark.parametrize("fused_step", [True, False], ids=["fused", "autograd"])
def test_input_that_overflows_any_model_is_skipped_without_touching_the_weights(fused_step):
    learner, data = _trained(fused_step=fused_step)
    before = copy.deepcopy(learner.model.state_dict())
    huge = torch.full((8, 16), 1e30)  # finite, so it passes validation, but its squared error overflows
    for _ in range(3 * learner.recover_after):
        assert torch.isinf(learner.learn_many(huge)).all()
    learner.flush()
    assert learner.counters["skipped_updates"] == 3 * learner.recover_after
    assert learner.counters["recoveries"] == 0
    assert all(torch.equal(v, before[k]) for k, v in learner.model.state_dict().items())
    assert torch.isfinite(learner.learn_many(data[:8])).all()


def test_recover_after_zero_leaves_runaway_weights_alone():
    learner, data = _trained(recover_after=0)
    with torch.no_grad():
        for p in learner.model.parameters():
            p.mul_(1e20)
    for _ in range(200):
        learner.learn_many(data[:8])
    learner.flush()
    assert learner.counters["recoveries"] == 0 and learner.counters["skipped_updates"] == 200
    with pytest.raises(ValueError, match="recover_after"):
        OnlineMAS(MLPAutoencoder(4, hidden=(4,), latent=2), recover_after=-1)


def _regimes(seed=0):
    """Two pattern sets: A, and a fixed pixel permutation of A (regime B)."""
    g = torch.Generator().manual_seed(seed)
    a = (torch.rand(8, 64, generator=g) < 0.3).float()
    b = a[:, torch.randperm(64, generator=g)]
    return a, b


def _stream(patterns, steps, g):
    for _ in range(steps):
        idx = torch.randint(len(patterns), (10,), generator=g)
        yield patterns[idx] + 0.05 * torch.randn(10, patterns.shape[1], generator=g)


def _a_then_b(steps=1000, **settings):
    torch.manual_seed(0)
    learner = OnlineMAS(MLPAutoencoder(64, hidden=(64,), latent=8), **settings)
    a, b = _regimes()
    g = torch.Generator().manual_seed(3)
    for x in _stream(a, steps, g):
        learner.learn_many(x)
    for x in _stream(b, steps, g):
        learner.learn_many(x)
    learner.flush()
    error = (learner.score_many(a).mean().item() + learner.score_many(b).mean().item()) / 2
    return error, learner


def test_remembers_regime_a_after_learning_regime_b_without_being_told_where_a_ends():
    plain, _ = _a_then_b(reg_lambda=0, hard_buffer=0, replay=0)  # no memory at all
    mas, learner = _a_then_b()  # the defaults
    assert learner.consolidations >= 1
    assert learner.counters["plateaus"] >= 1 and learner.counters["peaks"] >= 1
    assert mas < 0.85 * plain, (mas, plain)


def _run(learner, data, steps, offset=0):
    out = []
    for i in range(offset, offset + steps):
        out.append(learner.learn_many(data[(i * 8) % len(data):][:8]))
    return torch.cat(out)


@pytest.mark.parametrize("settings", [{}, {"optimizer": "adam", "importance_source": "buffer", "hard_buffer": 16},
                                      {"consolidate_at": "plateau", "importance_method": "hebbian"}])
def test_state_dict_round_trip_continues_bit_for_bit(tmp_path, settings):
    torch.manual_seed(3)
    data = torch.cat([_data(128, 16, 1), _data(128, 16, 2) * 3])
    make = lambda: OnlineMAS(MLPAutoencoder(16, hidden=(16,), latent=4),  # noqa: E731
                             plateau={"window": 5, "patience": 3, "min_drop": 0.3, "progress_steps": 5},
                             **{**CLASSIC, **settings})
    original = make()
    _run(original, data, 150)
    torch.save(original.state_dict(), tmp_path / "state.pt")
    restored = make()  # a different initialisation, overwritten by the state
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    a, b = _run(original, data, 150, 150), _run(restored, data, 150, 150)
    assert torch.equal(a, b)
    for p, q in zip(original.model.parameters(), restored.model.parameters()):
        assert torch.equal(p, q)
    assert original.counters == restored.counters and original.counters["consolidations"] >= 1
    for name in original.importance:
        assert torch.equal(original.importance[name], restored.importance[name])
        assert torch.equal(original.anchor[name], restored.anchor[name])


def test_learn_one_takes_dicts_arrays_and_tensors():
    learner = OnlineMAS(MLPAutoencoder(3, hidden=(4,), latent=2), **RAW)
    # learn_one returns the prequential loss: the sample's score just before the update
    before = learner.score_one(np.array([0.1, 0.2, 0.3]))
    assert before > 0 and learner.learn_one({"a": 0.1, "b": 0.2, "c": 0.3}) == pytest.approx(before)
    assert learner.feature_names == ["a", "b", "c"]
    before = learner.score_one(torch.tensor([0.1, 0.0, 0.3]))
    assert learner.learn_one({"c": 0.3, "a": 0.1}) == pytest.approx(before)  # any order; a missing feature is 0
    before = learner.score_one({"b": 0.2, "a": 0.1, "c": 0.3})
    assert learner.learn_one(np.array([0.1, 0.2, 0.3])) == pytest.approx(before)
    row = {"a": 0.1, "b": 0.2, "c": 0.3}
    assert learner.score_one(torch.tensor([0.1, 0.2, 0.3])) == pytest.approx(learner.score_one(row))
    assert learner.samples_seen == 3


def test_classification_needs_labels_and_learns():
    torch.manual_seed(4)
    learner = OnlineMAS(MLPClassifier(8, n_classes=2, hidden=(16,)), objective="classification", lr=0.1)
    with pytest.raises(ValueError, match="labels"):
        learner.learn_many(torch.rand(4, 8))
    x = torch.randn(400, 8)
    y = (x[:, 0] > 0).long()
    for i in range(0, 400, 10):
        learner.learn_many(x[i:i + 10], y[i:i + 10])
    accuracy = (learner.predict_many(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9


@pytest.mark.parametrize("hard_buffer", [0, 1, 16])
@pytest.mark.parametrize("steps_per_batch", [1, 3])
def test_buffer_sizes_and_repeated_steps(hard_buffer, steps_per_batch):
    torch.manual_seed(5)
    learner = OnlineMAS(ConvAutoencoder(1, channels=(2, 4)), hard_buffer=hard_buffer, steps_per_batch=steps_per_batch,
                        **CLASSIC)
    x = torch.rand(40, 1, 8, 8)
    first = learner.score_many(x).mean().item()
    sizes = []
    for i in range(0, 40, 4):
        learner.learn_many(x[i:i + 4])
        sizes.append(len(learner.buffer))
    # each batch of 4 joins the held samples, and the buffer keeps at most hard_buffer of them
    assert sizes == [min(hard_buffer, 4 * n) for n in range(1, 11)]
    assert learner.score_many(x).mean().item() < first


def test_buffer_keeps_the_highest_loss_samples():
    learner = OnlineMAS(MLPAutoencoder(4, hidden=(4,), latent=2), hard_buffer=2, lr=0.0, **RAW)
    x = torch.zeros(5, 4)
    x[3] = 5.0
    x[1] = 3.0
    learner.learn_many(x)
    kept = sorted(learner.buffer.x[:, 0].tolist())
    assert kept == [3.0, 5.0]


@pytest.mark.parametrize("decay", [1.0, 0.8])
def test_an_outlier_leaves_the_buffer_after_a_while_unless_decay_is_one(decay):
    torch.manual_seed(0)
    learner = OnlineMAS(MLPAutoencoder(4, hidden=(4,), latent=2), hard_buffer=1, hard_buffer_decay=decay, lr=0.0,
                        **RAW)
    outlier, ordinary = torch.full((1, 4), 20.0), torch.full((2, 4), 2.0)
    learner.learn_many(torch.cat([outlier, ordinary]))
    ratio = (learner.score_many(ordinary)[0] / learner.score_many(outlier)[0]).item()  # lr 0: losses stay put
    held = []
    for _ in range(60):
        learner.learn_many(ordinary)
        held.append(learner.buffer.x[0, 0].item() == 20.0)
    if decay == 1.0:
        assert all(held)
    else:  # it stays while loss * decay^steps is above the ordinary samples' loss, then it is out for good
        steps = math.ceil(math.log(ratio) / math.log(decay))
        assert held == [True] * (steps - 1) + [False] * (61 - steps), (steps, held)
    with pytest.raises(ValueError, match="decay"):
        OnlineMAS(MLPAutoencoder(4, hidden=(4,), latent=2), hard_buffer=1, hard_buffer_decay=0.0)


def test_cpu_run_never_touches_cuda():
    learner = OnlineMAS(MLPAutoencoder(4, hidden=(4,), latent=2))
    for _ in range(20):
        learner.learn_many(torch.rand(4, 4))
    learner.consolidate()
    learner.learn_many(torch.rand(4, 4))
    assert learner.device.type == "cpu"
    assert not torch.cuda.is_initialized()


def test_invalid_settings_are_rejected():
    model = MLPAutoencoder(4, hidden=(4,), latent=2)
    with pytest.raises(ValueError, match="hard buffer"):
        OnlineMAS(model, importance_source="buffer", hard_buffer=0)
    with pytest.raises(ValueError, match="reg_lambda"):
        OnlineMAS(model, reg_lambda=-1)
    with pytest.raises(ValueError, match="objective"):
        OnlineMAS(model, objective="telepathy")
    with pytest.raises(ValueError, match="optimizer"):
        OnlineMAS(model, optimizer="rmsprop?")


@pytest.mark.parametrize("compact", [True, False], ids=["compact", "wide"])
def test_a_plateau_that_holds_is_kept_compactly_and_anchored_at_the_peak(compact):
    torch.manual_seed(0)
    learner = OnlineMAS(MLPAutoencoder(64, hidden=(64,), latent=8), lr=0.2, compact_state=compact)
    old_anchor = [a.clone() for a in learner.synapses.anchor]
    a, b = _regimes()
    g = torch.Generator().manual_seed(3)
    snapshots, held_bytes = [], []
    for x in [*_stream(a, 1000, g), *_stream(b, 400, g)]:
        learner.learn_many(x)
        if learner.steps % learner.sync_every == 0 and learner.regimes.held_delta is not None:
            snapshots.append([p.detach().clone() for p in learner.model.parameters()])
            held_bytes.append(learner.state_nbytes())
        if learner.consolidations:
            break
    assert learner.consolidations == 1 and learner.counters["peaks"] >= 1 and snapshots
    state = held_bytes[-1]
    assert (state["synapses"] + state["held"]) / state["parameters"] == (3.0 if compact else 4.0)
    assert state["held"] == state["held_max"]
    assert all(o.dtype == (torch.bfloat16 if compact else torch.float32) for o in learner.synapses.omega)
    # theta* is the plateau's weights: one of the copies taken while it held, up to bfloat16's rounding of the
    # difference from the old anchor (3 significant digits)
    drift = max((s - o).abs().max().item() for snap in snapshots for s, o in zip(snap, old_anchor))
    error = min(max((t - s).abs().max().item() for t, s in zip(learner.synapses.anchor, snap)) for snap in snapshots)
    assert error <= (drift / 256 if compact else 1e-6), (error, drift)
    assert drift > 0.01
