"""Percentile: clip at a high percentile of the observed distribution (e.g. 99.99), read off the histogram.

Symmetric: the threshold is the `percentile` of |x|. Asymmetric: the low end is the (100 − p) percentile and
the
high end the p percentile of x (both tails clipped). Values are interpolated linearly inside a bin.
"""

from __future__ import annotations

import torch

from lowbit.calib.base import ESTIMATORS, PER_TENSOR
from lowbit.calib.histogram import DEFAULT_BINS, HistogramEstimator, quantile
from lowbit.core.granularity import Granularity
from lowbit.core.qtype import QType

DEFAULT_PERCENTILE = 99.99


@ESTIMATORS.register("percentile")
class PercentileEstimator(HistogramEstimator):
    name = "percentile"

    def __init__(
        self,
        granularity: Granularity = PER_TENSOR,
        percentile: float = DEFAULT_PERCENTILE,
        bins: int = DEFAULT_BINS,
    ) -> None:
        super().__init__(granularity, bins)
        if not 50.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (50, 100], got {percentile}")
        self.percentile = percentile

    def _range(self, qtype: QType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.percentile / 100.0
        h = self.hist
        if symmetric:
            edges = h.edges()[:, h.bins :]  # (rows, bins + 1): edges of |x| over [0, R]
            threshold = quantile(h.folded(), edges, q).to(torch.float32)
            return self.symmetric_range(threshold)
        lo = quantile(h.counts, h.edges(), 1.0 - q).to(torch.float32)
        hi = quantile(h.counts, h.edges(), q).to(torch.float32)
        return self.clip_to_data(lo, hi)
