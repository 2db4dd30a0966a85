"""The streaming range-estimator interface and the checks every estimator shares.

An estimator sees calibration batches one at a time (`observe`) and keeps statistics of a fixed size
(per-block
minimum and maximum here, plus whatever the subclass adds: a histogram, moments, moving averages), so memory
does not grow with the number of batches. `compute_range(qtype, symmetric)` turns the statistics into a
clipping
range `(lo, hi)` per block and `qparams` hands that range to `QParams.from_range`.

Range convention: `lo` and `hi` are the observed data range clipped to the chosen range. For a symmetric
threshold `T` that is `(max(min, -T), min(max, T))`, which `QParams.from_range` maps onto the qtype exactly as
`[-T, T]` (or `[0, T]` for unsigned qtypes and non-negative data), and a constant block keeps `lo == hi`.
"""

from __future__ import annotations

import torch

from lowbit.core.granularity import (
    Granularity,
    MXBlock,
    PerChannel,
    PerGroup,
    PerTensor,
    PerToken,
    PerVector,
    num_blocks,
    to_blocks,
)
from lowbit.core.qparams import QParams
from lowbit.core.qtype import IntQType, QType
from lowbit.registry import Registry

PER_TENSOR = PerTensor()  # the default granularity (a frozen dataclass: safe to share)
STATIC_GRANULARITIES = (PerTensor, PerChannel, PerGroup, PerVector, MXBlock)


class RangeEstimator:
    """Base class: validates each batch, tracks exact per-block min/max, produces QParams.

    Subclasses set `name`, optionally narrow `supported`, and implement `_update(xb)` (xb: (num_blocks,
    block_size) float32) and `_range(qtype, symmetric) -> (lo, hi)`.
    """

    name = "base"
    supported: tuple[type, ...] = STATIC_GRANULARITIES

    def __init__(self, granularity: Granularity = PER_TENSOR) -> None:
        if isinstance(granularity, PerToken):
            raise ValueError(
                "PerToken ranges are computed at run time from each token; use lowbit.core.dynamic_qparams, "
                "or calibrate a static granularity (PerTensor, PerChannel)"
            )
        if not isinstance(granularity, self.supported):
            names = ", ".join(g.__name__ for g in self.supported)
            raise ValueError(
                f"the {self.name} estimator supports {names}, not {granularity!r}; pick one of those or the "
                f"minmax/ema/aciq estimators, which support every static granularity"
            )
        self.granularity = granularity
        self.calls = 0
        self.count = 0
        self.min: torch.Tensor | None = None  # (num_blocks,)
        self.max: torch.Tensor | None = None  # (num_blocks,)

    def observe(self, x: torch.Tensor) -> None:
        """Add one calibration batch. ValueError on empty tensors, NaN/Inf, changing block counts."""
        call = self.calls + 1
        x = torch.as_tensor(x).detach()
        if x.numel() == 0:
            raise ValueError(
                f"observe() call #{call} got an empty tensor of shape {tuple(x.shape)}; "
                "pass batches with data"
            )
        x = x.to(torch.float32)
        bad = ~torch.isfinite(x)
        if bad.any():
            n_nan, n_bad = int(torch.isnan(x).sum()), int(bad.sum())
            raise ValueError(
                f"observe() call #{call} got {n_bad} non-finite values ({n_nan} NaN, {n_bad - n_nan} Inf) "
                f"out of {x.numel()}; clean the calibration data (or find the layer that overflows) "
                "before observing"
            )
        xb = to_blocks(x, self.granularity)  # (num_blocks, block_size)
        if self.min is not None and xb.shape[0] != self.min.numel():
            raise ValueError(
                f"observe() call #{call}: a tensor of shape {tuple(x.shape)} has "
                f"{num_blocks(tuple(x.shape), self.granularity)} "
                f"blocks under {self.granularity!r}, earlier batches had {self.min.numel()}; "
                f"feed batches that share the quantized axes (or use PerTensor)"
            )
        lo, hi = xb.amin(dim=1), xb.amax(dim=1)
        self.min = lo if self.min is None else torch.minimum(self.min, lo)
        self.max = hi if self.max is None else torch.maximum(self.max, hi)
        self._update(xb)
        self.calls = call
        self.count += x.numel()

    def compute_range(self, qtype: QType, symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The clipping range `(lo, hi)`, each of shape (num_blocks,), for `qtype` (module docstring)."""
        self._check_observed()
        lo, hi = self._range(qtype, symmetric)
        return lo.reshape(-1).to(torch.float32), hi.reshape(-1).to(torch.float32)

    def qparams(self, qtype: QType, symmetric: bool = True) -> QParams:
        lo, hi = self.compute_range(qtype, symmetric)
        return QParams.from_range(lo, hi, qtype, self.granularity, symmetric)

    def _check_observed(self) -> None:
        if self.calls == 0:
            raise RuntimeError(
                f"the {self.name} estimator has seen no data; call observe() with calibration data first"
            )

    def clip_to_data(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The observed range intersected with `[lo, hi]` (never empty: it keeps lo <= hi)."""
        new_lo = torch.maximum(self.min, lo).clamp(max=self.max)
        new_hi = torch.minimum(self.max, hi).clamp(min=new_lo)
        return new_lo, new_hi

    def symmetric_range(self, threshold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The observed range clipped to `[-threshold, threshold]`."""
        return self.clip_to_data(-threshold, threshold)

    def _update(self, xb: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _range(self, qtype: QType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        raise NotImplementedError


ESTIMATORS: Registry[type[RangeEstimator]] = Registry("range estimator")


def make_estimator(name: str, granularity: Granularity = PER_TENSOR, **options) -> RangeEstimator:
    """A fresh estimator registered under `name` (minmax, ema, percentile, mse, kl, admm, aciq)."""
    return ESTIMATORS.get(name)(granularity=granularity, **options)


def require_integer(qtype: QType, method: str) -> IntQType:
    """Methods whose algorithm assumes a uniform integer grid reject other qtypes with a way out."""
    if not isinstance(qtype, IntQType):
        raise ValueError(
            f"the {method} estimator assumes a uniform integer grid; {qtype.name} is not one. "
            f"Use the mse or minmax estimator for float, codebook and power-of-two qtypes"
        )
    return qtype


def positive_levels(qtype: QType, has_negative: torch.Tensor) -> torch.Tensor:
    """How many steps a symmetric range [0, T] spans on `qtype`, per block: qmax for signed integers and for
    unsigned integers on non-negative data, qmax - mid for unsigned integers whose zero point sits mid-range,
    max_level for non-integer qtypes (their levels scale with T / max_level)."""
    if isinstance(qtype, IntQType) and not qtype.signed:
        mid = (qtype.qmax + 1) // 2
        return torch.where(
            has_negative, torch.tensor(float(qtype.qmax - mid)), torch.tensor(float(qtype.qmax))
        )
    return torch.full(has_negative.shape, float(qtype.max_level))
