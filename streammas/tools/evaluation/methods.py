"""The methods compared in one ``streammas evaluate`` run.

All but one are :class:`~streammas.OnlineMAS` learners on the same model, batch size and learning rate; they
differ only in what they remember and how:

* ``plain``: the learner's defaults with no memory (``reg_lambda=0, hard_buffer=0``, and ``replay=0`` where
  the learner has a replay memory): online learning, nothing remembered;
* ``buffer``: the hard buffer only (``reg_lambda=0``);
* ``no-mas``: the streammas defaults without the regulariser (``reg_lambda=0``), to show what MAS adds;
* ``streammas``: the learner's defaults;
* ``streammas-buffer``: importance measured on the hard buffer (the task-free paper's setting);
* ``oracle``: the defaults, but consolidating at the true boundaries (the detector switched off), which
  separates the quality of the detector from the quality of the regulariser;
* ``baseline``: the practitioner's baseline (:mod:`~streammas.tools.evaluation.baseline`: Adam at 1e-3, running
  standardisation, reservoir replay), on the same model; no setting of the run changes it;
* ``baseline-bytes``: the baseline with a reservoir of as many bytes as the ``streammas`` method's replay memory
  holds for the stream's samples (:func:`equal_bytes_baseline`); not in :data:`METHODS` (it equals ``baseline``
  while that memory is 500 float32 samples), but in :data:`STRESS_METHODS`;
* ``iid``: ``plain`` on the same samples shuffled, the upper bound.

Overrides (``--set key=value``) change the streammas family (``no-mas``, ``streammas``, ``streammas-buffer``,
``oracle``); the keys in :data:`SHARED` (the optimiser and its learning rate) change every OnlineMAS method, so
the comparison stays fair; ``baseline-bytes`` follows the streammas family's replay settings.

>>> [m.name for m in default_methods()]
['plain', 'buffer', 'no-mas', 'streammas', 'mas', 'mas-only', 'streammas-buffer', 'oracle', 'baseline', 'iid']
>>> m = {m.name: m for m in default_methods({"reg_lambda": 3.0, "lr": 0.05})}
>>> m["streammas"].learner["reg_lambda"], m["plain"].learner["reg_lambda"], m["plain"].learner["lr"]
(3.0, 0.0, 0.05)
>>> m["no-mas"].learner["reg_lambda"], m["baseline"].factory.__name__
(0.0, 'practitioner_baseline')
>>> parse_overrides(["reg_lambda=10", "plateau.window=30", "omega_normalization=max"])
{'reg_lambda': 10, 'plateau': {'window': 30}, 'omega_normalization': 'max'}
"""

from __future__ import annotations

import ast
import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Overrides that apply to every method (the comparison must share the optimiser and its step size).
SHARED = ("lr", "optimizer", "steps_per_batch")
METHODS = ("plain", "buffer", "no-mas", "streammas", "mas", "mas-only", "streammas-buffer", "oracle", "baseline", "iid")
#: The methods of the stress streams (``--benchmarks stress``): streammas and its peers.
STRESS_METHODS = ("plain", "streammas", "baseline", "baseline-bytes", "iid")
#: Every method ``--methods`` accepts.
ALL_METHODS = (*METHODS, "baseline-bytes")
#: MAS's strength in the ``mas`` and ``mas-only`` methods where the defaults under test have none (the measured best
#: of 0.001, 0.01, 0.15; README, results).
MAS_LAMBDA = 0.01
#: The hard buffer of the ``buffer`` and ``streammas-buffer`` methods, unless ``--set hard_buffer=N`` (N > 0) says
#: otherwise: the learner's default has none (see the README's results), and these two methods are about one.
BUFFER_SIZE = 16


@dataclass(frozen=True)
class Method:
    """A named learner configuration.

    :func:`default_methods` makes the methods of a run; :func:`~streammas.tools.evaluation.harness.run_method`
    runs one on a stream, building the learner as ``(factory or OnlineMAS)(model, objective=...,
    **learner)``.

    Parameters
    ----------
    name : str
        The method's name in results and reports.
    learner : dict, default {}
        Keyword arguments for the learner (:class:`~streammas.learner.settings.LearnerSettings`).
    iid : bool, default False
        Learn the stream shuffled (no regimes: the upper bound).
    oracle : bool, default False
        No detector: consolidate at the true boundaries instead.
    factory : callable or None, default None
        The learner class (``OnlineMAS`` when ``None``), so that a variant can be tried without touching the
        library.
    description : str, default ""
        One line for reports.

    Examples
    --------
    >>> from streammas import OnlineMAS
    >>> from streammas.models import MLPAutoencoder
    >>> strong = Method("strong-memory", {"reg_lambda": 1.0}, description="ten times the default memory")
    >>> learner = (strong.factory or OnlineMAS)(MLPAutoencoder(in_features=8, hidden=(16,), latent=4),
    ...                                        **strong.learner)
    >>> learner.reg_lambda, strong.iid, strong.oracle
    (1.0, False, False)
    >>> oracle = {m.name: m for m in default_methods()}["oracle"]
    >>> oracle.oracle, oracle.description
    (True, 'consolidation at the true boundaries')
    """

    name: str
    learner: dict[str, Any] = field(default_factory=dict)
    iid: bool = False
    oracle: bool = False
    factory: Callable | None = None
    description: str = ""


class NeverDetector:
    """A plateau detector that never fires (the oracle consolidates at the true boundaries instead).

    It has the detector's interface (``update``, ``state_dict``, ``load_state_dict``) and can be given to
    :class:`~streammas.OnlineMAS` as its ``plateau``; the caller then consolidates with
    :meth:`~streammas.OnlineMAS.consolidate`.

    Examples
    --------
    >>> import torch
    >>> from streammas import OnlineMAS
    >>> from streammas.models import MLPAutoencoder
    >>> _ = torch.manual_seed(0)
    >>> x = torch.rand(16, 8)
    >>> default = OnlineMAS(MLPAutoencoder(in_features=8, hidden=(16,), latent=4), lr=0.05)
    >>> never = OnlineMAS(MLPAutoencoder(in_features=8, hidden=(16,), latent=4), lr=0.05, plateau=NeverDetector())
    >>> for _ in range(300):
    ...     _ = default.learn_many(x), never.learn_many(x)
    >>> default.flush(), never.flush()
    (None, None)
    >>> default.counters["plateaus"] > 0, never.counters["plateaus"]
    (True, 0)
    >>> never.consolidate()  # the oracle's consolidation at a boundary
    >>> never.consolidations
    1
    """

    def update(self, value: float) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        return None


def parse_value(text: str) -> Any:
    """``"10"`` -> 10, ``"0.5"`` -> 0.5, ``"None"`` -> None, ``"max"`` -> ``"max"``."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``["key=value", "plateau.window=30"]`` -> a dict of learner keyword arguments."""
    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise ValueError(f"an override is key=value, got {item!r}")
        key, text = item.split("=", 1)
        key, value = key.strip(), parse_value(text.strip())
        if key.startswith("plateau."):
            plateau = out.setdefault("plateau", {})
            if not isinstance(plateau, dict):
                raise ValueError("plateau.* overrides cannot be combined with plateau=...")
            plateau[key.split(".", 1)[1]] = value
        else:
            out[key] = value
    return out


def no_memory() -> dict[str, Any]:
    """The settings that switch every memory of the learner off: no regulariser, no hard buffer, no replay
    (``replay`` only where the learner has that setting)."""
    from streammas.learner import learner_defaults

    off: dict[str, Any] = {"reg_lambda": 0.0, "hard_buffer": 0}
    if "replay" in learner_defaults():
        off["replay"] = 0
    return off


def replay_nbytes(model: Any, settings: Mapping[str, Any], x: Any, objective: str = "reconstruction",
                  factory: Callable | None = None) -> int:
    """Bytes of the replay memory a learner (``factory``, default :class:`~streammas.OnlineMAS`) with ``settings``
    keeps for samples like ``x`` (in their own dtype) once full: measured (``state_nbytes()["replay"]``) on a copy
    of ``model`` that learns the first of them (the memory allocates all its slots at its first sample), so that
    it follows whatever the memory keeps and how.

    >>> import torch
    >>> from streammas.models import MLPAutoencoder
    >>> model = MLPAutoencoder(in_features=8, hidden=(16,), latent=4)
    >>> replay_nbytes(model, {}, torch.rand(10, 8)), replay_nbytes(model, {"replay": 20}, torch.rand(10, 8))
    (4194304, 640)
    """
    import torch

    from streammas.learner import OnlineMAS

    probe = (factory or OnlineMAS)(copy.deepcopy(model), objective=objective, **settings)
    rows = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)[:1]
    probe.learn_many(rows, torch.zeros(1, dtype=torch.int64) if objective == "classification" else None)
    probe.flush()
    return int(probe.state_nbytes()["replay"])


def equal_bytes_baseline(model: Any, *, objective: str = "reconstruction", seed: int = 0,
                         streammas: Mapping[str, Any] | None = None, learner_factory: Callable | None = None,
                         **settings: Any):
    """The practitioner's baseline with a reservoir of as many bytes as streammas's replay memory: the budget is
    :func:`replay_nbytes` of the streammas learner (``learner_factory``, default OnlineMAS) with the
    ``streammas`` settings, measured on the first batch.

    >>> import torch
    >>> from streammas.models import MLPAutoencoder
    >>> b = equal_bytes_baseline(MLPAutoencoder(in_features=8, hidden=(16,), latent=4), streammas={"replay": 20})
    >>> _ = b.learn_many(torch.rand(10, 8))
    >>> b.capacity, b.memory_nbytes()
    (20, 640)
    """
    from streammas.tools.evaluation.baseline import practitioner_baseline

    template = copy.deepcopy(model)  # as the baseline starts: a probe must not see it trained
    options = dict(streammas or {})

    def budget(x: Any) -> int:
        return replay_nbytes(template, options, x, objective, learner_factory)

    return practitioner_baseline(model, objective=objective, seed=seed, reservoir_bytes=budget, **settings)


def default_methods(overrides: Mapping[str, Any] | None = None, names: Sequence[str] = METHODS,
                    factory: Callable | None = None) -> list[Method]:
    """The methods of a run, with ``overrides`` applied (see the module's docstring)."""
    from streammas.tools.evaluation.baseline import practitioner_baseline

    overrides = dict(overrides or {})
    off = no_memory()
    shared = {k: v for k, v in overrides.items() if k in SHARED}
    tuned = dict(overrides)
    # The two buffer methods need a buffer even where the defaults under test have none.
    buffer_size = {"hard_buffer": overrides.get("hard_buffer") or BUFFER_SIZE}
    # The budget follows the streammas method's memory: its settings, and its learner where a variant is tried.
    same_bytes: dict[str, Any] = {"streammas": tuned, **({"learner_factory": factory} if factory else {})}
    specs = {
        "plain": Method("plain", {**shared, **off}, description="the learner's defaults, nothing remembered"),
        "buffer": Method("buffer", {**shared, "reg_lambda": 0.0, **buffer_size}, description="hard buffer only"),
        "no-mas": Method("no-mas", {**tuned, "reg_lambda": 0.0}, factory=factory,
                         description="streammas defaults without the regulariser"),
        "streammas": Method("streammas", tuned, factory=factory, description="streammas defaults"),
        "mas": Method("mas", {"reg_lambda": MAS_LAMBDA, **tuned}, factory=factory,
                      description="streammas defaults with the regulariser on (beside replay)"),
        "mas-only": Method("mas-only", {"reg_lambda": MAS_LAMBDA, **tuned, "replay": 0}, factory=factory,
                           description="the regulariser as the only memory (no replay)"),
        "streammas-buffer": Method("streammas-buffer", {**tuned, **buffer_size, "importance_source": "buffer"},
                                   factory=factory,
                                   description="importance on the hard buffer"),
        "oracle": Method("oracle", tuned, oracle=True, factory=factory,
                         description="consolidation at the true boundaries"),
        "baseline": Method("baseline", {}, factory=practitioner_baseline,
                           description="Adam 1e-3, running standardisation, 500-sample reservoir replay"),
        "baseline-bytes": Method("baseline-bytes", same_bytes, factory=equal_bytes_baseline,
                                 description="the baseline with as many bytes of reservoir as streammas's replay"),
        "iid": Method("iid", {**shared, **off}, iid=True,
                      description="plain on the shuffled stream (upper bound)"),
    }
    unknown = [n for n in names if n not in specs]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {', '.join(ALL_METHODS)}")
    return [specs[n] for n in names]
