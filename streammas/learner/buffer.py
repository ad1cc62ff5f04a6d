"""The hard buffer: the H samples with the highest recent loss, kept on the learner's device and mixed
into every update (Aljundi et al., task-free continual learning).

A sample that stays hard for ever (an outlier far from anything the model can fit) would otherwise be
replayed at every step for the rest of the stream: on the heavy-tailed segments streams that alone makes SGD
diverge. So a held sample competes with its current loss, but at most with its last key times ``decay``; it
gives way to new hard samples after a while unless it stays far harder than they are."""

from __future__ import annotations

from collections.abc import Mapping

import torch


class HardBuffer:
    """Keeps the ``capacity`` samples with the highest key among those it holds and those just seen.

    A new sample's key is its loss; a held sample's is its loss, but at most its last key times ``decay``.
    Selection is a ``topk`` on the device; the buffer's size is known on the host without reading any device
    value. A capacity of 0 is a valid, empty buffer.

    Parameters
    ----------
    capacity : int
        How many samples it keeps, those with the highest key.
    decay : float, default 1.0
        In (0, 1]: a held sample's key is at most its last key times ``decay`` (1: the plain highest-loss
        buffer).

    Attributes
    ----------
    x : torch.Tensor or None
        The held samples (``None`` until the first :meth:`update`).
    y : torch.Tensor or None
        Their targets, when the learner has any.
    loss : torch.Tensor or None
        Their keys.

    Examples
    --------
    >>> buf = HardBuffer(2, decay=0.5)
    >>> x = torch.tensor([[1.0], [2.0], [3.0]])
    >>> buf.update(x, None, torch.tensor([0.5, 3.0, 1.0]))
    >>> buf.x.tolist(), len(buf)
    ([[2.0], [3.0]], 2)
    >>> x_all, _ = buf.extend(torch.tensor([[4.0]]), None)  # the batch, then the held samples
    >>> buf.update(x_all, None, torch.tensor([2.0, 3.0, 1.0]))
    >>> sorted(buf.loss.tolist())  # new sample 4.0 keyed 2.0; held 2.0 still at loss 3.0 but keyed 3.0 * 0.5
    [1.5, 2.0]
    """

    def __init__(self, capacity: int, decay: float = 1.0) -> None:
        if capacity < 0:
            raise ValueError(f"hard buffer size must be >= 0, got {capacity}")
        if not 0.0 < decay <= 1.0:
            raise ValueError(f"hard buffer decay must be in (0, 1], got {decay}")
        self.capacity = int(capacity)
        self.decay = float(decay)
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.loss: torch.Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.x is None else self.x.shape[0]

    def extend(self, x: torch.Tensor, y: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch followed by the buffer's samples (the batch unchanged when the buffer is empty)."""
        if not len(self):
            return x, y
        x_all = torch.cat([x, self.x])
        y_all = None if y is None or self.y is None else torch.cat([y, self.y])
        return x_all, y_all

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor | None, loss: torch.Tensor) -> None:
        """Keep the highest-loss samples of ``x`` (the batch plus the buffer, as made by :meth:`extend`)."""
        if self.capacity == 0:
            return
        k = min(self.capacity, x.shape[0])
        # Non-finite losses are never kept: a NaN must not win the selection.
        keys = torch.nan_to_num(loss.detach().float(), nan=-torch.inf, posinf=-torch.inf)
        held = len(self)
        if held and self.decay < 1.0:  # the held samples are the last rows (see extend)
            tail = keys[x.shape[0] - held:]
            torch.minimum(tail, self.loss * self.decay, out=tail)
        top = torch.topk(keys, k, sorted=False).indices
        self.x = x.detach().index_select(0, top)
        self.y = None if y is None else y.detach().index_select(0, top)
        self.loss = keys.index_select(0, top)

    def state_dict(self) -> dict:
        return {"capacity": self.capacity, "x": self.x, "y": self.y, "loss": self.loss}

    def load_state_dict(self, state: Mapping) -> None:
        self.capacity = int(state["capacity"])
        self.x, self.y, self.loss = state["x"], state["y"], state["loss"]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.x, self.y, self.loss) if t is not None)
