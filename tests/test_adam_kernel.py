"""torch's fused Adam kernel called directly (streammas.backend.adam_kernel) against ``Adam(fused=True).step()``:
the same parameters and state, bit for bit, a skipped step included, and the optimizer's own step wherever a hook,
a setting or a missing gradient asks for it."""

import copy

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.profiler import ProfilerActivity, profile

from streammas import OnlineMAS
from streammas.backend.adam_kernel import OptimizerStep
from streammas.models import MLPAutoencoder


def _pair(**adam):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    twin = copy.deepcopy(model)
    return (model, torch.optim.Adam(model.parameters(), fused=True, **adam),
            twin, torch.optim.Adam(twin.parameters(), fused=True, **adam))


def _backward(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    model.zero_grad(set_to_none=False)
    model(torch.randn(8, 6, generator=g)).pow(2).sum().backward()


def _same(a: torch.optim.Optimizer, b: torch.optim.Optimizer) -> None:
    for p, q in zip(a.param_groups[0]["params"], b.param_groups[0]["params"]):
        assert torch.equal(p, q)
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(a.state[p][key], b.state[q][key]), key


@pytest.mark.parametrize("adam", [dict(lr=0.01), dict(lr=0.003, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.01),
                                  dict(lr=0.01, maximize=True)])
def test_the_kernel_gives_adams_numbers(adam):
    model, optimizer, twin, reference = _pair(**adam)
    step = OptimizerStep(optimizer)
    assert step.direct
    calls = []
    reference.register_step_post_hook(lambda *_: None)  # the reference keeps to Optimizer.step
    optimizer.register_step_post_hook(lambda *_: calls.append(1))
    _backward(model, 0), _backward(twin, 0)
    step(), reference.step()  # the first step makes the state: optimizer.step(), its hooks run
    assert calls == [1]
    optimizer._optimizer_step_post_hooks.clear()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(1, 30):
            if i == 15:  # a scheduler's change of the step size is read at the next step
                optimizer.param_groups[0]["lr"] = reference.param_groups[0]["lr"] = adam["lr"] / 3
            _backward(model, i), _backward(twin, i)
            step(), reference.step()
            _same(optimizer, reference)
    ran = {e.key: e.count for e in prof.key_averages()}
    assert ran["Optimizer.step#Adam.step"] == 29 and ran["aten::_fused_adam_"] == 58  # the reference's, and both
    assert float(optimizer.state[model[0].weight]["step"]) == 30


def test_a_flagged_step_changes_nothing_and_is_not_counted():
    model, optimizer, twin, reference = _pair(lr=0.01)
    step = OptimizerStep(optimizer)
    for i in range(3):
        _backward(model, i), _backward(twin, i)
        step(), reference.step()
    before = copy.deepcopy(optimizer.state_dict()), [p.clone() for p in model.parameters()]
    _backward(model, 3)
    step(torch.ones(()))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before[1]))
    assert float(optimizer.state[model[0].weight]["step"]) == 3
    _backward(model, 4), _backward(twin, 4)
    step(torch.zeros(())), reference.step()
    _same(optimizer, reference)


def test_hooks_and_missing_state_take_the_optimizers_own_step():
    model, optimizer, twin, reference = _pair(lr=0.01)
    step = OptimizerStep(optimizer)
    seen = []
    handle = register_optimizer_step_pre_hook(lambda opt, *_: seen.append(opt))
    try:
        for i in range(3):
            _backward(model, i), _backward(twin, i)
            step(), reference.step()
    finally:
        handle.remove()
    assert seen.count(optimizer) == 3  # a global hook is honoured on every step
    _same(optimizer, reference)
    # a parameter without gradient: Adam skips it, and so does the step that leaves it to Adam
    _backward(model, 3), _backward(twin, 3)
    model[2].bias.grad = twin[2].bias.grad = None
    step(), reference.step()
    _same(optimizer, reference)
    # a loaded state (new tensors) is what the kernel steps next
    optimizer.load_state_dict(copy.deepcopy(reference.state_dict()))
    _backward(model, 4), _backward(twin, 4)
    step(), reference.step()
    _same(optimizer, reference)


def test_a_schedulers_wrapped_step_is_the_one_called():
    model, optimizer, twin, reference = _pair(lr=0.01)
    step = OptimizerStep(optimizer)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    twin_scheduler = torch.optim.lr_scheduler.StepLR(reference, step_size=2, gamma=0.5)
    for i in range(6):
        _backward(model, i), _backward(twin, i)
        step(), reference.step()
        scheduler.step(), twin_scheduler.step()
    assert optimizer._opt_called  # the scheduler saw its optimizer step (no warning that it did not)
    _same(optimizer, reference)
    assert optimizer.param_groups[0]["lr"] == 0.01 / 8


def test_a_group_added_later_is_stepped_by_the_optimizer():
    model, optimizer, twin, reference = _pair(lr=0.01)
    step = OptimizerStep(optimizer)
    extra, twin_extra = nn.Linear(3, 2), nn.Linear(3, 2)
    twin_extra.load_state_dict(extra.state_dict())
    for i in range(4):
        if i == 2:  # after the kernel has run: the new group's parameters must step and get their state
            optimizer.add_param_group({"params": extra.parameters()})
            reference.add_param_group({"params": twin_extra.parameters()})
        for m, e in ((model, extra), (twin, twin_extra)):
            m.zero_grad(set_to_none=False)
            e.zero_grad(set_to_none=False)
            g = torch.Generator().manual_seed(i)
            (m(torch.randn(8, 6, generator=g)).pow(2).sum() + e(torch.ones(1, 3)).sum()).backward()
        step(), reference.step()
    _same(optimizer, reference)
    assert torch.equal(extra.weight, twin_extra.weight) and len(optimizer.state) == 6


def test_other_optimizers_step_themselves():
    layer = nn.Linear(3, 2)
    params = list(layer.parameters())
    assert not OptimizerStep(torch.optim.SGD(params, lr=0.1)).direct
    assert not OptimizerStep(torch.optim.Adam(params, lr=0.1)).direct  # not fused
    assert not OptimizerStep(torch.optim.Adam(params, lr=0.1, fused=True, amsgrad=True)).direct
    assert not OptimizerStep(torch.optim.AdamW(params, lr=0.1, fused=True)).direct
    assert not OptimizerStep(torch.optim.Adam([{"params": [layer.weight]}, {"params": [layer.bias]}], lr=0.1,
                                              fused=True)).direct
    sgd = torch.optim.SGD(params, lr=0.5)
    layer(torch.ones(1, 3)).sum().backward()
    before = layer.bias.detach().clone()
    OptimizerStep(sgd)()
    assert torch.equal(layer.bias, before - 0.5)  # the bias gradient is 1 for each output


def test_the_learners_numbers_do_not_change():
    """The defaults' learner through the kernel and through ``Adam.step``: the same model after 40 batches."""
    torch.manual_seed(0)
    direct = OnlineMAS(MLPAutoencoder(10), importance_every=4)
    generic = copy.deepcopy(direct)
    generic.update.step_optimizer.direct = False
    assert direct.update.step_optimizer.direct
    g = torch.Generator().manual_seed(1)
    for i in range(40):
        x = torch.rand(16, 10, generator=g) * (1 + i // 10)
        a, b = direct.learn_many(x), generic.learn_many(x)
        assert torch.equal(a, b)
    for p, q in zip(direct.model.parameters(), generic.model.parameters()):
        assert torch.equal(p, q)
    assert direct.state_dict()["optimizer"]["state"][0]["step"] == 40
