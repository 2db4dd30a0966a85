"""A streaming histogram, symmetric around zero, that grows without storing the data.

Each row (one per block: one for PerTensor, one per channel for PerChannel) covers `[-R, R]` with `2 * bins`
equal bins, so that folding the two halves gives a `bins`-bin histogram of |x| (TensorRT's entropy calibration
uses 2048 bins of |x|). When a batch exceeds `R`, the row's range doubles until it covers the batch, and every
doubling merges neighbouring bin pairs into the middle half of the new bins: the edges of the wider histogram
are
a subset of the old ones, so the merge is exact. Memory is `num_rows * 2 * bins` float64 counts, whatever the
number of batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lowbit.calib.base import PER_TENSOR, RangeEstimator
from lowbit.core.granularity import Granularity, PerChannel, PerTensor

DEFAULT_BINS = 2048  # bins of |x| per row; the signed histogram has twice as many


@dataclass
class StreamingHistogram:
    """Counts per row over `[-R_row, R_row]`; `observe(xb)` takes (num_rows, n) float32 blocks."""

    bins: int = DEFAULT_BINS

    def __post_init__(self) -> None:
        if self.bins < 2 or self.bins % 2:
            raise ValueError(f"histogram bins must be an even number >= 2, got {self.bins}")
        self.counts: torch.Tensor | None = None  # (num_rows, 2 * bins) float64
        self.radius: torch.Tensor | None = (
            None  # (num_rows,) float64, R of each row (0 until data is non-zero)
        )
        self.zeros: torch.Tensor | None = None  # (num_rows,) float64, exact zeros (also counted in their bin)

    @property
    def total_bins(self) -> int:
        return 2 * self.bins

    def observe(self, xb: torch.Tensor) -> None:
        rows = xb.shape[0]
        amax = xb.abs().amax(dim=1).to(torch.float64)  # (rows,)
        if self.counts is None:
            self.counts = torch.zeros(rows, self.total_bins, dtype=torch.float64, device=xb.device)
            self.radius = torch.zeros(rows, dtype=torch.float64, device=xb.device)
            self.zeros = torch.zeros(rows, dtype=torch.float64, device=xb.device)
        self._grow(amax)
        self._add(xb)
        self.zeros += (xb == 0).sum(dim=1).to(torch.float64)  # ReLU outputs: exact on every grid

    def _grow(self, amax: torch.Tensor) -> None:
        # rows with R == 0 hold only zeros, which sit in the bin just right of 0 for every R: adopt amax as is
        fresh = self.radius == 0
        self.radius = torch.where(fresh, amax, self.radius)
        while True:
            need = amax > self.radius  # (rows,)
            if not need.any():
                return
            merged = self.counts.reshape(-1, self.bins, 2).sum(dim=2)  # (rows, bins): pairs merged
            quarter = self.bins // 2  # a quarter of the 2 * bins signed bins
            grown = torch.nn.functional.pad(
                merged, (quarter, quarter)
            )  # (rows, 2 * bins): old range in the middle
            self.counts = torch.where(need[:, None], grown, self.counts)
            self.radius = torch.where(need, self.radius * 2, self.radius)

    def _add(self, xb: torch.Tensor) -> None:
        rows, n = xb.shape
        radius = self.radius[:, None]  # (rows, 1) float64: bin indices agree with the float64 edges
        safe = torch.where(radius > 0, radius, torch.ones_like(radius))
        pos = (xb.to(torch.float64) + radius) * (self.total_bins / (2 * safe))  # (rows, n) in [0, total_bins]
        zero_bin = torch.full_like(pos, float(self.bins))  # all-zero rows: 0 belongs to bin [0, w)
        pos = torch.where(radius > 0, pos, zero_bin)
        idx = pos.floor().long().clamp_(0, self.total_bins - 1)  # (rows, n)
        idx += torch.arange(rows, device=xb.device)[:, None] * self.total_bins  # flat index per row
        flat = torch.bincount(idx.reshape(-1), minlength=rows * self.total_bins)
        self.counts += flat.reshape(rows, self.total_bins).to(torch.float64)

    def edges(self) -> torch.Tensor:
        """(rows, 2 * bins + 1) bin edges."""
        steps = torch.linspace(-1.0, 1.0, self.total_bins + 1, dtype=torch.float64, device=self.radius.device)
        return self.radius[:, None] * steps[None, :]

    def centres(self) -> torch.Tensor:
        e = self.edges()
        return (e[:, 1:] + e[:, :-1]) / 2  # (rows, 2 * bins)

    def width(self) -> torch.Tensor:
        """(rows,) bin width."""
        return 2 * self.radius / self.total_bins

    def counts_without_zeros(self) -> torch.Tensor:
        """(rows, 2 * bins) counts with the exact zeros taken out of the bin [0, w) that holds them."""
        counts = self.counts.clone()
        counts[:, self.bins] -= self.zeros
        return counts

    def folded(self) -> torch.Tensor:
        """(rows, bins) histogram of |x| over [0, R]."""
        neg, pos = self.counts[:, : self.bins], self.counts[:, self.bins :]
        return pos + neg.flip(1)

    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in (self.counts, self.radius, self.zeros) if t is not None
        )


class HistogramEstimator(RangeEstimator):
    """Base of the estimators that read a StreamingHistogram (one row per block: PerTensor or PerChannel).

    Memory: `2 * bins` float64 counts per block (32 KiB with the default 2048 bins of |x|).
    """

    supported = (PerTensor, PerChannel)

    def __init__(self, granularity: Granularity = PER_TENSOR, bins: int = DEFAULT_BINS) -> None:
        super().__init__(granularity)
        self.hist = StreamingHistogram(bins)

    def _update(self, xb: torch.Tensor) -> None:
        self.hist.observe(xb)


def quantile(counts: torch.Tensor, edges: torch.Tensor, q: float) -> torch.Tensor:
    """The q-quantile (0 <= q <= 1) of each row of a histogram, linear inside the bin that holds it.

    counts (rows, B), edges (rows, B + 1) -> (rows,)."""
    cdf = counts.cumsum(dim=1)  # (rows, B)
    target = (q * cdf[:, -1:]).contiguous()  # (rows, 1)
    idx = torch.searchsorted(cdf.contiguous(), target).clamp_(max=counts.shape[1] - 1)  # (rows, 1)
    before = torch.where(idx > 0, cdf.gather(1, (idx - 1).clamp(min=0)), torch.zeros_like(target))
    in_bin = counts.gather(1, idx)
    frac = torch.where(in_bin > 0, (target - before) / in_bin, torch.zeros_like(in_bin)).clamp(0, 1)
    lo, hi = edges.gather(1, idx), edges.gather(1, idx + 1)
    return (lo + frac * (hi - lo)).reshape(-1)
