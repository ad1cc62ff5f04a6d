"""The hot path never stops for the host: a learner reads device values once every ``sync_every`` steps, and
only through ``streammas.backend.hostsync.host_read``. Validating host-side input (numpy arrays, CPU tensors) is host
work and is not counted."""

import sys

import numpy as np
import pytest
import torch

from streammas import OnlineMAS
from streammas.backend import hostsync
from streammas.models import ConvAutoencoder, MLPAutoencoder

#: Functions allowed to look at tensor values: the one door, and the validation of host-side input.
# cpu_read: the one door for a value in host memory (it refuses a device tensor), where waiting is impossible.
# cpu_view: the same door for a NumPy view of a tensor in host memory.
ALLOWED = {("hostsync.py", "host_read"), ("hostsync.py", "cpu_read"), ("hostsync.py", "cpu_view"),
           ("inputs.py", "prepare"),
           ("inputs.py", "_finite_rows"), ("inputs.py", "to_tensor")}
READERS = ("item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def hidden_reads(monkeypatch):
    """Every read of a tensor's value by the host that does not come from an allowed function."""
    found: list[str] = []

    def guard(name, original):
        def wrapper(self, *args, **kwargs):
            frame = sys._getframe(1)
            allowed = False
            while frame is not None:
                code = frame.f_code
                if (code.co_filename.rsplit("/", 1)[-1], code.co_name) in ALLOWED:
                    allowed = True
                    break
                frame = frame.f_back
            if not allowed:
                caller = sys._getframe(1).f_code
                found.append(f"Tensor.{name} from {caller.co_filename}:{caller.co_name}")
            return original(self, *args, **kwargs)

        return wrapper

    for name in READERS:
        monkeypatch.setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
    return found


def _batches(n, batch=10, features=32, seed=0):
    rng = np.random.default_rng(seed)
    patterns = (rng.random((6, features)) < 0.3).astype(np.float32)
    for _ in range(n):
        x = patterns[rng.integers(0, 6, batch)] + 0.05 * rng.standard_normal((batch, features)).astype(np.float32)
        yield x


def _reads_during(fn) -> int:
    before = hostsync.host_reads()
    fn()
    return hostsync.host_reads() - before


@pytest.mark.parametrize("as_tensor", [False, True], ids=["numpy", "cpu-tensor"])
def test_at_most_one_read_per_sync_period_with_default_settings(as_tensor, hidden_reads):
    torch.manual_seed(0)
    learner = OnlineMAS(MLPAutoencoder(32, hidden=(16,), latent=4))
    periods = 6
    data = list(_batches(periods * learner.sync_every))
    if as_tensor:
        data = [torch.from_numpy(x) for x in data]

    def run(chunk):
        for x in chunk:
            learner.learn_many(x)

    half = len(data) // 2
    assert _reads_during(lambda: run(data[:half])) <= half // learner.sync_every
    learner.consolidate()  # from here on the regulariser runs on every step, gated on the device
    assert _reads_during(lambda: run(data[half:])) <= (len(data) - half) // learner.sync_every
    assert learner.consolidations >= 1
    assert hidden_reads == []


def test_plateaus_peaks_and_consolidations_need_no_extra_reads(hidden_reads):
    """Detector decisions, snapshots and consolidations all happen on the host at sync time."""
    torch.manual_seed(1)
    learner = OnlineMAS(MLPAutoencoder(32, hidden=(16,), latent=4), lr=0.05,
                        plateau={"window": 5, "patience": 3, "min_drop": 0.3, "progress_steps": 5})
    steps = 40 * learner.sync_every
    first = list(_batches(steps // 2, seed=1))
    second = [3.0 * x for x in _batches(steps // 2, seed=2)]  # a new regime: the loss jumps

    def run():
        for x in first + second:
            learner.learn_many(x)

    assert _reads_during(run) <= steps // learner.sync_every
    assert learner.counters["plateaus"] >= 1 and learner.consolidations >= 1
    assert hidden_reads == []


@pytest.mark.parametrize("settings", [{"importance_method": "hebbian"}, {"importance_every": 3},
                                      {"optimizer": "adam"}, {"consolidate_at": "plateau"}])
def test_other_settings_keep_the_promise(settings, hidden_reads):
    torch.manual_seed(2)
    learner = OnlineMAS(ConvAutoencoder(1, channels=(2, 3)), **settings)
    x = torch.rand(4 * learner.sync_every, 4, 1, 8, 8)

    def run():
        for k, xb in enumerate(x):
            learner.learn_many(xb)
            if k == 10:
                learner.consolidate()

    assert _reads_during(run) <= 4
    assert hidden_reads == []


def test_a_non_fused_optimizer_reads_the_loss_every_step():
    """The one documented exception: an optimizer that cannot skip a step on a device flag."""
    learner = OnlineMAS(MLPAutoencoder(8, hidden=(8,), latent=2),
                        optimizer=lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9))
    assert _reads_during(lambda: [learner.learn_many(torch.rand(4, 8)) for _ in range(16)]) == 16 + 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_hot_path_never_synchronises():
    torch.manual_seed(3)
    learner = OnlineMAS(MLPAutoencoder(32, hidden=(16,), latent=4), device="cuda")
    data = list(_batches(3 * learner.sync_every))
    for x in data[: learner.sync_every]:
        learner.learn_many(x)
    learner.consolidate()
    torch.cuda.synchronize()
    try:
        torch.cuda.set_sync_debug_mode("error")
        for x in data[learner.sync_every: 2 * learner.sync_every - 1]:  # stops short of the sync step
            learner.learn_many(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_the_guard_sees_a_hidden_read(hidden_reads):
    t = torch.ones(2)
    if t.sum():  # an implicit __bool__: a synchronisation on a GPU
        float(t[0])
    assert len(hidden_reads) == 2
    hidden_reads.clear()
