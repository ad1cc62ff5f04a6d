"""The memory: consolidated importance Omega, the anchor theta*, the running importance of the current
regime, and the regulariser ``lambda * sum Omega (theta - theta*)^2`` that ties them together.

State is kept as plain tensors in lists aligned with the parameters (the way ``torch.optim`` keeps its
state), so that the regulariser is a handful of ``torch._foreach_*`` kernel launches whatever the number
of parameters, and the state dict is made of tensors and numbers only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

CONSOLIDATION_MODES = ("mean", "sum", "ema")
NORMALIZATIONS = ("mean", "max", "tensor", "none")


class Synapses:
    """Omega, theta* and the running importance for a list of named parameters.

    State is kept as plain tensors in lists aligned with the parameters; the regulariser is
    ``lambda * sum Omega (theta - theta*)^2``.

    Parameters
    ----------
    named_params : iterable of (str, torch.nn.Parameter)
        The parameters, with their names (``model.named_parameters()``).
    consolidation : {"mean", "sum", "ema"}, default "mean"
        How each regime's importance enters Omega: ``"mean"`` (the cumulative mean over the consolidations so
        far), ``"sum"``, or ``"ema"`` (exponential averaging with ``ema_alpha``).
    ema_alpha : float, default 0.5
        Weight of a new regime with ``consolidation="ema"``, in (0, 1].
    normalization : {"mean", "max", "tensor", "none"}, default "mean"
        Rescales a regime's importance before it enters Omega (``"mean"``: its mean over all parameters becomes
        1; ``"max"``: its maximum becomes 1; ``"tensor"``: each parameter tensor's mean becomes 1), so that lambda
        means the same thing whatever the size of the model's output.
    omega_dtype : torch.dtype or None, default None
        Stores Omega in another dtype than the parameters' (``torch.bfloat16`` halves its memory: Omega weighs
        the penalty, and three significant digits weigh it as well as seven); arithmetic on it is done in the
        parameters' dtype. ``None``: the parameters' dtype.

    Attributes
    ----------
    omega : list of torch.Tensor
        The consolidated importance Omega, one tensor per parameter.
    anchor : list of torch.Tensor
        The anchor theta*.
    running : list of torch.Tensor
        The running importance of the current regime.
    running_count : int
        The samples folded into ``running`` since the last consolidation.
    measured_samples : int
        The samples this process has folded into ``running`` in all (not reset by consolidation, not saved: what
        ``streammas bench step`` reads to check that a variant measured the importance it claims to).
    consolidations : int
        How many consolidations there have been.

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.tensor([1.0, 1.0]))
    >>> syn = Synapses([("w", w)], normalization="none")
    >>> syn.accumulate([torch.tensor([2.0, 0.0])], batch_size=4)
    >>> syn.consolidate()
    >>> syn.omega[0], syn.anchor[0]
    (tensor([2., 0.]), tensor([1., 1.]))
    >>> with torch.no_grad():
    ...     _ = w.fill_(3.0)
    >>> syn.penalty(reg_lambda=1.0)
    tensor(8., grad_fn=<...>)
    >>> syn.proximal_step(reg_lambda=1.0, lr=0.25)  # c = 2 * lr * lambda * Omega = [1, 0]
    >>> w.data
    tensor([2., 3.])
    """

    def __init__(
        self,
        named_params: Iterable[tuple[str, torch.nn.Parameter]],
        *,
        consolidation: str = "mean",
        ema_alpha: float = 0.5,
        normalization: str = "mean",
        omega_dtype: torch.dtype | None = None,
    ) -> None:
        if consolidation not in CONSOLIDATION_MODES:
            raise ValueError(f"consolidation must be one of {CONSOLIDATION_MODES}, got {consolidation!r}")
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"omega_normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        if not 0.0 < ema_alpha <= 1.0:
            raise ValueError(f"ema_alpha must lie in (0, 1], got {ema_alpha}")
        named = list(named_params)
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.mode = consolidation
        self.ema_alpha = float(ema_alpha)
        self.normalization = normalization
        self.omega = [torch.zeros_like(p, dtype=omega_dtype or p.dtype, memory_format=torch.contiguous_format)
                      .detach() for p in self.params]
        self.anchor = [p.detach().clone() for p in self.params]
        self.running = [torch.zeros_like(p, memory_format=torch.contiguous_format).detach() for p in self.params]
        self.running_count = 0
        self.measured_samples = 0
        self.consolidations = 0

    # -- importance of the current regime -------------------------------------------------------------
    def accumulate(self, batch_importance: list[torch.Tensor], batch_size: int) -> None:
        """Fold one batch's mean importance into the running average over all samples since consolidation."""
        torch._foreach_lerp_(self.running, batch_importance, self.fold_weight(batch_size))

    def fold_weight(self, batch_size: int) -> float:
        """Count ``batch_size`` more samples into the running average and return the weight ``B / (n + B)`` with
        which their mean importance enters it, ``running += (mean - running) * weight`` (for a caller that folds
        the batch in itself, fused with measuring it: see
        :meth:`streammas.learner.importance.SensitivityProbe.fold`)."""
        weight = batch_size / (self.running_count + batch_size)
        self.running_count += batch_size
        self.measured_samples += batch_size
        return weight

    # -- mergeable: the running importance of several learners, as one learner that saw all their samples ------
    def running_move(self, since: Sequence[torch.Tensor], total_count: int) -> list[torch.Tensor]:
        """This learner's running importance as its move away from ``since`` (a running importance several
        learners agreed on), weighted by its share of the ``total_count`` samples they all folded: the sum of the
        learners' moves is the move of the merged mean, with no large products (fp16 and bf16 stay in range)."""
        share = self.running_count / max(total_count, 1)
        return [(t - r) * share for t, r in zip(self.running, since)]

    def merge_running(self, moves: list[torch.Tensor], since: Sequence[torch.Tensor], count: int) -> None:
        """The merged running importance: ``since`` plus the learners' summed :meth:`running_move` (``moves``,
        consumed), over ``count`` samples in all.

        >>> from torch import nn
        >>> model = nn.Linear(2, 1)
        >>> a, b, both = (Synapses(model.named_parameters()) for _ in range(3))
        >>> for part, x in ((a, torch.ones(1, 2)), (b, torch.zeros(1, 2))):
        ...     part.accumulate([x, torch.ones(1)], 3)
        >>> start = [torch.zeros_like(t) for t in both.running]
        >>> moves = [ma + mb for ma, mb in zip(a.running_move(start, 6), b.running_move(start, 6))]
        >>> both.merge_running(moves, start, 6)
        >>> both.running[0].tolist(), both.running_count
        ([[0.5, 0.5]], 6)
        """
        torch._foreach_add_(moves, list(since))
        torch._foreach_copy_(self.running, moves)
        self.running_count = int(count)

    def reset_running(self) -> None:
        torch._foreach_zero_(self.running)
        self.running_count = 0

    def _normalized(self, importance: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.normalization == "none":
            return importance
        if self.normalization == "tensor":
            scales = [t.mean().reshape(1) for t in importance]
            scales = [torch.where(sc > 0, sc, torch.ones_like(sc)) for sc in scales]
            return torch._foreach_div(importance, scales)
        flat = torch.cat([t.reshape(-1) for t in importance])
        scale = flat.mean() if self.normalization == "mean" else flat.max()
        # An all-zero importance (nothing measured) stays zero instead of becoming NaN; no host sync.
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return torch._foreach_div(importance, scale)

    # -- consolidation -----------------------------------------------------------------------------------
    def consolidate(
        self, importance: list[torch.Tensor] | None = None, theta: list[torch.Tensor] | None = None, *,
        shift: list[torch.Tensor] | None = None,
    ) -> None:
        """Merge a regime's importance (the running one by default) into Omega and anchor theta*: at ``theta``,
        at ``theta* + shift`` (weights kept as their difference from theta*), or at the current parameters."""
        regime = self._normalized(self.running if importance is None else importance)
        self.consolidations += 1
        omega = self._full(self.omega)
        if self.mode == "sum":
            torch._foreach_add_(omega, regime)
        elif self.mode == "ema" and self.consolidations > 1:
            torch._foreach_lerp_(omega, regime, self.ema_alpha)
        else:  # cumulative mean; the first "ema" consolidation also takes the regime as it is
            torch._foreach_lerp_(omega, regime, 1.0 / self.consolidations)
        if omega is not self.omega:
            torch._foreach_copy_(self.omega, omega)
        if shift is not None:
            torch._foreach_add_(self.anchor, shift)
        else:
            torch._foreach_copy_(self.anchor, [p.detach() for p in self.params] if theta is None else theta)
        self.reset_running()

    def _full(self, stored: list[torch.Tensor]) -> list[torch.Tensor]:
        """``stored`` in the parameters' dtypes: the same list where it already is, else converted copies."""
        if all(t.dtype == p.dtype for t, p in zip(stored, self.params)):
            return stored
        return [t.to(p.dtype) for t, p in zip(stored, self.params)]

    # -- the regulariser ---------------------------------------------------------------------------------
    def penalty(self, reg_lambda: float) -> torch.Tensor:
        """``lambda * sum Omega (theta - theta*)^2``, differentiable w.r.t. the parameters."""
        total = sum((o * (p - a).pow(2)).sum() for o, p, a in zip(self.omega, self.params, self.anchor))
        return reg_lambda * total

    def penalty_grad(self, reg_lambda: float) -> list[torch.Tensor]:
        """The penalty's gradient ``2 lambda Omega (theta - theta*)``."""
        diff = torch._foreach_sub([p.detach() for p in self.params], self.anchor)
        return torch._foreach_mul(torch._foreach_mul(diff, self._full(self.omega)), 2.0 * reg_lambda)

    @torch.no_grad()
    def proximal_step(
        self,
        reg_lambda: float,
        lr: float,
        steps: float | torch.Tensor = 1.0,
        indices: list[int] | None = None,
        workspace: list[torch.Tensor] | None = None,
        metric: list[torch.Tensor] | None = None,
    ) -> None:
        """Apply the regulariser as its exact proximal step ``theta <- (theta + c theta*) / (1 + c)`` with
        ``c = 2 lr lambda Omega``: the minimiser of ``||theta - v||^2 / (2 lr) + penalty(theta)``.

        It moves each parameter a fraction ``c / (1 + c) < 1`` of the way to its anchor, so it is stable
        for any lambda (a gradient step on the penalty diverges once ``2 lr lambda max Omega > 2``).
        ``steps`` multiplies the step size: one proximal step for that many optimizer steps (the learner's
        ``prox_every``); as a 0-d device tensor it lets a skipped update skip this step too, without a host
        sync (0 leaves theta bit for bit as it was).
        ``indices`` restricts the step to some parameters (an optimizer's parameter group and its lr).
        ``workspace``: tensors shaped like those parameters that may be overwritten (the gradients, dead after
        the optimizer step), so that the step allocates nothing: five in-place passes, no temporaries.
        ``metric``: per-parameter divisors of the step size (aligned with ``indices``), the optimizer's own
        preconditioner (for Adam
        ``sqrt(v_hat) + eps``): ``c = 2 lr lambda Omega / metric``, the exact proximal step in the metric in which
        the optimizer steps, as stable for any lambda.
        """
        if self.consolidations == 0 or reg_lambda == 0.0:
            return
        omega, anchor, params = self.omega, self.anchor, self.params
        if indices is not None:
            omega, anchor, params = ([seq[i] for i in indices] for seq in (omega, anchor, params))
        scale = steps * (2.0 * lr * reg_lambda)
        if workspace is None:
            c = [o.to(p.dtype, copy=True) for o, p in zip(omega, params)]  # one allocation, widened if narrower
            torch._foreach_mul_(c, scale)
        else:  # a copy from a narrower Omega widens it
            c = workspace
            torch._foreach_copy_(c, omega)
            torch._foreach_mul_(c, scale)
        if metric is not None:
            torch._foreach_div_(c, metric)
        data = [p.data for p in params]
        torch._foreach_addcmul_(data, anchor, c)
        torch._foreach_add_(c, 1.0)
        torch._foreach_div_(data, c)

    # -- state ---------------------------------------------------------------------------------------------
    def as_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        return {
            "omega": dict(zip(self.names, self.omega)),
            "anchor": dict(zip(self.names, self.anchor)),
            "running": dict(zip(self.names, self.running)),
        }

    def state_dict(self) -> dict:
        state = {key: {n: t.clone() for n, t in d.items()} for key, d in self.as_dicts().items()}
        state.update(running_count=self.running_count, consolidations=self.consolidations)
        return state

    def load_state_dict(self, state: Mapping) -> None:
        for key in ("omega", "anchor", "running"):
            stored = state[key]
            missing = set(self.names) - set(stored)
            if missing:
                raise ValueError(f"state has no {key} for parameters {sorted(missing)}")
            torch._foreach_copy_(getattr(self, key), [stored[n] for n in self.names])
        self.running_count = int(state["running_count"])
        self.consolidations = int(state["consolidations"])

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.omega, *self.anchor, *self.running))
