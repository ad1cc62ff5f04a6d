"""The practitioner's baseline: what someone who never heard of synaptic importance would run on a stream.

Adam at lr 1e-3 on the same model as the other methods, the inputs standardised with running statistics, and
experience replay from a reservoir of past inputs. It is written from that description alone, without any of
the learner's parts, so that it fails (or not) for its own reasons.

>>> import torch
>>> from streammas.models import MLPAutoencoder
>>> _ = torch.manual_seed(0)
>>> baseline = PractitionerBaseline(MLPAutoencoder(in_features=4, hidden=(8,), latent=2), seed=0)
>>> baseline.learn_many(torch.rand(10, 4) * 1000).shape
torch.Size([10])
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-8


class PractitionerBaseline:
    """Adam, running standardisation and reservoir replay: a practitioner's online learner.

    Every batch, in this order:

    1. the running per-feature mean and variance (Welford's method, merged batch by batch, over every
       sample seen so far) take in the batch;
    2. the batch is standardised, ``(x - mean) / sqrt(var + 1e-8)``, and so are as many samples as the batch
       holds drawn (without replacement) from the reservoir of past inputs, each with the statistics of now;
    3. one forward pass gives the batch's per-sample losses (returned: prequential, before the update) and
       one Adam step is taken on the mean loss over the batch and the replayed rows; a loss that is not finite
       skips the step and is counted in ``counters["skipped_updates"]``;
    4. the batch enters the reservoir (reservoir sampling: every sample seen so far is held with the same
       probability ``reservoir / seen``), raw, with its labels for a classifier.

    The losses are those of the standardised inputs (the method's own units); :meth:`predict_many` gives a
    reconstruction in the input's units, or a classifier's logits.

    Parameters
    ----------
    model : torch.nn.Module
        The model, an autoencoder (``objective="reconstruction"``) or a classifier returning logits.
    objective : {"reconstruction", "classification"}, default "reconstruction"
        Per-sample mean squared error of the standardised input, or cross-entropy against integer labels.
    lr : float, default 1e-3
        Adam's learning rate.
    reservoir : int, default 500
        Samples held in the reservoir.
    reservoir_bytes : int, callable or None, default None
        The reservoir's budget in bytes instead of ``reservoir``: as many samples as fit, a sample counting its
        values (float32) and, for a classifier, its label (int64). A callable is given the first batch seen and
        returns the budget, so that a budget can follow another learner's memory for the stream's samples.
    replay : int or None, default None
        Samples replayed with every batch; ``None``: as many as the batch holds.
    seed : int, default 0
        Seed of the numpy generator that draws the reservoir's places and the replayed samples (the model's
        initialisation follows ``torch.manual_seed``).

    Attributes
    ----------
    counters : dict of str to int
        ``skipped_updates`` and ``updates`` (steps taken), and the event counters of the other methods
        (``plateaus``, ``peaks``, ``consolidations``, ``recoveries``), always 0.
    events : list
        Always empty: the baseline has no detector.
    samples_seen : int
        Samples learned so far.
    capacity : int
        Samples the reservoir holds when full (from ``reservoir_bytes`` once the first batch is seen).

    Examples
    --------
    Inputs in the thousands, which plain SGD at a usual step size would overflow on:

    >>> from streammas.models import MLPAutoencoder
    >>> _ = torch.manual_seed(0)
    >>> rng = np.random.default_rng(0)
    >>> x = torch.from_numpy((rng.normal(size=(400, 6)) * [1, 10, 100, 1000, 1, 1] + 500).astype(np.float32))
    >>> baseline = PractitionerBaseline(MLPAutoencoder(in_features=6, hidden=(16,), latent=3), seed=0)
    >>> first = baseline.learn_many(x[:10]).mean().item()
    >>> for _ in range(5):
    ...     for b in range(0, 400, 10):
    ...         last = baseline.learn_many(x[b:b + 10])
    >>> bool(last.mean() < first), baseline.counters["skipped_updates"], baseline.samples_seen, baseline.held
    (True, 0, 2010, 500)
    >>> baseline.predict_many(x[:2]).shape, bool(baseline.predict_many(x[:50]).mean() > 100)  # input units
    (torch.Size([2, 6]), True)

    A budget in bytes: 1,000 bytes hold 41 samples of 6 float32 values.

    >>> small = PractitionerBaseline(MLPAutoencoder(in_features=6, hidden=(16,), latent=3), reservoir_bytes=1000)
    >>> _ = small.learn_many(x[:10])
    >>> small.capacity, small.memory_nbytes()
    (41, 984)
    """

    def __init__(self, model: nn.Module, *, objective: str = "reconstruction", lr: float = 1e-3,
                 reservoir: int = 500, replay: int | None = None, seed: int = 0,
                 reservoir_bytes: int | Callable[[torch.Tensor], int] | None = None) -> None:
        if objective not in ("reconstruction", "classification"):
            raise ValueError(f"objective must be 'reconstruction' or 'classification'; got {objective!r}")
        if reservoir < 0 or (replay is not None and replay < 0):
            raise ValueError("reservoir and replay must be >= 0")
        if isinstance(reservoir_bytes, (int, float)) and reservoir_bytes < 0:
            raise ValueError("reservoir_bytes must be >= 0")
        self.model = model
        self.objective = objective
        self.classifier = objective == "classification"
        try:  # the fused kernel where torch has one for the device: the same algorithm in one pass
            self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
        except (RuntimeError, TypeError, ValueError):
            self.optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        self.capacity = int(reservoir)
        self.reservoir_bytes = reservoir_bytes
        self.replay = replay
        self.rng = np.random.default_rng(seed)
        self.samples_seen = 0
        self.held = 0
        self.counters: dict[str, int] = {"skipped_updates": 0, "updates": 0, "plateaus": 0, "peaks": 0,
                                         "consolidations": 0, "recoveries": 0}
        self.events: list = []
        self._shape: tuple[int, ...] | None = None
        self._mean: torch.Tensor | None = None  # float64, per feature
        self._m2: torch.Tensor | None = None
        self._scaled: tuple[torch.Tensor, torch.Tensor] | None = None  # float32 mean and sqrt(var + eps)
        self._x: torch.Tensor | None = None  # the reservoir, raw inputs
        self._y: torch.Tensor | None = None

    # -- running statistics -------------------------------------------------------------------------------------
    def _as_input(self, x: Any) -> torch.Tensor:
        raw = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
        x = raw.float()  # the practitioner's reservoir keeps float32, whatever the stream's dtype
        if self._shape is None:
            self._shape = tuple(x.shape[1:])
            n_features = int(np.prod(self._shape))
            self._mean = torch.zeros(n_features, dtype=torch.float64)
            self._m2 = torch.zeros(n_features, dtype=torch.float64)
            if self.reservoir_bytes is not None:
                budget = self.reservoir_bytes(raw) if callable(self.reservoir_bytes) else self.reservoir_bytes
                per_sample = n_features * 4 + (8 if self.classifier else 0)
                self.capacity = max(0, int(budget)) // per_sample
            self._x = torch.zeros((self.capacity, *self._shape))
            # labels only where there are any: the reservoir's bytes are the samples' own
            self._y = torch.zeros(self.capacity if self.classifier else 0, dtype=torch.int64)
        elif tuple(x.shape[1:]) != self._shape:
            raise ValueError(f"samples of shape {tuple(x.shape[1:])}; this learner has seen {self._shape}")
        return x

    def _observe(self, x: torch.Tensor) -> None:
        """Welford's update, merged for a batch (Chan et al.): exact mean and M2 over every sample so far."""
        flat = x.reshape(len(x), -1).double()
        n, b = self.samples_seen, len(flat)
        batch_mean = flat.mean(0)
        batch_m2 = ((flat - batch_mean) ** 2).sum(0)
        delta = batch_mean - self._mean
        total = n + b
        self._mean += delta * (b / total)
        self._m2 += batch_m2 + delta ** 2 * (n * b / total)
        self.samples_seen = total
        self._scaled = (self._mean.float(), torch.sqrt(self._m2 / total + EPS).float())

    @property
    def mean(self) -> torch.Tensor:
        """The running per-feature mean (float64; zeros before the first sample)."""
        return self._mean if self._mean is not None else torch.zeros(0, dtype=torch.float64)

    @property
    def var(self) -> torch.Tensor:
        """The running per-feature (population) variance."""
        if self._m2 is None or self.samples_seen == 0:
            return torch.zeros(0 if self._m2 is None else len(self._m2), dtype=torch.float64)
        return self._m2 / self.samples_seen

    def _scale(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean and ``sqrt(var + 1e-8)`` in float32 (0 and 1 before the first sample)."""
        if not self.samples_seen:
            return torch.zeros(len(self._mean)), torch.ones(len(self._mean))
        return self._scaled

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self._scale()
        return ((x.reshape(len(x), -1) - mean) / std).reshape(x.shape)

    # -- the reservoir -----------------------------------------------------------------------------------------
    def _draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(n if self.replay is None else self.replay, self.held)
        idx = torch.from_numpy(np.sort(self.rng.choice(self.held, k, replace=False))) if k else torch.zeros(0).long()
        return self._x[idx], self._y[idx] if self.classifier else self._y[:0]

    def _store(self, x: torch.Tensor, y: torch.Tensor | None, first: int) -> None:
        """Algorithm R: sample ``first + i`` (0-based) takes a free place, or place ``j`` ~ U{0..first+i} if j fits."""
        if self.capacity == 0:
            return
        seen = first + np.arange(len(x))
        places = np.where(seen < self.capacity, seen, self.rng.integers(0, seen + 1))
        for i in np.flatnonzero(places < self.capacity):  # in order: a later sample may take an earlier's place
            self._x[places[i]] = x[i]
            if y is not None and self.classifier:
                self._y[places[i]] = y[i]
        self.held = min(self.capacity, first + len(x))

    # -- the learner's interface -------------------------------------------------------------------------------
    def _losses(self, out: torch.Tensor, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        if self.classifier:
            if y is None:
                raise ValueError("a classifier needs labels: learn_many(x, y)")
            return F.cross_entropy(out, y.long(), reduction="none")
        return (out - z).pow(2).reshape(len(z), -1).mean(1)

    def learn_many(self, x: Any, y: Any = None) -> torch.Tensor:
        """Learn a batch; returns its per-sample losses from before the update (standardised units)."""
        x = self._as_input(x)
        y = None if y is None else torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).long()
        if self.classifier and y is None:
            raise ValueError("a classifier needs labels: learn_many(x, y)")
        first = self.samples_seen
        self._observe(x)
        rx, ry = self._draw(len(x))
        inputs = self._standardise(torch.cat([x, rx]))
        labels = None if y is None else torch.cat([y, ry])
        self.model.train()
        losses = self._losses(self.model(inputs), inputs, labels)
        loss = losses.mean()
        self.counters["updates"] += 1
        if torch.isfinite(loss):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        else:
            self.counters["skipped_updates"] += 1
        self._store(x, y, first)
        return losses[: len(x)].detach()

    def learn_one(self, x: Any, y: Any = None) -> float:
        """Learn one sample; returns its prequential loss."""
        return float(self.learn_many(np.asarray(x)[None], None if y is None else [y])[0])

    def score_many(self, x: Any, y: Any = None) -> torch.Tensor:
        """Per-sample losses with the statistics and weights of now, no update (standardised units)."""
        x = self._as_input(x)
        y = None if y is None else torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
        z = self._standardise(x)
        with torch.no_grad():
            return self._losses(self.model(z), z, y)

    def predict_many(self, x: Any) -> torch.Tensor:
        """A classifier's logits, or an autoencoder's reconstruction in the input's units."""
        x = self._as_input(x)
        with torch.no_grad():
            out = self.model(self._standardise(x))
        if self.classifier:
            return out
        mean, std = self._scale()
        return (out.reshape(len(x), -1) * std + mean).reshape(out.shape)

    def flush(self) -> None:
        """Nothing is deferred."""

    def consolidate(self) -> None:
        """No importance, nothing to consolidate."""

    def memory_nbytes(self) -> int:
        """Bytes of the reservoir: the samples (and a classifier's labels) it holds when full."""
        return sum(t.numel() * t.element_size() for t in (self._x, self._y) if t is not None)

    def state_nbytes(self) -> dict[str, int]:
        """Bytes held: model, optimizer state, reservoir and running statistics."""
        def size(tensors) -> int:
            return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))

        opt = [v for s in self.optimizer.state.values() for v in s.values()]
        held = [t for t in (self._x, self._y, self._mean, self._m2) if t is not None]
        out = {"model": size(self.model.parameters()), "optimizer": size(opt), "reservoir": size(held)}
        out["total"] = sum(out.values())
        return out


def practitioner_baseline(model: nn.Module, *, objective: str = "reconstruction", seed: int = 0,
                          **settings: Any) -> PractitionerBaseline:
    """The factory :func:`~streammas.tools.evaluation.methods.default_methods` gives the ``baseline`` method.

    The streammas settings a run shares with every method (``lr``, ``optimizer``, ``steps_per_batch``) are
    ignored: the baseline is Adam at 1e-3 by definition. ``reservoir``, ``reservoir_bytes`` and ``replay`` pass
    through.

    >>> from streammas.models import MLPClassifier
    >>> practitioner_baseline(MLPClassifier(4, 3), objective="classification", lr=0.05).counters["updates"]
    0
    """
    keep = {k: v for k, v in settings.items() if k in ("reservoir", "reservoir_bytes", "replay")}
    return PractitionerBaseline(model, objective=objective, seed=seed, **keep)
