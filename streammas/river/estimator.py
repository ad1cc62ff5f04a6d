"""The base both river estimators share: parameters, the lazily built learner, micro-batching, pickling.

An estimator maps river's feature dicts (or a batch, see :mod:`streammas.river.frames`) onto a fixed
feature vector, builds its :class:`~streammas.learner.OnlineMAS` learner on the first sample, and learns in
micro-batches of ``batch_size`` samples. Subclasses say which network (``_make_model``) and which objective
(``_objective``) they train.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch

from streammas.learner import OnlineMAS, learner_defaults
from streammas.learner.settings import LearnerSettings
from streammas.river.frames import as_float, ordered, rows

__all__ = ["DEFAULTS", "RIVER_REPLAY_RATIO", "RIVER_SCALE", "MASEstimator"]

#: The learner's defaults (chosen with ``streammas evaluate``, see the README's results): the estimators take
#: theirs from here, so that the two cannot drift apart.
DEFAULTS = learner_defaults()
#: The river estimators step with SGD at this rate (their own default, measured on the river examples: river
#: pipelines scale their inputs themselves, and SGD at 0.05 beat Adam at the learner's 1e-3 there, 88% against
#: 79% on Phishing).
SGD_LR = 0.05
#: The estimators leave scaling to the pipeline (river's convention: ``StandardScaler() | MASAutoencoder()``), so a
#: pipeline that scales gets no second scaling; the learner's running standardisation is one parameter away
#: (``scale_inputs="running"``) for a pipeline without a standardising step (README, "river").
RIVER_SCALE = "none"
#: Stored samples the estimators replay per sample, decided by the river examples' results
#: (``examples/river_replay_ratio.py``: means over five seeds; README, "river"). Replay is what keeps the regime that
#: returns (ROC AUC 0.87 without the memory, 0.96 with one sample replayed per sample, 0.97 with two). Between one and
#: two the four measures split two to two, each by less than the spread between seeds (Phishing 86.8% against 86.6%,
#: ImageSegments 75.2% against 75.6%, the anomaly stream's ROC AUC 0.865 against 0.855, its returning regime 0.961
#: against 0.967), and the tie goes to the cheaper: one learns two rows per sample, two three. The learner's own
#: default (2) was chosen with ``streammas evaluate`` on its streams.
RIVER_REPLAY_RATIO = 1


class MASEstimator:
    """What both estimators share: the feature map, the lazily built learner, micro-batching, state.

    Not an estimator by itself: :class:`~streammas.river.MASAutoencoder` and
    :class:`~streammas.river.MASClassifier` add the network, the objective and river's methods, and take
    the parameters both share (``lr``, ``reg_lambda``, ``hard_buffer``, ``batch_size``, ``optimizer``,
    ``plateau``, ``learner_params``, ``seed``, ``scale_inputs``, ``replay``, ``replay_max_bytes``,
    ``replay_ratio``; see theirs). Features are sorted by name on the first
    sample; ``learn_one`` collects ``batch_size`` samples before the learner learns them together; a
    pickle carries the learner's state (the samples still waiting included). Torch's thread count is the
    program's to set (``torch.set_num_threads(1)`` suits these small networks; see :mod:`streammas.river`).

    Attributes
    ----------
    features_ : list or None
        The feature names, in the order of the network's inputs (``None``: no sample seen yet).
    learner_ : OnlineMAS or None
        The learner, built on the first sample.
    consolidations : int
        How many times the memory has been consolidated so far.

    Examples
    --------
    Through :class:`~streammas.river.MASAutoencoder`:

    >>> import pickle
    >>> from streammas.river import MASAutoencoder
    >>> model = MASAutoencoder(batch_size=4, seed=0)
    >>> isinstance(model, MASEstimator), model.learner_ is None
    (True, True)
    >>> for i in range(6):
    ...     model.learn_one({"b": float(i), "a": 1.0})
    >>> model.features_, model.learner_.samples_seen  # two samples wait for the next batch
    (['a', 'b'], 4)
    >>> copy = pickle.loads(pickle.dumps(model))
    >>> copy.learner_.samples_seen, copy.consolidations, copy.score_one({"a": 1.0}) == model.score_one({"a": 1.0})
    (4, 0, True)
    """

    def _learner_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"lr": self.lr, "reg_lambda": self.reg_lambda, "hard_buffer": self.hard_buffer,
                                  "optimizer": self.optimizer, "scale_inputs": self.scale_inputs,
                                  "replay": self.replay, "replay_max_bytes": self.replay_max_bytes,
                                  "replay_ratio": self.replay_ratio}
        if self.plateau is not None:
            kwargs["plateau"] = dict(self.plateau)
        kwargs.update(dict(self.learner_params or {}))
        return kwargs

    def _set_shared(self, lr, reg_lambda, hard_buffer, batch_size, optimizer, plateau, learner_params, seed,
                    scale_inputs, replay, replay_max_bytes, replay_ratio) -> None:
        """The parameters both estimators take (river reads them back by name, for ``clone``)."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.lr, self.reg_lambda, self.hard_buffer, self.batch_size = lr, reg_lambda, hard_buffer, batch_size
        self.optimizer, self.plateau, self.learner_params, self.seed = optimizer, plateau, learner_params, seed
        self.scale_inputs, self.replay, self.replay_max_bytes = scale_inputs, replay, replay_max_bytes
        self.replay_ratio = replay_ratio
        LearnerSettings(scale_inputs=scale_inputs, replay=replay, replay_max_bytes=replay_max_bytes,
                        replay_ratio=replay_ratio)  # a bad value is refused here, not at the first sample
        self._init_state()

    def _init_state(self) -> None:
        self.features_: list[Hashable] | None = None
        self._columns: tuple[tuple, np.ndarray] | None = None  # a batch's column order -> the features' columns
        self._keys: tuple[tuple, np.ndarray | None] | None = None  # the same for a sample's keys
        self.learner_ = None
        self._pending_x: list[np.ndarray] = []
        self._pending_y: list[int] = []

    # -- features --------------------------------------------------------------------------------------------
    def _vector(self, x: Mapping[Hashable, Any]) -> np.ndarray:
        if self.features_ is None:
            return np.zeros(0, dtype=np.float32)
        # A stream's dicts come with the same keys in the same order: where each feature sits among them is found
        # once, and the values convert in one call (any doubt, and the feature-by-feature path decides).
        keys = tuple(x)
        if self._keys is None or self._keys[0] != keys:
            where = {k: i for i, k in enumerate(keys)}
            index = [where.get(name, -1) for name in self.features_]
            self._keys = (keys, np.array(index, dtype=np.int64) if min(index, default=0) >= 0 else None)
        if self._keys[1] is not None:
            try:
                vector = np.fromiter(x.values(), dtype=np.float32, count=len(keys))[self._keys[1]]
                if not math.isnan(vector.sum()):  # None converts to NaN: the slow path says what is wrong
                    return vector
            except (TypeError, ValueError):
                pass
        return np.array([as_float(k, x.get(k, 0.0)) for k in self.features_], dtype=np.float32)

    def _matrix(self, X: Any) -> np.ndarray:
        names, array = rows(X)
        if self.features_ is None:
            self.features_ = list(range(array.shape[1])) if names is None else ordered(names)
        if names is None:
            if array.shape[1] != len(self.features_):
                raise ValueError(f"got {array.shape[1]} columns, the model has {len(self.features_)} features")
            return array
        if names == self.features_:  # already in the model's order (a frame's values may be read-only: torch warns)
            return array if array.flags.writeable else array.copy()
        # where each feature is among the batch's columns (-1: absent, so 0), found once per column order
        key = tuple(names)
        if self._columns is None or self._columns[0] != key:
            where = {n: i for i, n in enumerate(names)}
            self._columns = (key, np.array([where.get(name, -1) for name in self.features_], dtype=np.int64))
        index = self._columns[1]
        if (index >= 0).all():
            return np.ascontiguousarray(array[:, index])
        out = np.zeros((array.shape[0], len(self.features_)), dtype=np.float32)
        present = np.flatnonzero(index >= 0)
        out[:, present] = array[:, index[present]]
        return out

    def _ensure(self, x: Mapping[Hashable, Any]) -> None:
        if self.features_ is None:
            self.features_ = ordered(x)

    def _build(self, n_features: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if self.seed is None else self.seed)
            model = self._make_model(n_features)
            # inside too: the replay memory seeds its draws from torch's seed, which is the process's own otherwise
            # (a new one in each process), and the same seed gave other scores from one run to the next
            self.learner_ = OnlineMAS(model, objective=self._objective, **self._learner_kwargs())

    # -- learning in micro-batches -----------------------------------------------------------------------------
    def _push(self, vector: np.ndarray, label: int | None) -> None:
        if self.learner_ is None:
            self._build(len(vector))
        self._pending_x.append(vector)
        if label is not None:
            self._pending_y.append(label)
        if len(self._pending_x) >= self.batch_size:
            self._flush()

    def _flush(self) -> None:
        if not self._pending_x:
            return
        x = torch.from_numpy(np.stack(self._pending_x))
        y = torch.tensor(self._pending_y, dtype=torch.int64) if self._pending_y else None
        self._pending_x, self._pending_y = [], []
        self.learner_.learn_many(x, y)

    def _learn_matrix(self, X: np.ndarray, y: np.ndarray | None = None) -> None:
        if self.learner_ is None:
            self._build(X.shape[1])
        self._flush()
        # one tensor for the whole batch: each micro-batch is a view of consecutive rows (contiguous already)
        xt = torch.from_numpy(np.ascontiguousarray(X))
        yt = None if y is None else torch.from_numpy(np.ascontiguousarray(y))
        for start in range(0, len(X), self.batch_size):
            stop = start + self.batch_size
            self.learner_.learn_many(xt[start:stop], None if yt is None else yt[start:stop])

    @property
    def consolidations(self) -> int:
        """How many times the memory has been consolidated (plateaus of the loss) so far."""
        return 0 if self.learner_ is None else self.learner_.consolidations

    # -- pickling: the learner travels as its state dict, tensors as numpy arrays (whose pickles, unlike a
    # tensor's, are the same bytes for the same values: river's checks compare pickles) -------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_columns", None)  # caches, found again from the next batch or sample
        state.pop("_keys", None)
        learner = state.pop("learner_")
        state["_learner_state"] = None if learner is None else _to_numpy(learner.state_dict())
        state["_n_inputs"] = None if learner is None else self._n_inputs(learner)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        learner_state = state.pop("_learner_state", None)
        n_inputs = state.pop("_n_inputs", None)
        self.__dict__.update(state)
        self._columns = self._keys = None
        self.learner_ = None
        if learner_state is not None:
            self._build(n_inputs)
            self.learner_.load_state_dict(_to_torch(learner_state))

    @staticmethod
    def _n_inputs(learner) -> int:
        return int(learner.model.in_features)


def _to_numpy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu()
        # numpy has no bfloat16; float32 holds every bfloat16 exactly, and loading narrows it back
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_numpy(v) for v in obj)
    return obj


def _to_torch(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj.copy())
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_torch(v) for v in obj)
    return obj
