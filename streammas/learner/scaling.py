"""Input scaling inside the learner: per-feature running statistics on the device, so any stream's units work.

A stream in raw units (watts, milli-g, counts to 5,000) overflows a model trained on it as it is, and a wide
one in [0, 1] learns slowly; a model sees every stream alike once each feature is standardised,
``z = (x - mean) / std``. The statistics are running ones, kept on the learner's device and updated from each
batch before it is scored (no host synchronisation): ``"running"`` is the cumulative mean and variance over
every sample seen (a regime that comes later moves them less and less, so the meaning of old weights stays
put), ``"frozen"`` stops updating after ``warmup`` samples.

Finite but absurd values (a sample at 1e20 in a stream of watts) must not stop learning: a sample with a value
further from its feature's mean than :data:`ABSURD` (100) times the stream's largest scale is left out of the
statistics and counted, and the model sees ``z`` clipped to ``[-clip, clip]``. The first batch, with no statistics yet,
is judged against its own median and median absolute deviation, which one absurd sample cannot move.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from streammas.backend.hostsync import cpu_read, cpu_view

SCALE_MODES = ("running", "frozen", "none")
#: A sample further from its feature's mean than this many times the stream's largest scale is absurd.
ABSURD = 100.0

#: The float dtypes whose standardisation pair is computed in NumPy when the statistics are in CPU memory.
_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


class InputScaler:
    """Standardises samples with running per-feature statistics on the device.

    Parameters
    ----------
    mode : str, default "running"
        ``"running"`` (cumulative statistics over every sample), ``"frozen"`` (fixed after ``warmup`` samples)
        or ``"none"`` (the identity).
    clip : float, default 30.0
        Standardised values are clipped to ``[-clip, clip]``. (A sample with a value further from its feature's
        mean than :data:`ABSURD` times the stream's largest scale, a feature's spread plus its magnitude, is
        absurd: counted in :attr:`clipped` and left out of the statistics.)
    warmup : int, default 1000
        With ``mode="frozen"``: the samples after which the statistics stop changing.
    eps : float, default 1e-8
        Added to each feature's variance before its square root (a feature constant so far).
    floor : float, default 0.0
        No feature is divided by less than ``floor`` times the stream's typical scale (the median standard
        deviation of the features that vary): a feature nearly constant so far (a border pixel, an idle sensor)
        would otherwise jump to the clip the moment it moves, which plain SGD does not survive.

    Attributes
    ----------
    count : torch.Tensor
        Samples in the statistics (a device scalar).
    mean, var : torch.Tensor or None
        Per-feature mean and variance (``None`` before the first batch).
    clipped : torch.Tensor
        Absurd samples so far (a device scalar, read with the learner's other values).

    Examples
    --------
    >>> scaler = InputScaler()
    >>> x = torch.tensor([[1000.0, 0.1], [3000.0, 0.3], [2000.0, 0.2], [2000.0, 0.2]])
    >>> z = scaler.fit_transform(x)
    >>> [round(v, 3) for v in z[:, 0].tolist()], [round(v, 3) for v in scaler.mean.tolist()]
    ([-1.414, 1.414, 0.0, 0.0], [2000.0, 0.2])
    >>> scaler.inverse(z)[:, 0].tolist()
    [1000.0, 3000.0, 2000.0, 2000.0]
    >>> _ = scaler.fit_transform(torch.tensor([[1e20, 0.2], [2000.0, 0.2]]))   # one absurd sample
    >>> int(scaler.clipped), int(scaler.count), scaler.mean[0].item()
    (1, 5, 2000.0)
    """

    def __init__(self, mode: str = "running", *, clip: float = 30.0, warmup: int = 1000,
                 eps: float = 1e-8, floor: float = 0.0, device: torch.device | str | None = None) -> None:
        if mode not in SCALE_MODES:
            raise ValueError(f"scale_inputs must be one of {SCALE_MODES}, got {mode!r}")
        self.mode = mode
        self.clip = float(clip)
        self.warmup = int(warmup)
        self.eps = float(eps)
        if floor < 0:
            raise ValueError(f"the scale floor must be >= 0, got {floor}")
        self.floor = float(floor)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.count = torch.zeros((), dtype=torch.float64, device=self.device)
        self.mean: torch.Tensor | None = None
        self.var: torch.Tensor | None = None
        self.clipped = torch.zeros((), dtype=torch.int64, device=self.device)
        self._seen = 0  # samples offered, known on the host without a read (decides "frozen")
        self._scale: tuple | None = None  # (mean, var, dtype) -> the mean and std in dtype, made once per change

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def fit_transform(self, x: torch.Tensor) -> torch.Tensor:
        """Fold ``x`` into the statistics (unless frozen), then standardise it."""
        self.fit(x)
        return self.transform(x)

    def fit(self, x: torch.Tensor) -> None:
        """Fold ``x`` into the statistics (unless frozen). A group of workers fits the whole global batch on each
        (the first batch's median cannot be split), then each standardises its own rows."""
        if not self.enabled:
            return
        if self.mean is None:
            self._start(x.reshape(x.shape[0], -1).double())
        elif self.mode == "running" or self._seen < self.warmup:
            self._fold(x.reshape(x.shape[0], -1))
        self._seen += x.shape[0]

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise with the current statistics, clipped to ``[-clip, clip]``."""
        if not self.enabled or self.mean is None:
            return x
        flat = x.flatten(1)  # a worker's batch of no rows too
        mean, std = self._mean_std(flat.dtype)
        return torch.sub(flat, mean).div_(std).clamp_(-self.clip, self.clip).reshape(x.shape)

    def transform_row(self, row: np.ndarray) -> np.ndarray:
        """:meth:`transform` of one flat float32 sample in host memory, in NumPy: the same float32 operations, so
        the same numbers, without torch's dispatch (a CPU learner's statistics)."""
        if not self.enabled or self.mean is None:
            return row
        mean, std = self._mean_std(torch.float32)
        z = np.subtract(row, cpu_view(mean))
        z /= cpu_view(std)
        return np.clip(z, -self.clip, self.clip, out=z)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """Back to the input's units."""
        if not self.enabled or self.mean is None:
            return z
        flat = z.flatten(1)
        mean, std = self._mean_std(flat.dtype)
        return (flat * std + mean).reshape(z.shape)

    def _mean_std(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        # Statistics change only by being replaced (never in place), so the last pair serves until they are:
        # a step's batch and its replayed rows share one.
        key = (self.mean, self.var, dtype)
        if self._scale is None or any(a is not b for a, b in zip(self._scale[0], key)):
            if self.floor == 0 and self.var.device.type == "cpu" and dtype in _NUMPY_FLOATS:
                # in CPU memory: three NumPy operations on views instead of four torch dispatches
                as_numpy = _NUMPY_FLOATS[dtype]
                std = torch.from_numpy(np.sqrt(cpu_view(self.var) + self.eps).astype(as_numpy))
                self._scale = (key, (torch.from_numpy(cpu_view(self.mean).astype(as_numpy)), std))
                return self._scale[1]
            std = (self.var + self.eps).sqrt()
            if self.floor > 0:
                std = std.clamp_min(self.floor * typical_scale(self.var))
            self._scale = (key, (self.mean.to(dtype), std.to(dtype)))
        return self._scale[1]

    @staticmethod
    def _absurd_bound(center: torch.Tensor | np.ndarray, spread: torch.Tensor | np.ndarray) -> Any:
        """How far from its center a value may lie before the sample is absurd: :data:`ABSURD` times the stream's
        largest scale (a feature's spread plus its magnitude). Judged per stream, not per feature, so that a
        feature constant so far (a border pixel) may start to move without being shut out of the statistics.
        Tensors give a 0-d tensor on their device (no sync), NumPy arrays a float."""
        largest = (spread + abs(center)).max()
        return ABSURD * (largest.clamp_min(1.0) if isinstance(largest, torch.Tensor) else max(float(largest), 1.0))

    def _start(self, flat: torch.Tensor) -> None:
        """Statistics from the first batch, its absurd samples judged against its median and MAD."""
        median = flat.median(dim=0).values
        mad = (flat - median).abs().median(dim=0).values * 1.4826
        keep = ((flat - median).abs() <= self._absurd_bound(median, mad)).all(dim=1)
        self.count = torch.zeros((), dtype=torch.float64, device=flat.device)
        self.mean = torch.zeros(flat.shape[1], dtype=torch.float64, device=flat.device)
        self.var = torch.zeros_like(self.mean)
        self._merge(flat, keep)

    def _fold(self, flat: torch.Tensor) -> None:
        """Fold a batch in, its absurd rows left out: in CPU memory by :meth:`_fold_host` when every row is kept
        (the common case), else with a mask of the kept rows on the device (no sync)."""
        if flat.device.type == "cpu" and self._fold_host(flat):
            return
        flat = flat.double()
        keep = ((flat - self.mean).abs() <= self._absurd_bound(self.mean, self.var.sqrt())).all(dim=1)
        self._merge(flat, keep)

    def _fold_host(self, flat: torch.Tensor) -> bool:
        """:meth:`_merge` of a batch whose rows are all kept, in NumPy on views of the batch and the statistics:
        some twenty small operations, each a fraction of torch's dispatch. ``False``, with nothing changed, where
        a row is absurd or not finite."""
        # (NumPy has no bfloat16: such a batch widens in torch first)
        rows = cpu_view(flat.double() if flat.dtype == torch.bfloat16 else flat)
        mean, var = cpu_view(self.mean), cpu_view(self.var)
        centered = rows - mean  # float64: NumPy widens the rows exactly as it subtracts, with no copy first
        if not rows.shape[0] or not np.abs(centered).max() <= self._absurd_bound(mean, np.sqrt(var)):
            return False  # (NaN compares false)
        n_b, count = rows.shape[0], cpu_read(self.count)
        total = count + n_b
        delta = centered.sum(0) / n_b  # the batch's mean less the current mean
        centered -= delta
        m2_b = np.einsum("ij,ij->j", centered, centered)
        share = n_b / total
        # new arrays, never written in place: the statistics change only by being replaced (see _mean_std)
        self.mean = torch.from_numpy(mean + delta * share)
        self.var = torch.from_numpy(var * (count / total) + m2_b / total + delta * delta * (count * share / total))
        self.count = torch.from_numpy(np.array(total, dtype=np.float64))  # a third of torch.tensor's cost
        return True

    def _merge(self, flat: torch.Tensor, keep: torch.Tensor) -> None:
        """Chan's parallel update of count, mean and variance with the kept rows (a device mask: no sync)."""
        self.clipped += (~keep).sum()
        w = keep.to(flat.dtype).unsqueeze(1)
        n_b = w.sum()
        safe_n_b = n_b.clamp_min(1.0)
        x = flat * w  # rows left out contribute nothing
        mean_b = x.sum(0) / safe_n_b
        m2_b = (((flat - mean_b) * w) ** 2).sum(0)
        total = self.count + n_b
        delta = mean_b - self.mean
        share = n_b / total.clamp_min(1.0)
        m2 = self.var * self.count + m2_b + delta * delta * self.count * share
        self.mean = self.mean + delta * share
        self.var = m2 / total.clamp_min(1.0)
        self.count = total

    @property
    def seen(self) -> int:
        """Samples offered so far (known on the host)."""
        return self._seen

    # -- mergeable: the statistics of several scalers, as one scaler that saw all their samples ----------------
    def sums_since(self, agreed: Mapping[str, Any], shift: torch.Tensor, width: int) -> list[torch.Tensor]:
        """This scaler's samples since the ``agreed`` statistics (a :meth:`state_dict` the scalers share) as sums
        relative to ``shift`` (a mean near every scaler's data, so raw units lose no precision):
        ``[count, sum (x - shift), sum (x - shift)^2, clipped]``, the agreed part taken out (:meth:`merge` adds it
        back once). ``width``: the features, for a scaler that has seen nothing yet."""
        f64 = dict(dtype=torch.float64, device=self.count.device)
        if self.mean is None:  # nothing seen yet, here and in the agreed statistics
            nothing = torch.zeros(width, **f64)
            return [torch.zeros(1, **f64), nothing, nothing, torch.zeros(1, **f64)]
        count0 = agreed["count"].to(self.count.device)
        d = self.mean - shift
        second = self.count * (self.var + d * d)
        if agreed["var"] is not None:
            second = second - count0 * agreed["var"]
        return [(self.count - count0).reshape(1), self.count * d, second,
                (self.clipped - agreed["clipped"].to(self.count.device)).double().reshape(1)]

    def merge(self, sums: Sequence[torch.Tensor], agreed: Mapping[str, Any], shift: torch.Tensor, *,
              seen: int) -> None:
        """Take the statistics of every sample: the ``agreed`` ones and the scalers' summed :meth:`sums_since`
        (``sums``, relative to ``shift``), ``seen`` samples offered in all.

        >>> a, b, both = InputScaler(), InputScaler(), InputScaler()
        >>> agreed, shift = both.state_dict(), torch.zeros(1, dtype=torch.float64)
        >>> a.fit(torch.tensor([[1.0], [3.0]])); b.fit(torch.tensor([[5.0], [7.0]]))
        >>> sums = [x + y for x, y in zip(a.sums_since(agreed, shift, 1), b.sums_since(agreed, shift, 1))]
        >>> both.merge(sums, agreed, shift, seen=a.seen + b.seen)
        >>> both.mean.tolist(), both.var.tolist(), int(both.count), both.seen
        ([4.0], [5.0], 4, 4)
        """
        new, first, second, clipped = sums[0], sums[1], sums[2], sums[3]
        count0 = agreed["count"].to(new.device)
        count = new.reshape(()) + count0
        if agreed["var"] is not None:
            second = second + count0 * agreed["var"]
        safe = count.clamp_min(1.0)
        d = first / safe
        self.mean = shift + d
        self.var = (second / safe - d * d).clamp_min(0.0)
        self.count = count
        self.clipped = clipped.reshape(()).round().long() + agreed["clipped"].to(new.device)
        self._seen = int(seen)

    def state_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "count": self.count.clone(), "seen": self._seen, "clipped": self.clipped.clone(),
                "mean": None if self.mean is None else self.mean.clone(),
                "var": None if self.var is None else self.var.clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count = state["count"].to(self.device, torch.float64)
        self.clipped = state["clipped"].to(self.device, torch.int64)
        self._seen = int(state["seen"])
        self.mean = None if state["mean"] is None else state["mean"].to(self.device, torch.float64)
        self.var = None if state["var"] is None else state["var"].to(self.device, torch.float64)


def typical_scale(var: torch.Tensor) -> torch.Tensor:
    """The median standard deviation of the features that vary (a device scalar, no host read; 0 if none do).

    >>> typical_scale(torch.tensor([0.0, 0.0, 1.0, 4.0, 9.0], dtype=torch.float64)).item()
    2.0
    """
    std = var.clamp_min(0.0).sqrt()
    ordered = std.sort().values
    constant = (std <= 0).sum()
    middle = (constant + (std.numel() - constant) // 2).clamp_max(std.numel() - 1)
    return ordered.gather(0, middle.reshape(1)).reshape(())
