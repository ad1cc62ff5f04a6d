"""Per-sample losses: what the learner minimises and what it returns as the prequential score.

An objective is a callable ``(output, x, y) -> losses`` returning one loss per sample (a 1-D tensor of
length B). The learner averages it for the update and hands it to the caller untouched: it never contains
the regulariser.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Objective = Callable[[torch.Tensor, torch.Tensor, "torch.Tensor | None"], torch.Tensor]


def reconstruction(output: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared reconstruction error of each sample.

    >>> x = torch.zeros(2, 3)
    >>> reconstruction(torch.ones(2, 3), x)
    tensor([1., 1.])
    """
    return (output - x).pow(2).reshape(x.shape[0], -1).mean(dim=1)


def classification(output: torch.Tensor, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of each sample's logits against its integer label.

    >>> classification(torch.tensor([[0.0, 0.0]]), None, torch.tensor([1])).round(decimals=4)
    tensor([0.6931])
    """
    if y is None:
        raise ValueError("the classification objective needs labels: call learn_many(x, y)")
    return F.cross_entropy(output, y.long(), reduction="none")


OBJECTIVES: dict[str, Objective] = {"reconstruction": reconstruction, "classification": classification}


def resolve_objective(objective: str | Objective) -> tuple[Objective, bool]:
    """Return the objective callable and whether it needs labels."""
    if callable(objective):
        return objective, False
    try:
        return OBJECTIVES[objective], objective == "classification"
    except KeyError:
        raise ValueError(
            f"unknown objective {objective!r}; choose one of {sorted(OBJECTIVES)} or pass a callable"
        ) from None
