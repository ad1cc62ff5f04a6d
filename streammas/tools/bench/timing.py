"""What the torch benchmarks (``step``, ``importance``, ``memory``) share: the environment they pin, interleaved
timing, memory readings, the models and data they run on, and a plain-text table.

Figures are medians over rounds in which every variant runs once, in a rotating order, so that a change in
the machine's load hits all variants alike; ratios compare variants measured in the same run, never absolute
timings across runs. On a CPU with one torch thread the clock is the process's CPU time by default (a noisy
neighbour steals wall time, not CPU time); on CUDA it is wall time between synchronisations.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import torch

WAIT_POLICY = "PASSIVE"
MODELS = ("mlp", "conv")
MODEL_LABELS = {"mlp": "MLP AE 784-256-64-256-784", "conv": "conv AE 1x28x28, 16-32 ch"}


def add_common_arguments(parser: argparse.ArgumentParser, *, repeats: int) -> None:
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: stable figures on a shared machine)")
    parser.add_argument("--repeats", type=int, default=repeats, help="interleaved rounds; medians are reported")
    parser.add_argument("--clock", choices=("auto", "cpu", "wall"), default="auto",
                        help="auto: process CPU time on a CPU with one thread, wall time otherwise")
    parser.add_argument("--quick", action="store_true", help="fewer rounds and shorter blocks (a smoke test)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and the models")


# -- environment ------------------------------------------------------------------------------------------------
def _initial_environ(name: str) -> str | None:
    """A variable's value in the environment this process started with (what OpenMP read when it loaded)."""
    try:
        with open("/proc/self/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                key, _, value = item.partition(b"=")
                if key.decode(errors="replace") == name:
                    return value.decode(errors="replace")
    except OSError:
        return None
    return None


def rebuild_argv(add_arguments: Callable[[argparse.ArgumentParser], None], args: argparse.Namespace) -> list[str]:
    """The command line that parses to ``args`` under the options ``add_arguments`` declares."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    argv: list[str] = []
    for action in parser._actions:
        if not action.option_strings or action.dest == "help" or not hasattr(args, action.dest):
            continue
        value = getattr(args, action.dest)
        if value == action.default:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            argv.append(flag)
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


def needs_fresh_process(args: argparse.Namespace) -> bool:
    """OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads: with more than one thread and no policy in the
    environment the process started with, the benchmark must run in a child started with it."""
    return args.threads > 1 and not os.environ.get("OMP_WAIT_POLICY") and args.device == "cpu"


def run_in_fresh_process(module: str, add_arguments, args: argparse.Namespace) -> int:
    env = dict(os.environ, OMP_WAIT_POLICY=WAIT_POLICY)
    return subprocess.call([sys.executable, "-m", module, *rebuild_argv(add_arguments, args)], env=env)


def setup(args: argparse.Namespace) -> dict:
    """Pin torch's threads and describe the environment the figures were taken in."""
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available")
    if args.threads < 1 or args.repeats < 1:
        raise SystemExit("--threads and --repeats must be >= 1")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    policy = os.environ.get("OMP_WAIT_POLICY")
    at_start = _initial_environ("OMP_WAIT_POLICY")
    if policy is None:
        effect = "not set: OpenMP default (idle threads spin)" if args.threads > 1 else "not set; moot with 1 thread"
    elif at_start == policy:
        effect = f"{policy}, in effect (set before torch loaded)"
    else:
        effect = f"{policy}, set in-process (in effect only if set before torch loaded)"
    clock = args.clock
    if clock == "auto":
        clock = "cpu" if args.device == "cpu" and args.threads == 1 else "wall"
    device = torch.device(args.device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    return {
        "device": args.device,
        "device_name": name,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": policy,
        "omp_wait_policy_effect": effect,
        "clock": clock,
        "repeats": args.repeats,
        "quick": bool(args.quick),
    }


def describe(env: dict) -> list[str]:
    clock = "process CPU time" if env["clock"] == "cpu" else "wall time"
    return [
        f"device {env['device']} ({env['device_name']}), torch {env['torch']}, Python {env['python']}",
        f"torch threads {env['threads']}; OMP_WAIT_POLICY {env['omp_wait_policy_effect']}; clock: {clock}",
        f"medians of {env['repeats']} interleaved rounds" + (" (--quick)" if env["quick"] else ""),
    ]


# -- timing -------------------------------------------------------------------------------------------------------
def synchronizer(device: str) -> Callable[[], None]:
    if device == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _clock(kind: str) -> Callable[[], float]:
    return time.process_time if kind == "cpu" else time.perf_counter


def calibrate(fn: Callable[[], None], *, seconds: float, sync: Callable[[], None], clock: str,
              multiple: int = 1, cap: int = 10_000) -> int:
    """How many calls make a timed block of at least ``seconds`` (a multiple of ``multiple``)."""
    now = _clock(clock)
    calls = multiple
    while True:
        sync()
        t0 = now()
        for _ in range(calls):
            fn()
        sync()
        elapsed = now() - t0
        if elapsed >= seconds or calls >= cap:
            return calls
        grow = max(2, int(seconds / max(elapsed, 1e-6) * 1.2))
        calls = min(cap, -(-calls * grow // multiple) * multiple)


def interleaved(variants: dict[str, Callable[[], None]], blocks: dict[str, int], *, repeats: int,
                sync: Callable[[], None], clock: str, warm: dict[str, int] | None = None) -> dict[str, list[float]]:
    """Seconds per call of each variant, one figure per round; every round runs every variant once. ``warm``:
    calls of a variant made untimed before each of its timed blocks (where another process ran in between and
    emptied the caches)."""
    now = _clock(clock)
    names = list(variants)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn, calls = variants[name], blocks[name]
            for _ in range((warm or {}).get(name, 0)):
                fn()
            sync()
            t0 = now()
            for _ in range(calls):
                fn()
            sync()
            runs[name].append((now() - t0) / calls)
    return runs


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# -- memory -------------------------------------------------------------------------------------------------------
def rss_bytes() -> int:
    """The process's resident memory now (Linux: /proc/self/statm; elsewhere the peak, the best known)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """The process's peak resident memory: since :func:`reset_peak_rss` where Linux allows it (VmHWM), else
    since the process started."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Make the current resident memory the peak (Linux: ``/proc/self/clear_refs``); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


# -- models and data ----------------------------------------------------------------------------------------------
def make_model(kind: str, device: str, seed: int = 0) -> torch.nn.Module:
    from streammas.models import ConvAutoencoder, MLPAutoencoder

    torch.manual_seed(seed)
    if kind == "mlp":
        model = MLPAutoencoder(784, hidden=(256,), latent=64)
    elif kind == "conv":
        model = ConvAutoencoder(1, channels=(16, 32))
    else:
        raise ValueError(f"unknown model {kind!r}; choose from {MODELS}")
    return model.to(device)


def sample_shape(kind: str) -> tuple[int, ...]:
    return (784,) if kind == "mlp" else (1, 28, 28)


def make_batches(kind: str, batch: int, count: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(batch, *sample_shape(kind), generator=g).to(device) for _ in range(count)]


def stream_batches(kind: str, batch: int, count: int, device: str, seed: int = 0) -> list[torch.Tensor]:
    """Batches as a stream delivers them: in host memory (pinned when a GPU will take them)."""
    batches = make_batches(kind, batch, count, "cpu", seed)
    return [b.pin_memory() for b in batches] if device == "cuda" else batches


def plain_step(model: torch.nn.Module, lr: float, optimizer: str = "sgd", *,
               second_backward: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """The baseline: a hand-written online step of ``optimizer`` (the learner's default, built as the learner
    builds it) on the per-sample reconstruction error (the batch is moved to the model's device first, as the
    learner does).

    ``second_backward``: also one more backward pass through the same graph, from another output gradient (that
    of ``sum_k ||F(x_k)||^2``), to every parameter. Exact importance needs at least that much more work (the
    deltas of its own seed, and one weight-shaped product per layer), so this variant is a floor for it.
    """
    from streammas.learner import make_optimizer

    params = list(model.parameters())
    opt = make_optimizer(optimizer, params, lr)
    device = params[0].device

    def step(x: torch.Tensor) -> torch.Tensor:
        x = x.to(device, non_blocking=True)
        out = model(x)
        losses = (out - x).pow(2).reshape(x.shape[0], -1).mean(dim=1)
        if second_backward:
            torch.autograd.grad(out, params, grad_outputs=2.0 * out.detach(), retain_graph=True)
        opt.zero_grad(set_to_none=True)
        losses.mean().backward()
        opt.step()
        return losses.detach()

    return step


def cycle(fn: Callable[[torch.Tensor], object], batches: list[torch.Tensor]) -> Callable[[], None]:
    """A no-argument call that feeds ``fn`` the next batch of a fixed pool."""
    state = {"i": 0}

    def call() -> None:
        i = state["i"]
        fn(batches[i])
        state["i"] = (i + 1) % len(batches)

    return call


# -- output ---------------------------------------------------------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[bool]) -> list[str]:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if r else v.ljust(w) for v, w, r in zip(values, widths, right)).rstrip()

    return [line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)]


def verdict(value: float, limit: float, *, at_least: bool) -> str:
    ok = value >= limit if at_least else value <= limit
    return f"{'>=' if at_least else '<='} {limit:g}: {'met' if ok else 'MISSED'}"
