"""The hard buffer: the H samples with the highest recent loss, kept on the learner's device and mixed
into every update (Aljundi et al., task-free continual learning)."""

from __future__ import annotations

from collections.abc import Mapping

import torch


class HardBuffer:
    """Keeps the ``capacity`` samples with the highest loss among those it holds and those just seen.

    Selection is a ``topk`` on the device; the buffer's size is known on the host without reading any
    device value. A capacity of 0 is a valid, empty buffer.

    >>> buf = HardBuffer(2)
    >>> x = torch.tensor([[1.0], [2.0], [3.0]])
    >>> buf.update(x, None, torch.tensor([0.5, 3.0, 1.0]))
    >>> buf.x.tolist(), len(buf)
    ([[2.0], [3.0]], 2)
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"hard buffer size must be >= 0, got {capacity}")
        self.capacity = int(capacity)
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
