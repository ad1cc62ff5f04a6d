"""river-compatible estimators: drop streammas into a river pipeline.

* :class:`MASAutoencoder`: a river anomaly detector. The score of a sample is its reconstruction error by
  an autoencoder trained online with Memory Aware Synapses, so a regime that comes back after a long
  absence is still recognised as normal.
* :class:`MASClassifier`: a river classifier (``learn_one(x, y)``, ``predict_one``, ``predict_proba_one``)
  trained online with the same memory.

Both take river's feature dicts. The feature set is fixed by the first sample: features that appear later
are ignored, missing features count as 0 (river's sparse convention). The network is built on that first
sample; learning happens in micro-batches of ``batch_size`` samples (``learn_one`` collects them), as the
plateau detector expects. ``learn_many``/``score_many`` (and the classifier's ``*_many``) take any
dataframe river accepts (pandas, polars, ...), a 2-D array, or a list of dicts.

>>> from river import compose, preprocessing
>>> from streammas.river import MASAutoencoder
>>> model = compose.Pipeline(preprocessing.StandardScaler(), MASAutoencoder(seed=0))
>>> for i in range(200):
...     model.learn_one({"a": (i % 7) / 7.0, "b": 1.0 - (i % 7) / 7.0, "c": (i % 3) / 3.0})
>>> normal = model.score_one({"a": 3 / 7, "b": 4 / 7, "c": 1 / 3})
>>> strange = model.score_one({"a": 5.0, "b": 5.0, "c": -4.0})
>>> strange > normal
True
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import torch
from river import base

from streammas.learner import OnlineMAS, learner_defaults

__all__ = ["MASAutoencoder", "MASClassifier"]

#: The learner's defaults (chosen with ``streammas evaluate``, see the README's results): the estimators take
#: theirs from here, so that the two cannot drift apart.
_DEFAULTS = learner_defaults()


def _as_float(name: Hashable, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(
            f"feature {name!r} has the non-numeric value {value!r}: encode it first "
            "(for example with river.preprocessing.OneHotEncoder)"
        ) from None


def _is_frame(X: Any) -> bool:
    return not isinstance(X, (np.ndarray, torch.Tensor, list))


def _rows(X: Any) -> tuple[list[Hashable] | None, np.ndarray]:
    """Column names (``None`` for an array) and the float32 values of a batch."""
    if isinstance(X, (np.ndarray, torch.Tensor)):
        array = np.asarray(X, dtype=np.float32)
        if array.ndim != 2:
            raise ValueError(f"a batch must be 2-D [samples, features], got shape {array.shape}")
        return None, array
    if isinstance(X, list):
        names: list[Hashable] = []
        for row in X:
            names.extend(k for k in row if k not in names)
        array = np.array([[_as_float(k, row.get(k, 0.0)) for k in names] for row in X], dtype=np.float32)
        return names, array.reshape(len(X), len(names))
    from river.utils.dataframe import into_frame, to_numpy

    frame = into_frame(X)
    return list(frame.columns), to_numpy(frame, dtype=np.float32)


def _ordered(names) -> list[Hashable]:
    """Feature names sorted when they can be, so that the order features arrive in never matters."""
    try:
        return sorted(names)
    except TypeError:
        return list(names)


class _MASEstimator:
    """What both estimators share: the feature map, the lazily built learner, micro-batching, state."""

    def _learner_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"lr": self.lr, "reg_lambda": self.reg_lambda, "hard_buffer": self.hard_buffer,
                                  "optimizer": self.optimizer}
        if self.plateau is not None:
            kwargs["plateau"] = dict(self.plateau)
        kwargs.update(dict(self.learner_params or {}))
        return kwargs

    def _set_shared(self, lr, reg_lambda, hard_buffer, batch_size, optimizer, plateau, learner_params, seed) -> None:
        """The parameters both estimators take (river reads them back by name, for ``clone``)."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.lr, self.reg_lambda, self.hard_buffer, self.batch_size = lr, reg_lambda, hard_buffer, batch_size
        self.optimizer, self.plateau, self.learner_params, self.seed = optimizer, plateau, learner_params, seed
        self._init_state()

    def _init_state(self) -> None:
        self.features_: list[Hashable] | None = None
        self.learner_ = None
        self._pending_x: list[np.ndarray] = []
        self._pending_y: list[int] = []

    # -- features --------------------------------------------------------------------------------------------
    def _vector(self, x: Mapping[Hashable, Any]) -> np.ndarray:
        if self.features_ is None:
            return np.zeros(0, dtype=np.float32)
        return np.array([_as_float(k, x.get(k, 0.0)) for k in self.features_], dtype=np.float32)

    def _matrix(self, X: Any) -> np.ndarray:
        names, array = _rows(X)
        if self.features_ is None:
            self.features_ = list(range(array.shape[1])) if names is None else _ordered(names)
        if names is None:
            if array.shape[1] != len(self.features_):
                raise ValueError(f"got {array.shape[1]} columns, the model has {len(self.features_)} features")
            return array
        out = np.zeros((array.shape[0], len(self.features_)), dtype=np.float32)
        where = {n: i for i, n in enumerate(names)}
        for j, name in enumerate(self.features_):
            if name in where:
                out[:, j] = array[:, where[name]]
        return out

    def _ensure(self, x: Mapping[Hashable, Any]) -> None:
        if self.features_ is None:
            self.features_ = _ordered(x)

    def _build(self, n_features: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0 if self.seed is None else self.seed)
            model = self._make_model(n_features)
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
        for start in range(0, len(X), self.batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(X[start:start + self.batch_size]))
            yb = None if y is None else torch.from_numpy(y[start:start + self.batch_size])
            self.learner_.learn_many(xb, yb)

    @property
    def consolidations(self) -> int:
        """How many times the memory has been consolidated (plateaus of the loss) so far."""
        return 0 if self.learner_ is None else self.learner_.consolidations

    # -- pickling: the learner travels as its state dict, tensors as numpy arrays (whose pickles, unlike a
    # tensor's, are the same bytes for the same values: river's checks compare pickles) -------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        learner = state.pop("learner_")
        state["_learner_state"] = None if learner is None else _to_numpy(learner.state_dict())
        state["_n_inputs"] = None if learner is None else self._n_inputs(learner)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        learner_state = state.pop("_learner_state", None)
        n_inputs = state.pop("_n_inputs", None)
        self.__dict__.update(state)
        self.learner_ = None
        if learner_state is not None:
            self._build(n_inputs)
            self.learner_.load_state_dict(_to_torch(learner_state))

    @staticmethod
    def _n_inputs(learner) -> int:
        return int(learner.model.in_features)


class MASAutoencoder(_MASEstimator, base.AnomalyDetector):
    """Anomaly detector: the reconstruction error of an autoencoder trained online with Memory Aware Synapses.

    The score of a sample is its mean squared reconstruction error (higher: more anomalous). Scale the
    features first (``preprocessing.StandardScaler() | MASAutoencoder()``).

    Parameters
    ----------
    hidden
        Width of the hidden layer (``None``: sized from the number of features, see
        :func:`streammas.models.autoencoder_sizes`).
    latent
        Size of the code (``None``: sized from the number of features).
    lr
        SGD step size.
    reg_lambda
        Strength of the memory (0: plain online SGD).
    hard_buffer
        How many high-loss samples are replayed in each update (0, the default: none; the evaluation found
        that the buffer does harm on one-pass streams).
    batch_size
        Samples per update: ``learn_one`` collects this many before learning them together.
    optimizer
        ``"sgd"`` or ``"adam"``.
    plateau
        Plateau detector settings, a tuple of ``(name, value)`` pairs (``None``: the learner's defaults).
    learner_params
        Further :class:`~streammas.OnlineMAS` keyword arguments, as a tuple of ``(name, value)`` pairs.
    seed
        Seed of the network's initialisation.

    >>> detector = MASAutoencoder(seed=1)
    >>> detector.score_one({"x": 1.0, "y": 2.0})   # nothing learned yet
    0.0
    >>> for _ in range(50):
    ...     detector.learn_one({"x": 1.0, "y": 2.0})
    >>> detector.score_one({"x": 1.0, "y": 2.0}) < detector.score_one({"x": -3.0, "y": 9.0})
    True
    """

    _objective = "reconstruction"

    def __init__(
        self,
        hidden: int | None = None,
        latent: int | None = None,
        lr: float = _DEFAULTS["lr"],
        reg_lambda: float = _DEFAULTS["reg_lambda"],
        hard_buffer: int = _DEFAULTS["hard_buffer"],
        batch_size: int = 10,
        optimizer: str = "sgd",
        plateau: tuple | None = None,
        learner_params: tuple | None = None,
        seed: int | None = 0,
    ) -> None:
        self.hidden = hidden
        self.latent = latent
        self._set_shared(lr, reg_lambda, hard_buffer, batch_size, optimizer, plateau, learner_params, seed)

    def _make_model(self, n_features: int):
        from streammas.models import MLPAutoencoder, autoencoder_sizes

        hidden, latent = autoencoder_sizes(n_features)
        return MLPAutoencoder(n_features, hidden=(self.hidden,) if self.hidden else hidden,
                              latent=self.latent or latent)

    def learn_one(self, x: dict) -> None:
        self._ensure(x)
        self._push(self._vector(x), None)

    def score_one(self, x: dict) -> float:
        if self.learner_ is None:
            return 0.0
        vector = torch.from_numpy(self._vector(x)[None])
        return float(self.learner_.score_many(vector)[0])

    def learn_many(self, X: Any) -> None:
        """Learn a batch of samples (a dataframe, a 2-D array, or a list of dicts), in order."""
        self._learn_matrix(self._matrix(X))

    def score_many(self, X: Any) -> np.ndarray:
        """Anomaly scores of a batch, with no update (zeros before anything was learned)."""
        matrix = self._matrix(X)
        if self.learner_ is None:
            return np.zeros(len(matrix))
        return self.learner_.score_many(torch.from_numpy(matrix)).cpu().numpy().astype(np.float64)

    @classmethod
    def _unit_test_params(cls):
        yield {"seed": 0}


class MASClassifier(_MASEstimator, base.MiniBatchClassifier):
    """Classifier: an MLP trained online with Memory Aware Synapses on the cross-entropy.

    Classes are discovered as they arrive, up to ``max_classes``; probabilities are over the classes seen.

    Parameters
    ----------
    hidden
        Width of the hidden layer.
    max_classes
        How many distinct classes the network can hold (its output size).
    lr
        SGD step size.
    reg_lambda
        Strength of the memory (0: plain online SGD).
    hard_buffer
        How many high-loss samples are replayed in each update (0, the default: none; the evaluation found
        that the buffer does harm on one-pass streams).
    batch_size
        Samples per update: ``learn_one`` collects this many before learning them together.
    optimizer
        ``"sgd"`` or ``"adam"``.
    plateau
        Plateau detector settings, a tuple of ``(name, value)`` pairs (``None``: the learner's defaults).
    learner_params
        Further :class:`~streammas.OnlineMAS` keyword arguments, as a tuple of ``(name, value)`` pairs.
    seed
        Seed of the network's initialisation.

    >>> from river import datasets, evaluate, metrics, preprocessing
    >>> model = preprocessing.StandardScaler() | MASClassifier(seed=0)
    >>> metric = evaluate.progressive_val_score(datasets.Phishing(), model, metrics.Accuracy())
    >>> metric.get() > 0.8
    True
    >>> sorted(model.predict_proba_one({"empty_server_form_handler": 1.0}))
    [False, True]
    """

    _objective = "classification"

    def __init__(
        self,
        hidden: int = 64,
        max_classes: int = 16,
        lr: float = _DEFAULTS["lr"],
        reg_lambda: float = _DEFAULTS["reg_lambda"],
        hard_buffer: int = _DEFAULTS["hard_buffer"],
        batch_size: int = 10,
        optimizer: str = "sgd",
        plateau: tuple | None = None,
        learner_params: tuple | None = None,
        seed: int | None = 0,
    ) -> None:
        self.hidden = hidden
        self.max_classes = max_classes
        if int(max_classes) < 2:
            raise ValueError(f"max_classes must be at least 2, got {max_classes}")
        self._set_shared(lr, reg_lambda, hard_buffer, batch_size, optimizer, plateau, learner_params, seed)
        self.classes_: list[Hashable] = []

    @property
    def _multiclass(self) -> bool:
        return True

    def _make_model(self, n_features: int):
        from streammas.models import MLPClassifier

        return MLPClassifier(n_features, int(self.max_classes), hidden=(int(self.hidden),))

    def _label(self, y: Hashable) -> int:
        if y not in self.classes_:
            if len(self.classes_) >= self.max_classes:
                raise ValueError(f"more than max_classes={self.max_classes} classes: raise max_classes")
            self.classes_.append(y)
        return self.classes_.index(y)

    def learn_one(self, x: dict, y: Hashable) -> None:
        self._ensure(x)
        self._push(self._vector(x), self._label(y))

    def _proba(self, matrix: np.ndarray) -> np.ndarray:
        logits = self.learner_.predict_many(torch.from_numpy(matrix))[:, : len(self.classes_)]
        return torch.softmax(logits.double(), dim=1).cpu().numpy()

    def predict_proba_one(self, x: dict) -> dict[Hashable, float]:
        if self.learner_ is None or not self.classes_:
            return {}
        proba = self._proba(self._vector(x)[None])[0]
        return {c: float(p) for c, p in zip(self.classes_, proba)}

    def learn_many(self, X: Any, y: Any) -> None:
        """Learn a batch (a dataframe, a 2-D array or a list of dicts) and its labels, in order."""
        matrix = self._matrix(X)
        labels = np.array([self._label(v) for v in _labels(y)], dtype=np.int64)
        if len(labels) != len(matrix):
            raise ValueError(f"got {len(matrix)} samples but {len(labels)} labels")
        self._learn_matrix(matrix, labels)

    def predict_proba_many(self, X: Any):
        """Class probabilities of a batch: a dataframe like ``X`` when ``X`` is one, else a 2-D array."""
        matrix = self._matrix(X)
        proba = np.zeros((len(matrix), len(self.classes_))) if self.learner_ is None else self._proba(matrix)
        if not _is_frame(X):
            return proba
        from river.utils.dataframe import into_frame, to_native_frame

        # the mapping form: the array form needs string column names, and labels may be anything hashable
        return to_native_frame({c: proba[:, i] for i, c in enumerate(self.classes_)}, like=into_frame(X))

    def predict_many(self, X: Any):
        """Most probable class of each sample: a series like ``X`` when ``X`` is a dataframe, else a list."""
        matrix = self._matrix(X)
        if self.learner_ is None or not self.classes_:
            predictions = [None] * len(matrix)
        else:
            predictions = [self.classes_[i] for i in self._proba(matrix).argmax(axis=1)]
        if not _is_frame(X):
            return predictions
        from river.utils.dataframe import into_frame, to_native_series

        return to_native_series(predictions, name=None, like=into_frame(X))

    @classmethod
    def _unit_test_params(cls):
        yield {"seed": 0}

    def _unit_test_skips(self) -> set[str]:
        # One gradient step per micro-batch is not the same update as one step per sample, as for river's
        # own gradient-descent linear models.
        return {"check_learn_many_matches_learn_one"}


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


def _labels(y: Any) -> list:
    if hasattr(y, "to_list"):
        return list(y.to_list())
    if hasattr(y, "tolist"):
        return list(y.tolist())
    return list(y)

