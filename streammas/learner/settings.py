"""Settings with one source of truth: each key's default, accepted values, check and one-line help, in one place.

A settings class is a frozen dataclass whose fields are made with :func:`setting`. Its ``__post_init__`` calls
:func:`check_settings`, so a bad value raises a ``ValueError`` that names the key, and the service's
configuration (``streammas.config``) derives its ``[learner]`` and ``[learner.plateau]`` sections from the
same fields: the same defaults, choices, checks and help, never a copy.

>>> from dataclasses import dataclass
>>> @dataclass(frozen=True)
... class Example:
...     size: int = setting(4, help="how many", check=at_least(1))
...     kind: str = setting("a", help="which", choices=("a", "b"))
...     def __post_init__(self):
...         check_settings(self)
>>> Example(size=2)
Example(size=2, kind='a')
>>> Example(size=0)
Traceback (most recent call last):
...
ValueError: size must be >= 1; got 0
>>> Example(kind="c")
Traceback (most recent call last):
...
ValueError: kind must be one of 'a', 'b'; got 'c'
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

from streammas.learner.importance import METHODS
from streammas.learner.objectives import OBJECTIVES
from streammas.learner.optimizers import OPTIMIZERS
from streammas.learner.retention import RETENTIONS
from streammas.learner.retrieval import RETRIEVALS
from streammas.learner.scaling import SCALE_MODES
from streammas.learner.synapses import CONSOLIDATION_MODES, NORMALIZATIONS

Check = Callable[[Any], "str | None"]


def setting(default: Any, *, help: str, choices: tuple | None = None, check: Check | None = None,
            toml: type | None = None, in_config: bool = True) -> Any:
    """A settings field: its default, one-line ``help``, accepted ``choices`` (for string values) and a ``check``
    returning what is wrong with a value, or ``None``.

    ``toml`` is the type a configuration file gives (when the field also accepts Python objects, such as a
    callable optimizer); ``in_config=False`` keeps a key out of configuration files.
    """
    meta = {"help": help, "choices": choices, "check": check, "toml": toml, "in_config": in_config}
    return dataclasses.field(default=default, metadata=meta)


def problem_with(f: dataclasses.Field, value: Any) -> str | None:
    """What is wrong with ``value`` for field ``f`` (``None``: nothing), by its choices and its check."""
    choices = f.metadata.get("choices")
    if choices and isinstance(value, str) and value not in choices:
        return f"must be one of {', '.join(map(repr, choices))}"
    check = f.metadata.get("check")
    if check is not None and value is not None and not callable(value):
        return check(value)
    return None


def check_settings(settings: Any) -> None:
    """Raise ``ValueError`` naming the first field of a settings dataclass whose value is not accepted."""
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        problem = problem_with(f, value)
        if problem:
            raise ValueError(f"{f.name} {problem}; got {value!r}")


# -- checks ---------------------------------------------------------------------------------------------------------
def positive(value: Any) -> str | None:
    """Finite and > 0."""
    return None if _finite(value) and value > 0 else "must be > 0"


def non_negative(value: Any) -> str | None:
    """Finite and >= 0."""
    return None if _finite(value) and value >= 0 else "must be >= 0"


def at_least(low: int) -> Check:
    """An integer check: ``value >= low``."""

    def check(value: Any) -> str | None:
        return None if value >= low else f"must be >= {low}"

    return check


def in_unit_interval(*, closed_low: bool, closed_high: bool) -> Check:
    """``value`` in the interval from 0 to 1 with the ends as given."""
    low, high = ("[" if closed_low else "("), ("]" if closed_high else ")")

    def check(value: Any) -> str | None:
        above = value >= 0 if closed_low else value > 0
        below = value <= 1 if closed_high else value < 1
        return None if _finite(value) and above and below else f"must be in {low}0, 1{high}"

    return check


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# -- the learner's settings -----------------------------------------------------------------------------------------
#: When a regime is consolidated: at its plateau, or at the next peak with the weights the plateau held.
CONSOLIDATE_AT = ("plateau", "peak")
#: Where the importance consolidated comes from: the stream (a running mean) or the hard buffer at a plateau.
IMPORTANCE_SOURCES = ("stream", "buffer")
_IMPORTANCE_METHODS = (*METHODS, "hebbian")  # the meter adds the local rule to output_sensitivity's


@dataclasses.dataclass(frozen=True)
class LearnerSettings:
    """The settings of :class:`~streammas.OnlineMAS`, with their defaults: the one place they are spelled out.

    ``OnlineMAS(model, lr=0.01)`` builds one from its keywords; ``streammas run --help-config`` lists them
    as the ``[learner]`` section (``plateau`` is the ``[learner.plateau]`` table, see
    :class:`~streammas.learner.plateau.PlateauConfig`).

    Parameters
    ----------
    objective : str or callable, default "reconstruction"
        ``"reconstruction"``, ``"classification"`` (labels required) or ``(output, x, y) -> losses``.
    optimizer : str or callable, default "adam"
        ``"sgd"``, ``"adam"`` or a callable ``params -> torch.optim.Optimizer``. Adam converges within a regime
        at any width and scale (``streammas evaluate``: SGD at 0.05 barely learned 784-pixel inputs).
    lr : float, default 1e-3
        The optimizer's learning rate (0: the model is scored, not trained).
    reg_lambda : float, default 0.0
        Strength of the regulariser ``lambda * sum Omega (theta - theta*)^2``; 0 disables it. Off by default:
        beside the replay memory it gained nothing beyond noise on 16 streams and cost up to 90% on wide
        reconstruction streams (README, results); without replay (``replay=0``) 0.01 is the setting measured
        to help.
    hard_buffer : int, default 0
        How many high-loss samples are kept and mixed into each update; 0 disables the buffer.
    hard_buffer_decay : float, default 0.8
        A held sample competes for its place with its current loss, but at most with its last key times this,
        so that an outlier the model cannot fit gives way after a while instead of being replayed at every
        step (1: the plain highest-loss buffer, which diverges on heavy-tailed streams).
    importance_every : int, default 16
        Measure the online importance on every k-th batch. The running importance is a mean over a whole
        regime, so a sample of its batches estimates it well: with 16 the evaluation's results are those of
        measuring every batch (README, results), for a sixteenth of the cost (``streammas bench step``).
    importance_source : {"stream", "buffer"}, default "stream"
        ``"stream"`` (online running average) or ``"buffer"`` (measured on the hard buffer at consolidation
        time, the task-free paper's choice; needs ``hard_buffer > 0``).
    importance_method : {"auto", "fast", "vmap", "loop", "approx", "hebbian"}, default "auto"
        See :func:`streammas.learner.importance.output_sensitivity`, or ``"hebbian"`` for the local rule that needs
        no backward pass.
    importance_output : str or None, default None
        Name of the submodule whose output sensitivity is measured (``None``: the model's).
    consolidation : {"mean", "sum", "ema"}, default "mean"
        How each regime's importance enters Omega.
    ema_alpha : float, default 0.5
        Weight of a new regime with ``consolidation="ema"``, in (0, 1].
    omega_normalization : {"mean", "max", "tensor", "none"}, default "mean"
        Rescaling of a regime's importance (see :class:`~streammas.learner.synapses.Synapses`).
    consolidate_at : {"plateau", "peak"}, default "peak"
        ``"plateau"`` consolidates when a plateau is detected; ``"peak"`` keeps a copy of the weights,
        refreshed while the plateau holds, and when the next peak arrives merges the regime's importance into
        Omega and anchors theta* at that copy: the end of the regime, not a half-learned model.
    plateau : PlateauConfig, dict, detector or None, default None
        A :class:`~streammas.learner.plateau.PlateauConfig`, a dict of its fields, or a detector object with
        ``update(value) -> "plateau" | "peak" | "hold" | None`` (for example
        :class:`streammas.river.RiverDriftDetector`); ``None``: the default detector.
    steps_per_batch : int, default 1
        Optimisation steps on each batch.
    sync_every : int, default 16
        The host reads device values (loss window, counters) once every this many steps.
    prox_every : int, default 16
        Apply the regulariser's proximal step once every this many steps, for all of them: as stable, that
        many times cheaper, and with 16 the evaluation's results are those of one step per update.
    prox_metric_floor : float, default 0.0
        Under Adam, the proximal step's metric (Adam's ``sqrt(v_hat) + eps``) is raised to at least this
        fraction of each tensor's mean (0: Adam's own metric, weight by weight).
    fused_step : bool, default True
        Where the model is a chain of linear layers and activations trained by plain SGD on the
        reconstruction error, take the hand-derived step of :class:`~streammas.learner.fused.FusedChain` (autograd's
        numbers up to rounding, with the importance in the same backward pass); ``False``: always autograd.
    compact_state : bool, default True
        Keep Omega, and the weights of a plateau that holds (as their difference from theta*), in bfloat16:
        the state is 2.5x the parameters' bytes, 3x while a plateau holds, instead of 3x and 4x; the running
        importance and theta* stay in the parameters' dtype. Applies to float32 and float64 models.
    recover_after : int, default 64
        After this many updates in a row skipped for a non-finite loss, the learner checks whether its weights
        have diverged, and if theta* (the initial weights before the first consolidation) scores the same
        batch finitely, restores theta* (event ``recovered``); ``0`` never does. Otherwise a learner whose
        weights ran away would skip every update from then on; bad input alone (theta* fails on it too)
        leaves the weights untouched.
    on_bad_input : {"raise", "skip"}, default "raise"
        ``"raise"`` a ValueError naming the bad samples, or ``"skip"`` them (counted).
    scale_inputs : {"running", "frozen", "none"}, default "running"
        Standardise each feature with running statistics on the device
        (:class:`~streammas.learner.scaling.InputScaler`): cumulative over the stream, frozen after a warm-up, or
        not at all (a river pipeline with its own scaler).
    input_clip : float, default 30.0
        Standardised inputs are clipped to ``[-input_clip, input_clip]`` (absurd samples, further from the mean
        than 100 times the stream's largest scale, are counted and left out of the statistics). 30, not 100:
        a feature constant so far (a border pixel, an idle sensor) that starts to move is standardised by a
        deviation near 0 and lands on the clip; at 100 that blew up plain SGD (``streammas evaluate`` and the
        permuted-digits finding in the README).
    scale_floor : float, default 0.0
        No feature is divided by less than this times the stream's typical scale (the median standard deviation
        of the features that vary), so that a feature nearly constant so far does not jump to the clip when it
        moves. Off by default: 0.1 also fixes plain SGD on permuted digits, but under-scales features whose
        scale is legitimately small (breast-cancer features: 2.4 points of accuracy lost).
    replay : int, default 1000000
        At most this many samples in the replay memory on the device (:class:`~streammas.learner.replay.ReplayMemory`);
        its bound in bytes, ``replay_max_bytes``, is what usually binds. 0 disables replay.
    replay_max_bytes : int, default 4194304
        The replay memory's size in bytes (4 MiB, chosen on the stress streams of ``streammas evaluate``: 1 MiB
        closed less of the gap to the i.i.d. bound on wide samples): wide samples keep fewer; samples that arrive
        in a narrower dtype than the model's (``uint8`` pixels) are kept in it, exactly, and more of them fit.
    replay_retention : {"reservoir", "balanced"}, default "reservoir"
        What the memory keeps (:mod:`~streammas.learner.retention`): a uniform reservoir of the stream, or an equal
        share for each pseudo-regime (a new one at each peak of the loss).
    replay_ratio : int, default 2
        Samples replayed with each row of a batch (2: with a large memory, the past weighs more against the newest
        regime; on the stress streams neither the memory's size nor the ratio alone closed half the gap to the
        i.i.d. bound, both together did).
    replay_retrieval : {"uniform", "interfered"}, default "uniform"
        Which stored samples are replayed (:mod:`~streammas.learner.retrieval`): uniform draws, or maximally
        interfered retrieval (the candidates whose loss a virtual step on the new batch raises most).
    replay_candidates : int, default 5
        With ``replay_retrieval = "interfered"``: candidates drawn per sample replayed.
    max_events : int, default 1000
        How many events the learner's history keeps.

    Examples
    --------
    >>> LearnerSettings().reg_lambda, LearnerSettings().replay_max_bytes, LearnerSettings().replay_ratio
    (0.0, 4194304, 2)
    >>> LearnerSettings(importance_source="buffer")
    Traceback (most recent call last):
    ...
    ValueError: importance_source='buffer' needs a hard buffer: set hard_buffer > 0
    """

    objective: Any = setting("reconstruction", help="what the model learns: reconstruction, classification (labels "
                             "required) or, in Python, a function (output, x, y) -> per-sample losses",
                             choices=tuple(OBJECTIVES), toml=str)
    optimizer: Any = setting("adam", help="sgd, adam or, in Python, a function params -> torch.optim.Optimizer",
                             choices=tuple(OPTIMIZERS), toml=str)
    lr: float = setting(1e-3, help="learning rate (0: the model is scored, not trained)", check=non_negative)
    reg_lambda: float = setting(0.0, help="strength of the regulariser lambda * sum Omega (theta - theta*)^2; "
                                "0 disables it", check=non_negative)
    hard_buffer: int = setting(0, help="high-loss samples kept and mixed into each update; 0 disables the buffer",
                               check=at_least(0))
    hard_buffer_decay: float = setting(0.8, help="a held sample competes with at most its last key times this "
                                       "(1: it stays while its loss is among the highest)",
                                       check=in_unit_interval(closed_low=False, closed_high=True))
    importance_every: int = setting(16, help="measure the online importance on every k-th batch", check=at_least(1))
    importance_source: str = setting("stream", help="stream (running average) or buffer (measured on the hard "
                                     "buffer when a plateau holds)", choices=IMPORTANCE_SOURCES)
    importance_method: str = setting("auto", help="importance estimator: auto, fast, vmap, loop, approx, or "
                                     "hebbian (local rule, no backward pass)", choices=_IMPORTANCE_METHODS)
    importance_output: str | None = setting(None, help="submodule whose output sensitivity is measured (unset: "
                                            "the model's output)", toml=str)
    consolidation: str = setting("mean", help="how each regime's importance enters Omega",
                                 choices=CONSOLIDATION_MODES)
    ema_alpha: float = setting(0.5, help="weight of a new regime with consolidation = \"ema\"",
                               check=in_unit_interval(closed_low=False, closed_high=True))
    omega_normalization: str = setting("mean", help="rescaling of a regime's importance before it enters Omega",
                                       choices=NORMALIZATIONS)
    consolidate_at: str = setting("peak", help="consolidate at the plateau, or keep the plateau's weights and "
                                  "consolidate them at the next peak", choices=CONSOLIDATE_AT)
    plateau: Any = setting(None, help="the plateau detector: a PlateauConfig, a dict of its fields, or an object "
                           "with update(value) -> 'plateau' | 'peak' | 'hold' | None", in_config=False)
    steps_per_batch: int = setting(1, help="optimisation steps on each batch", check=at_least(1))
    sync_every: int = setting(16, help="the host reads device values (loss window, counters) every this many "
                              "steps", check=at_least(1))
    prox_every: int = setting(16, help="apply the regulariser's proximal step every this many steps, for all of "
                              "them", check=at_least(1))
    prox_metric_floor: float = setting(0.0, help="under Adam: the proximal metric is at least this fraction of "
                                       "each tensor's mean sqrt(v_hat) (0: Adam's own)", check=non_negative)
    fused_step: bool = setting(True, help="the hand-derived step for chains of linear layers and activations "
                               "trained on the reconstruction error, under plain SGD (in place) or Adam (its "
                               "gradients fed to torch's fused Adam) (false: always autograd)")
    compact_state: bool = setting(True, help="keep Omega and a plateau's weights in bfloat16 (false: in the "
                                  "parameters' dtype)")
    recover_after: int = setting(64, help="restore theta* after this many updates in a row skipped for a "
                                 "non-finite loss, if the weights have diverged (0: never)", check=at_least(0))
    on_bad_input: str = setting("raise", help="raise a ValueError naming bad samples, or skip them (counted)",
                                choices=("raise", "skip"))
    scale_inputs: str = setting("running", help="standardise each feature with running statistics on the device: "
                                "running (cumulative), frozen (after a warm-up) or none", choices=SCALE_MODES)
    input_clip: float = setting(30.0, help="standardised inputs are clipped to +-this (a feature constant so far "
                                "lands here when it moves)", check=positive)
    scale_floor: float = setting(0.0, help="no feature is divided by less than this times the stream's typical "
                                 "scale (a feature constant so far must not jump to the clip)", check=at_least(0))
    replay: int = setting(1_000_000, help="at most this many samples in the replay memory (its size in bytes "
                          "usually binds first); 0 disables replay", check=at_least(0))
    replay_max_bytes: int = setting(4 << 20, help="the replay memory's size in bytes (wide samples keep fewer, "
                                    "uint8 samples are kept as uint8)",
                                    check=at_least(1))
    replay_retention: str = setting("reservoir", help="what the replay memory keeps: a uniform reservoir of the "
                                    "stream, or an equal share for each pseudo-regime", choices=tuple(RETENTIONS))
    replay_ratio: int = setting(2, help="samples replayed with each row of a batch", check=at_least(1))
    replay_retrieval: str = setting("uniform", help="which stored samples are replayed: uniform draws, or the "
                                    "candidates a virtual step on the new batch would hurt most (interfered, MIR)",
                                    choices=RETRIEVALS)
    replay_candidates: int = setting(5, help="with replay_retrieval = interfered: samples drawn from the memory "
                                     "per sample replayed", check=at_least(1))
    max_events: int = setting(1000, help="events kept in the learner's history", check=at_least(1),
                              in_config=False)

    def __post_init__(self) -> None:
        check_settings(self)
        if self.importance_source == "buffer" and self.hard_buffer == 0:
            raise ValueError("importance_source='buffer' needs a hard buffer: set hard_buffer > 0")
        for name in ("objective", "optimizer"):
            if not isinstance(getattr(self, name), str) and not callable(getattr(self, name)):
                raise ValueError(f"{name} must be a name or a callable, got {getattr(self, name)!r}")


def learner_signature() -> inspect.Signature:
    """``OnlineMAS(model, *, <every setting with its default>, callback=None, device=None, distributed=None)``,
    for help() and :func:`~streammas.learner.learner_defaults`: the keywords are the settings' fields, spelled out
    once in :class:`LearnerSettings`.

    >>> signature = learner_signature()
    >>> list(signature.parameters)[:3], signature.parameters["replay_ratio"].default
    (['self', 'model', 'objective'], 2)
    """
    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
              inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="nn.Module")]
    params += [inspect.Parameter(f.name, keyword, default=f.default, annotation=f.type)
               for f in dataclasses.fields(LearnerSettings)]
    params += [inspect.Parameter(name, keyword, default=None) for name in ("callback", "device", "distributed")]
    return inspect.Signature(params)
