"""The input guard: what a batch must be before a learner touches it, and the copy to the learner's device.

A batch arrives as a tensor, a NumPy array, a list, or (one sample) a dict of features. The guard converts it,
checks its shape against the stream's (fixed by the first batch that can be learned) and its values (NaN and
Inf are refused), and either raises a ``ValueError`` naming the bad samples or drops them and counts them
(``on_bad_input="skip"``). The common case, a finite batch of the right shape, costs one reduction and no mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from streammas.backend.hostsync import cpu_read, host_read

_INTEGER_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)


class InputGuard:
    """Validates and converts batches for a learner whose model lives on ``device`` in ``dtype``.

    :meth:`prepare` returns ``(x, y, keep)``: the samples to learn on the device, their labels, and the indices
    kept (``None`` when all are). :meth:`spread` puts per-sample values back in the caller's positions, with NaN
    for the samples that were dropped.

    Parameters
    ----------
    device : torch.device
        The device of the learner's model, where the batches go.
    dtype : torch.dtype
        The model's dtype, which the samples are cast to.
    on_bad_input : {"raise", "skip"}, default "raise"
        ``"raise"`` a ``ValueError`` naming the bad samples, or ``"skip"`` them (counted in ``rejected``).
    needs_labels : bool, default False
        Whether a batch without labels is refused (the objective needs them).
    on_reject : callable or None, default None
        Called with the number of samples dropped, each time some are.
    count_classes : callable or None, default None
        ``count_classes(sample_shape)``: how many classes a classifier's output has (see :func:`model_classes`),
        asked once, with the first labelled batch; integer labels outside them are then bad input.

    Attributes
    ----------
    sample_shape : tuple of int or None
        The stream's sample shape, fixed by the first batch that can be learned (``None`` until then).
    rejected : int
        How many samples were dropped.

    Examples
    --------
    >>> guard = InputGuard(torch.device("cpu"), torch.float32, on_bad_input="skip")
    >>> x, y, keep = guard.prepare([[1.0, 2.0], [math.nan, 0.0], [3.0, 4.0]], None)
    >>> x.tolist(), keep.tolist(), guard.rejected, guard.sample_shape
    ([[1.0, 2.0], [3.0, 4.0]], [0, 2], 1, (2,))
    >>> guard.spread(torch.tensor([0.5, 0.7]), keep, 3).tolist()
    [0.5, nan, 0.7]
    """

    def __init__(self, device: torch.device, dtype: torch.dtype, *, on_bad_input: str = "raise",
                 needs_labels: bool = False, on_reject: Callable[[int], None] | None = None,
                 count_classes: Callable[[tuple[int, ...]], int | None] | None = None) -> None:
        self.device = device
        self.dtype = dtype
        self.on_bad_input = on_bad_input
        self.needs_labels = needs_labels
        self.on_reject = on_reject
        self.count_classes = count_classes
        self.sample_shape: tuple[int, ...] | None = None
        self.input_dtype: torch.dtype | None = None  # the dtype the last batch arrived in, before the model's
        self.feature_names: list[str] | None = None
        self.rejected = 0
        #: The classes a classifier's labels index (``0 .. classes - 1``), once known: labels outside are bad input.
        self.classes: int | None = None

    # -- conversion ---------------------------------------------------------------------------------------------
    @staticmethod
    def to_tensor(x: Any) -> torch.Tensor:
        """A host or device tensor of real numbers (not yet copied or cast)."""
        if isinstance(x, torch.Tensor):
            if not (x.is_floating_point() or x.dtype in _INTEGER_DTYPES):
                raise ValueError(f"samples must be real numbers, got a tensor of dtype {x.dtype}")
            return x.detach()
        array = np.asarray(x)
        if array.dtype.kind not in "fiub":
            raise ValueError(f"samples must be real numbers, got an array of dtype {array.dtype}")
        return torch.from_numpy(np.ascontiguousarray(array))

    def one(self, x: Any) -> np.ndarray | torch.Tensor:
        """One sample (array, tensor or dict of features) as a batch of one."""
        if isinstance(x, Mapping):
            return self._vector(x)[None]
        return self.to_tensor(x).unsqueeze(0)

    def host_row(self, x: Any) -> np.ndarray | None:
        """One flat sample that needs no conversion and no check but its finiteness (float32, in host memory,
        the stream's sample shape, for a float32 model in CPU memory), as a NumPy view; ``None`` where the
        general path must see it (:meth:`prepare`, which also turns away and counts a sample that is not finite).

        >>> guard = InputGuard(torch.device("cpu"), torch.float32)
        >>> _ = guard.prepare(np.zeros((1, 2), dtype=np.float32), None)  # the stream's shape: (2,)
        >>> guard.host_row(np.array([1.0, 2.0], dtype=np.float32)).tolist(), guard.host_row(np.array([1.0, 2.0]))
        ([1.0, 2.0], None)
        """
        shape = self.sample_shape
        if shape is None or len(shape) != 1 or self.dtype != torch.float32 or self.device.type != "cpu":
            return None
        if isinstance(x, torch.Tensor):
            if x.dtype != torch.float32 or not x.is_cpu or x.requires_grad:
                return None
            x = x.numpy()
        elif type(x) is not np.ndarray or x.dtype != np.float32:
            return None
        if x.shape != shape or not math.isfinite(float(x.sum())):
            return None
        self.input_dtype = torch.float32
        return x

    def _vector(self, x: Mapping[str, Any]) -> np.ndarray:
        if self.feature_names is None:
            self.feature_names = list(x)
        # Features absent from a sample are 0 (river's sparse convention); features never seen before are
        # not part of the model's input and are left out.
        return np.array([float(x.get(name, 0.0)) for name in self.feature_names], dtype=np.float32)

    def to_device(self, xt: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """A batch on the learner's device (in the model's dtype unless told). From host memory to a GPU the copy
        goes through pinned memory and does not block: from pageable memory it waits for the device's queue."""
        dtype = self.dtype if dtype is None else dtype
        if self.device.type == "cuda" and xt.device.type == "cpu":
            return xt.to(dtype).pin_memory().to(self.device, non_blocking=True)
        return xt.to(self.device, dtype)

    def _labels(self, yt: torch.Tensor | None) -> torch.Tensor | None:
        return None if yt is None else self.to_device(yt, yt.dtype)

    # -- validation ---------------------------------------------------------------------------------------------
    def prepare(self, x: Any, y: Any, labels_required: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Validate a batch; returns ``(x, y)`` on the device and the indices kept (``None``: all of them)."""
        xt = self.to_tensor(x)
        self.input_dtype = xt.dtype
        if xt.dim() < 2:
            raise ValueError(f"learn_many/score_many expect a batch [B, ...]; got shape {tuple(xt.shape)} "
                             "(use learn_one for a single sample)")
        batch = xt.shape[0]
        yt = None
        if y is not None:
            yt = self.to_tensor(y).reshape(-1)
            if yt.shape[0] != batch:
                raise ValueError(f"got {batch} samples but {yt.shape[0]} labels")
        elif self.needs_labels and labels_required:
            raise ValueError("this objective needs labels: pass y")
        shape = tuple(xt.shape[1:])
        if yt is not None and self.classes is None and self.count_classes is not None and self.needs_labels:
            self.classes = self.count_classes(shape)
        if self.sample_shape is not None and shape != self.sample_shape:
            return self._reject(xt, yt, torch.zeros(batch, dtype=torch.bool),
                                f"samples have shape {shape}, the stream's samples have shape {self.sample_shape}")
        finite = self._finite_rows(xt.reshape(batch, -1))
        labelled = self._labels_in_range(yt)
        if labelled is not None:  # a label no output of the model stands for would fail the step, not only its row
            finite = labelled if finite is None else finite & labelled.to(finite.device)
            if self.sample_shape is None and bool(finite.any()):
                self.sample_shape = shape
            if not bool(finite.all()):
                return self._reject(xt, yt, finite, f"labels outside 0..{self.classes - 1}, or samples not finite")
        if finite is None and (yt is None or not yt.is_floating_point()):  # the common case: nothing to look at
            if self.sample_shape is None:
                self.sample_shape = shape
            return self.to_device(xt), self._labels(yt), None
        if finite is None:
            finite = torch.ones(batch, dtype=torch.bool, device=xt.device)
        if yt is not None and yt.is_floating_point():
            finite &= torch.isfinite(yt.to(finite.device))
        ok = torch.tensor(host_read(finite), dtype=torch.bool) if xt.device.type != "cpu" else finite
        if self.sample_shape is None and bool(ok.any()):
            self.sample_shape = shape
        if not bool(ok.all()):
            return self._reject(xt, yt, ok, "samples contain NaN or Inf")
        return self.to_device(xt), self._labels(yt), None

    def _labels_in_range(self, yt: torch.Tensor | None) -> torch.Tensor | None:
        """Which integer labels index one of :attr:`classes` (``None``: all do, or nothing to check). Labels
        in host memory (the daemon's) are read at no sync cost; on a device it costs one read."""
        if self.classes is None or yt is None or yt.is_floating_point() or not len(yt):
            return None
        bounds = torch.stack([yt.min(), yt.max()]).to(torch.int64)
        low, high = (int(v) for v in (cpu_read(bounds) if bounds.device.type == "cpu" else host_read(bounds)))
        if low >= 0 and high < self.classes:
            return None
        return (yt >= 0) & (yt < self.classes)

    @staticmethod
    def _finite_rows(rows: torch.Tensor) -> torch.Tensor | None:
        """Which rows hold only finite numbers (once cast to float32, as the model will see them); ``None``
        when they all do, as far as host-side input can tell at the price of one reduction."""
        if rows.dtype in _INTEGER_DTYPES:
            return None
        # The sum is finite only if every element is; a non-finite sum may also be an overflow of finite values,
        # so then (rarely) the exact test decides. One reduction instead of a mask.
        if (rows.device.type == "cpu" and rows.dtype in (torch.float32, torch.float16, torch.bfloat16)
                and math.isfinite(float(rows.sum(dtype=torch.float32)))):
            return None
        return torch.isfinite(rows.float()).all(dim=1)

    def _reject(self, xt: torch.Tensor, yt: torch.Tensor | None, ok: torch.Tensor, why: str):
        bad = (~ok).nonzero().flatten().tolist()
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        if self.on_bad_input == "raise":
            raise ValueError(f"{len(bad)} of {xt.shape[0]} samples rejected ({why}): indices [{shown}]")
        self.rejected += len(bad)
        if self.on_reject is not None:
            self.on_reject(len(bad))
        keep = ok.nonzero().flatten()
        x_keep = xt[keep.to(xt.device)].to(self.device, self.dtype) if len(keep) else xt[:0].to(self.device)
        y_keep = None if yt is None else self._labels(yt[keep.to(yt.device)])
        return x_keep, y_keep, keep

    @staticmethod
    def spread(values: torch.Tensor, keep: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Per-sample ``values`` of the kept samples back at their positions in a batch of ``batch``, NaN elsewhere."""
        if keep is None:
            return values
        full = torch.full((batch,), math.nan, dtype=values.dtype, device=values.device)
        full[keep.to(values.device)] = values
        return full

    # -- state --------------------------------------------------------------------------------------------------
    def adopt_shape(self, shape: tuple[int, ...]) -> None:
        """``shape`` becomes the stream's sample shape, unless one is known already."""
        if self.sample_shape is None:
            self.sample_shape = tuple(shape)

    def state_dict(self) -> dict[str, Any]:
        return {"sample_shape": None if self.sample_shape is None else list(self.sample_shape),
                "feature_names": self.feature_names, "rejected": self.rejected, "classes": self.classes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sample_shape = None if state["sample_shape"] is None else tuple(state["sample_shape"])
        self.feature_names = None if state["feature_names"] is None else list(state["feature_names"])
        self.rejected = int(state.get("rejected", 0))
        self.classes = None if state.get("classes") is None else int(state["classes"])


def model_classes(model: torch.nn.Module, sample_shape: tuple[int, ...]) -> int | None:
    """The classes ``model``'s output stands for (its dimension 1, as cross-entropy reads it), from one forward of
    a zero sample in eval mode with no gradient; ``None`` when the output has no such dimension.

    >>> model_classes(torch.nn.Linear(4, 3), (4,))
    3
    """
    first = next(model.parameters())
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros((1, *sample_shape), dtype=first.dtype, device=first.device))
    finally:
        model.train(training)
    return int(out.shape[1]) if isinstance(out, torch.Tensor) and out.dim() >= 2 else None
