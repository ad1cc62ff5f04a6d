"""The river anomaly detector: the reconstruction error of an autoencoder trained online with MAS.

The score of a sample is its reconstruction error by an autoencoder trained online with Memory Aware
Synapses, so a regime that comes back after a long absence is still recognised as normal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from river import base

from streammas.river.estimator import DEFAULTS, RIVER_REPLAY_RATIO, RIVER_SCALE, SGD_LR, MASEstimator

__all__ = ["MASAutoencoder"]


class MASAutoencoder(MASEstimator, base.AnomalyDetector):
    """Anomaly detector: the reconstruction error of an autoencoder trained online with Memory Aware Synapses.

    The score of a sample is its mean squared reconstruction error (higher: more anomalous). Scale the
    features first (``preprocessing.StandardScaler() | MASAutoencoder()``).

    Parameters
    ----------
    hidden : int or None, default None
        Width of the hidden layer (``None``: sized from the number of features, see
        :func:`streammas.models.autoencoder_sizes`).
    latent : int or None, default None
        Size of the code (``None``: sized from the number of features).
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
        self.latent = latent
        self._set_shared(lr, reg_lambda, hard_buffer, batch_size, optimizer, plateau, learner_params, seed,
                         scale_inputs, replay, replay_max_bytes, replay_ratio)

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
        return self.learner_.score_one(self._vector(x))  # a float32 row: scored in NumPy (OnlineMAS.score_one)

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
