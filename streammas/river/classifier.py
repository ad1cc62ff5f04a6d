"""The river classifier: an MLP trained online with Memory Aware Synapses on the cross-entropy.

``learn_one(x, y)``, ``predict_one``, ``predict_proba_one`` and their ``*_many`` forms on dataframes; classes
are discovered as they arrive.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np
import torch
from river import base

from streammas.river.estimator import DEFAULTS, RIVER_REPLAY_RATIO, RIVER_SCALE, SGD_LR, MASEstimator
from streammas.river.frames import is_frame, label_list

__all__ = ["MASClassifier"]


class MASClassifier(MASEstimator, base.MiniBatchClassifier):
    """Classifier: an MLP trained online with Memory Aware Synapses on the cross-entropy.

    Classes are discovered as they arrive, up to ``max_classes``; probabilities are over the classes seen.

    Parameters
    ----------
    hidden : int, default 64
        Width of the hidden layer.
    max_classes : int, default 16
        How many distinct classes the network can hold (its output size).
    lr : float, optional
        SGD step size (default 0.05, ``streammas.river.estimator.SGD_LR``).
    reg_lambda : float, optional
        Strength of the memory (0: plain online SGD; default: the learner's).
    hard_buffer : int, optional
        How many high-loss samples are replayed in each update (0, the default: none; the evaluation found
        that the buffer does harm on one-pass streams).
    batch_size : int, default 10
        Samples per update: ``learn_one`` collects this many before learning them together.
    optimizer : {"sgd", "adam"}, default "sgd"
        ``"sgd"`` or ``"adam"``.
    plateau : tuple or None, default None
        Plateau detector settings, a tuple of ``(name, value)`` pairs (``None``: the learner's defaults).
    learner_params : tuple or None, default None
        Further :class:`~streammas.OnlineMAS` keyword arguments, as a tuple of ``(name, value)`` pairs.
    seed : int or None, default 0
        Seed of the network's initialisation.
    scale_inputs : {"none", "running", "frozen"}, default "none"
        The learner's own input scaling (:class:`~streammas.learner.scaling.InputScaler`). ``"none"``: the
        pipeline scales (``StandardScaler() | ...``), and a second standardisation would only cost time;
        ``"running"`` for a pipeline with no standardising step.
    replay : int, optional
        Samples the replay memory holds at most (default: the learner's, 1,000,000; 0 disables replay).
    replay_max_bytes : int, optional
        The replay memory's size in bytes (default: the learner's, 4 MiB), what usually binds.
    replay_ratio : int, default 1
        Stored samples replayed with each sample of a micro-batch (the learner's own default is 2: the river
        examples decided the estimators' value, see :data:`~streammas.river.estimator.RIVER_REPLAY_RATIO`).

    Examples
    --------
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
        lr: float = SGD_LR,
        reg_lambda: float = DEFAULTS["reg_lambda"],
        hard_buffer: int = DEFAULTS["hard_buffer"],
        batch_size: int = 10,
        optimizer: str = "sgd",
        plateau: tuple | None = None,
        learner_params: tuple | None = None,
        seed: int | None = 0,
        scale_inputs: str = RIVER_SCALE,
        replay: int = DEFAULTS["replay"],
        replay_max_bytes: int = DEFAULTS["replay_max_bytes"],
        replay_ratio: int = RIVER_REPLAY_RATIO,
    ) -> None:
        self.hidden = hidden
        self.max_classes = max_classes
        if int(max_classes) < 2:
            raise ValueError(f"max_classes must be at least 2, got {max_classes}")
        self._set_shared(lr, reg_lambda, hard_buffer, batch_size, optimizer, plateau, learner_params, seed,
                         scale_inputs, replay, replay_max_bytes, replay_ratio)
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
        labels = np.array([self._label(v) for v in label_list(y)], dtype=np.int64)
        if len(labels) != len(matrix):
            raise ValueError(f"got {len(matrix)} samples but {len(labels)} labels")
        self._learn_matrix(matrix, labels)

    def predict_proba_many(self, X: Any):
        """Class probabilities of a batch: a dataframe like ``X`` when ``X`` is one, else a 2-D array."""
        matrix = self._matrix(X)
        proba = np.zeros((len(matrix), len(self.classes_))) if self.learner_ is None else self._proba(matrix)
        if not is_frame(X):
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
        if not is_frame(X):
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
