"""The online importance of a learner: when a batch is measured, and how its importance reaches the running mean.

Every route ends in :attr:`Synapses.running <streammas.learner.synapses.Synapses.running>`: the update engine folds the
importance from its own forward pass where it can (:meth:`ImportanceMeter.capture` and
:meth:`ImportanceMeter.fold_captured`, or the hand-derived chain's fold), and otherwise :meth:`ImportanceMeter.fold`
measures the batch in a separate eval-mode pass. The engines decide which; the learner only asks for a batch
to be measured (:meth:`ImportanceMeter.due`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from streammas.learner.importance import SensitivityProbe, hebbian_importance, output_sensitivity
from streammas.learner.synapses import Synapses


class ImportanceMeter:
    """Measures the output sensitivity of ``model`` into ``synapses.running``.

    The update engine folds the importance from its own forward pass where it can (:meth:`capture` and
    :meth:`fold_captured`), and otherwise :meth:`fold` measures the batch in a separate eval-mode pass.

    Parameters
    ----------
    model : torch.nn.Module
        The learner's model.
    synapses : Synapses
        Where the importance goes, into ``synapses.running``.
    every : int, default 1
        Measure one batch in this many.
    enabled : bool, default True
        ``False`` (no regulariser, or importance measured on the hard buffer instead) never measures the stream.
    method : str, default "auto"
        That of :func:`~streammas.learner.importance.output_sensitivity` (or ``"hebbian"``).
    output : str or None, default None
        That of :func:`~streammas.learner.importance.output_sensitivity`.

    Examples
    --------
    >>> model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3))
    >>> synapses = Synapses(model.named_parameters())
    >>> meter = ImportanceMeter(model, synapses, every=2)
    >>> meter.due(0), meter.due(1)
    (True, False)
    >>> meter.fold(torch.randn(8, 3))
    >>> synapses.running_count, bool(synapses.running[0].abs().sum() > 0)
    (8, True)
    """

    def __init__(self, model: nn.Module, synapses: Synapses, *, every: int = 1, enabled: bool = True,
                 method: str = "auto", output: str | None = None) -> None:
        self.model = model
        self.synapses = synapses
        self.every = int(every)
        self.enabled = enabled
        self.method = method
        self.output = output
        # The per-layer rules are found once; the training forward serves the importance pass when the model's
        # train-mode forward equals its eval-mode one (see SensitivityProbe.shares_forward).
        self.probe = (SensitivityProbe(model, output=output, hebbian=method == "hebbian")
                      if method in ("auto", "fast", "hebbian") else None)
        self.share_forward = True

    def due(self, step: int) -> bool:
        """Whether the batch of step ``step`` is to be measured."""
        return self.enabled and step % self.every == 0

    def can_share(self) -> bool:
        """Whether the training step's own forward pass can serve the importance."""
        return self.share_forward and self.probe is not None and self.probe.shares_forward()

    def chain_can_fold(self) -> bool:
        """Whether a hand-derived chain step may fold the importance itself (it measures the model's output with
        the exact rule)."""
        return self.can_share() and self.output is None and self.method != "hebbian"

    def weight(self, batch: int) -> functools.partial:
        """The running mean's weight for ``batch`` more samples, counted only when called."""
        return functools.partial(self.synapses.fold_weight, batch)

    @contextmanager
    def capture(self) -> Iterator[None]:
        """Record the forward pass run inside (the probe's hooks exist only for it)."""
        with self.probe.capture():
            yield

    def fold_captured(self, rows: int, batch: int) -> bool:
        """Fold the first ``batch`` of the ``rows`` rows of the captured pass; ``False`` if it could not serve."""
        try:
            return self.probe.ready(rows) and self.probe.fold(batch, self.synapses.running, self.weight(batch),
                                                              retain_graph=True)
        finally:
            self.probe.release()

    def fold(self, x: torch.Tensor) -> None:
        """Measure ``x`` in a separate eval-mode pass and fold its mean importance into the running mean."""
        weight = self.weight(x.shape[0])
        if self.probe is None or not self.probe.measure_into(x, self.synapses.running, weight):
            self.synapses.accumulate(self.measure(x), x.shape[0])

    # -- in a group of workers: each measures its own rows, the group sums, every worker folds the same sums ------
    def captured_sum(self, rows: int, batch: int) -> list[torch.Tensor] | None:
        """:meth:`fold_captured`'s importance summed over the first ``batch`` rows instead of folded (zeros for
        none); ``None`` if the captured pass could not serve."""
        try:
            if not self.probe.ready(rows):
                return None
            if batch == 0:
                return [torch.zeros_like(t) for t in self.synapses.running]
            means = self.probe.importance(batch, retain_graph=True)
            return None if means is None else [means[n] * batch for n in self.synapses.names]
        finally:
            self.probe.release()

    def measure_sum(self, x: torch.Tensor) -> list[torch.Tensor]:
        """:meth:`fold`'s importance of ``x``, summed over its rows (zeros for none) instead of folded."""
        if x.shape[0] == 0:
            return [torch.zeros_like(t) for t in self.synapses.running]
        means = None if self.probe is None else self.probe.measure(x)
        means = self.measure(x) if means is None else [means[n] for n in self.synapses.names]
        return [m * x.shape[0] for m in means]

    def fold_sum(self, sums: list[torch.Tensor], batch: int) -> None:
        """Fold importance summed over ``batch`` samples (a group's, over all its workers) into the running mean.

        >>> model = nn.Linear(2, 1)
        >>> synapses = Synapses(model.named_parameters())
        >>> meter = ImportanceMeter(model, synapses)
        >>> x = torch.randn(6, 2)
        >>> halves = [torch.add(a, b) for a, b in zip(meter.measure_sum(x[:4]), meter.measure_sum(x[4:]))]
        >>> meter.fold_sum(halves, 6)
        >>> whole = Synapses(model.named_parameters())
        >>> ImportanceMeter(model, whole).fold(x)
        >>> all(torch.allclose(a, b) for a, b in zip(synapses.running, whole.running)), synapses.running_count
        (True, 6)
        """
        self.synapses.accumulate([s / batch for s in sums], batch)

    def measure(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The mean importance over ``x``, aligned with the synapses' parameters."""
        if self.method == "hebbian":
            importance = hebbian_importance(self.model, x)
        else:
            importance = output_sensitivity(self.model, x, output=self.output, method=self.method)
        return [importance[n] for n in self.synapses.names]
