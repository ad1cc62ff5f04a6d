"""The importance of an embedding table: per-sample row gradients grouped by sorting, no host sync.

Sample k's gradient for row ``j`` is the sum of the output gradients at the positions of the sample that hold
index ``j``; the absolute value must be taken after that sum and before the mean over samples. Sorting the
(sample, index) keys groups the positions of one pair into a segment, so the per-pair sums need memory
``O(B T D)`` and no ``unique`` (whose output size would have to be read back from the device).
"""

from __future__ import annotations

import torch
from torch import nn

from streammas.learner.importance.registry import register_rule


@register_rule(nn.Embedding)
def _embedding_rule(layer: nn.Embedding, a: torch.Tensor, delta: torch.Tensor) -> dict[str, torch.Tensor]:
    """Row ``j``'s per-sample gradient is the sum of the output gradients at the sample's positions holding
    index ``j``. Grouping the (sample, index) pairs by sorting keeps memory at ``O(B T D)`` and needs no host
    synchronisation (no ``unique``).

    >>> layer = nn.Embedding(4, 2)
    >>> index = torch.tensor([[1, 1], [2, 1]])  # sample 0 holds row 1 twice: its gradients add before |.|
    >>> delta = torch.tensor([[[1.0, 2.0], [-3.0, 1.0]], [[1.0, 1.0], [1.0, 1.0]]])
    >>> _embedding_rule(layer, index, delta)["weight"]
    tensor([[0.0000, 0.0000],
            [1.5000, 2.0000],
            [0.5000, 0.5000],
            [0.0000, 0.0000]])
    """
    batch = a.shape[0]
    rows, dim = layer.weight.shape
    index = a.reshape(batch, -1)
    grads = delta.reshape(-1, dim)
    keys = (torch.arange(batch, device=a.device).unsqueeze(1) * rows + index).reshape(-1)
    keys, order = torch.sort(keys)
    starts = torch.ones_like(keys, dtype=torch.bool)
    starts[1:] = keys[1:] != keys[:-1]
    segment = starts.cumsum(0) - 1  # one segment per distinct (sample, index) pair
    sums = torch.zeros_like(grads).index_add_(0, segment, grads.index_select(0, order))
    if layer.scale_grad_by_freq:  # the gradient is divided by the index's count within the sample
        counts = torch.zeros(keys.shape[0], dtype=grads.dtype, device=grads.device)
        counts.index_add_(0, segment, torch.ones_like(counts))
        sums /= counts.clamp_(min=1).unsqueeze(1)
    target_row = torch.zeros_like(keys).scatter_(0, segment, keys % rows)  # unused segments: zero rows to row 0
    weight = torch.zeros_like(layer.weight, memory_format=torch.contiguous_format)
    weight.index_add_(0, target_row, sums.abs_()).div_(batch)
    if layer.padding_idx is not None:
        weight[layer.padding_idx] = 0.0
    return {"weight": weight}
