"""``streammas bench river``: the river estimators' own cost, per input width (9, 64, 784 features).

- one at a time: ``MASAutoencoder`` (its defaults) scoring then learning each river feature dict, in samples per
  second; beside it deep-river's ``Autoencoder`` (the same network sizes, SGD at the same step size) doing the
  same, against the target of at least 5x deep-river's speed. deep-river's releases pin river and torch versions
  of their own (0.3.4: river 0.25, torch 2.5), so it runs in the interpreter of its own environment given by
  ``--deep-river-python``, timed there (CPU time, after the same warm-up), once per round;
- a dataframe at a time: ``score_many`` then ``learn_many`` on pandas dataframes of ``--frame-rows`` rows whose
  columns come in another order than the model's (so they are reordered), against the same learner given the
  same rows as tensors (``score_many``, then ``learn_many`` on the estimator's micro-batches): target at least
  0.9x. The two are timed in rounds of their own (three times as many, an even number, each first in half
  of them).

Medians of interleaved rounds, one torch thread, process CPU time (:mod:`streammas.tools.bench.timing`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys

import numpy as np
import torch

from streammas.tools.bench import timing

TARGETS = {"vs_deep_river": 5.0, "frame_vs_tensor": 0.9}
#: Dataframes timed per round (and tensors of the same rows).
FRAME_BLOCKS = 8
#: Rounds of the dataframe pair per round of the rest.
PAIR_ROUNDS = 3


def add_arguments(parser: argparse.ArgumentParser) -> None:
    timing.add_common_arguments(parser, repeats=7)
    parser.add_argument("--widths", nargs="+", type=int, default=[9, 64, 784], help="features per sample")
    parser.add_argument("--samples", type=int, default=200, help="samples per timed block, one at a time")
    parser.add_argument("--frame-rows", type=int, default=200, help="rows per dataframe")
    parser.add_argument("--deep-river-python", default=None,
                        help="a Python interpreter that imports deep-river (whose releases pin their own river and "
                             "torch): deep-river's one-at-a-time speed is timed there, once per round (default: not "
                             "measured)")


def _rows(width: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, width)).astype(np.float32)


#: deep-river's autoencoder scoring then learning one sample at a time, timed in the interpreter that has it
#: (argv: width, samples, seed, hidden widths, latent); prints the CPU seconds per sample.
PEER_SCRIPT = """
import json, sys, time
import numpy as np, torch
from deep_river.anomaly import Autoencoder
torch.set_num_threads(1)
width, n, seed = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
hidden, latent = json.loads(sys.argv[4]), int(sys.argv[5])
sizes = [width, *hidden, latent, *reversed(hidden), width]
layers = []
for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
    layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(sizes) - 2 else [])
torch.manual_seed(seed)
model = Autoencoder(module=torch.nn.Sequential(*layers), lr=0.05, optimizer_fn="sgd", seed=seed)
rows = np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)
names = [f"f{j}" for j in range(width)]
dicts = [dict(zip(names, map(float, row))) for row in rows]
for x in dicts[:200]:
    model.learn_one(x)
start = time.process_time()
for x in dicts:
    model.score_one(x)
    model.learn_one(x)
print(json.dumps((time.process_time() - start) / len(dicts)))
"""


def _deep_river_seconds(python: str, width: int, samples: int, seed: int) -> float:
    """deep-river's CPU seconds per sample, scored then learned one at a time, timed by ``python``."""
    from streammas.models import autoencoder_sizes

    hidden, latent = autoencoder_sizes(width)
    env = dict(os.environ, OMP_WAIT_POLICY=timing.WAIT_POLICY)
    done = subprocess.run([python, "-c", PEER_SCRIPT, str(width), str(samples), str(seed), json.dumps(list(hidden)),
                           str(latent)], capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"--deep-river-python {python}: deep-river did not run:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _one_at_a_time(model, dicts: list[dict]) -> callable:
    state = {"i": 0}

    def block() -> None:
        i = state["i"]
        for x in dicts[i: i + 10]:
            model.score_one(x)
            model.learn_one(x)
        state["i"] = (i + 10) % len(dicts)

    return block


def bench_width(width: int, args: argparse.Namespace, env: dict) -> dict:
    import pandas as pd

    from streammas.river import MASAutoencoder

    names = [f"f{j}" for j in range(width)]  # sorted as strings, the model's order differs from this one
    data = _rows(width, max(args.samples, 10) * 4, args.seed)
    dicts = [dict(zip(names, map(float, row))) for row in data]
    variants: dict[str, callable] = {}
    ours = MASAutoencoder(seed=args.seed)
    for x in dicts[:200]:
        ours.learn_one(x)
    variants["ours_one"] = _one_at_a_time(ours, dicts)
    peer = args.deep_river_python
    if peer is not None:  # a round of the peer: one run of the interpreter that has it, timed there
        variants["deep_river_one"] = lambda: peer_runs.append(
            _deep_river_seconds(peer, width, max(args.samples, 10), args.seed))
    peer_runs: list[float] = []

    frames_est = MASAutoencoder(seed=args.seed)
    frames = [pd.DataFrame(data[s: s + args.frame_rows], columns=names)
              for s in range(0, len(data) - args.frame_rows + 1, args.frame_rows)]
    frames_est.learn_many(frames[0])
    learner = copy.deepcopy(frames_est.learner_)  # the same learner, fed tensors in the model's column order
    order = [names.index(n) for n in frames_est.features_]
    tensors = [torch.from_numpy(np.ascontiguousarray(f.to_numpy(np.float32)[:, order])) for f in frames]
    step = frames_est.batch_size

    def on_frame(frame) -> None:
        frames_est.score_many(frame)
        frames_est.learn_many(frame)

    def on_tensor(x: torch.Tensor) -> None:
        learner.score_many(x)
        for s in range(0, x.shape[0], step):
            learner.learn_many(x[s: s + step])

    pair = {"frame": timing.cycle(on_frame, frames), "tensor": timing.cycle(on_tensor, tensors)}
    # a dataframe round times FRAME_BLOCKS frames: one frame (a few milliseconds) is at the mercy of where the
    # learner's periodic work (the importance every 16th batch, a consolidation) falls
    blocks = {"ours_one": max(1, args.samples // 10), "deep_river_one": 1, "frame": FRAME_BLOCKS,
              "tensor": FRAME_BLOCKS}
    # Each timed block after an untimed call (deep-river is timed after its own warm-up, in its process): the
    # variant that follows the deep-river process finds the caches that process emptied
    warm = {"ours_one": 1, "frame": 1, "tensor": 1}
    runs = timing.interleaved(variants, blocks, repeats=args.repeats, sync=lambda: None, clock=env["clock"],
                              warm=warm)
    # the dataframes and their tensors in rounds of their own, each first in half of them, three times as many
    # (short ones: a round of 8 frames takes some 0.1 s, and a shared machine moves it by half)
    runs |= timing.interleaved(pair, blocks, repeats=PAIR_ROUNDS * args.repeats + args.repeats % 2,
                               sync=lambda: None, clock=env["clock"], warm=warm)
    if peer is not None:
        runs["deep_river_one"] = [t * 10 for t in peer_runs]  # per block of ten samples, as ours
    med = {name: timing.median(r) for name, r in runs.items()}
    per_sample = {name: med[name] / (10 if name.endswith("_one") else args.frame_rows) for name in med}
    out = {"width": width, "seconds_per_sample": per_sample, "runs": runs,
           "frame_vs_tensor": med["tensor"] / med["frame"], "deep_river": peer is not None}
    if peer is not None:
        out["vs_deep_river"] = med["deep_river_one"] / med["ours_one"]
    return out


def report(result: dict) -> str:
    lines = ["streammas bench river: the river estimators, one sample and one dataframe at a time",
             *timing.describe(result["env"]), ""]
    rows = []
    for c in result["cases"]:
        sps = {k: 1.0 / v for k, v in c["seconds_per_sample"].items()}
        peer = (f"{c['vs_deep_river']:.2f}x " + timing.verdict(c["vs_deep_river"], TARGETS["vs_deep_river"],
                                                                  at_least=True)
                if c["deep_river"] else "not measured (--deep-river-python)")
        rows.append([c["width"], f"{sps['ours_one']:,.0f}", peer, f"{sps['frame']:,.0f}", f"{sps['tensor']:,.0f}",
                     f"{c['frame_vs_tensor']:.2f}x",
                     timing.verdict(c["frame_vs_tensor"], TARGETS["frame_vs_tensor"], at_least=True)])
    lines += timing.table(["width", "one at a time, samples/s", "vs deep-river learn_one", "dataframes, samples/s",
                           "learner on tensors", "ratio", "target"], rows,
                          [True, True, False, True, True, True, False])
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if timing.needs_fresh_process(args):
        return timing.run_in_fresh_process("streammas.tools.bench.river", add_arguments, args)
    env = timing.setup(args)
    result = {"benchmark": "river", "env": env, "cases": [bench_width(w, args, env) for w in args.widths]}
    print(json.dumps(result, indent=2) if args.json else report(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="streammas bench river", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
