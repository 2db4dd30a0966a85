"""KL: TensorRT's saturating entropy calibration (Migacz, "8-bit Inference with TensorRT", GTC 2017).

On a histogram of |x| with `bins` bins (2048) over [0, max|x|], for every candidate i = n_q .. bins, with n_q
the
number of quantized bins (2^(bits−1) = 128 for int8; 2^bits for an unsigned qtype on non-negative data):
  P = bins[0:i] with all the outliers (bins i.. end) added to the last bin, normalised;
  Q = bins[0:i] merged into n_q bins, each spread back evenly over the non-zero bins it came from, normalised;
  both smoothed (a small epsilon moved onto zero bins), divergence KL(P || Q).
The threshold is the upper edge of bin i with the least divergence. The streaming histogram's range can reach
twice max|x| (it grows by doubling), so only the bins up to max|x| are used: between bins/2 and bins of them
(TensorRT's histogram spans exactly [0, max|x|] with all 2048); counts are never interpolated, because the
divergence depends on which bins are empty. The algorithm is symmetric; asymmetric use
clips the observed range to [−T, T] (a documented simplification) and lets the zero point place it.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from lowbit.calib.base import ESTIMATORS, PER_TENSOR, positive_levels, require_integer
from lowbit.calib.histogram import DEFAULT_BINS, HistogramEstimator
from lowbit.core.granularity import Granularity, PerTensor
from lowbit.core.qtype import QType

log = logging.getLogger(__name__)
SMOOTHING_EPS = 1e-4  # probability mass moved onto each zero bin before the divergence


def smooth(p: np.ndarray, eps: float = SMOOTHING_EPS) -> np.ndarray:
    """Give every zero bin `eps` and take the same total evenly from the non-zero bins."""
    zeros = p == 0
    n_zero = int(zeros.sum())
    if n_zero == 0 or n_zero == p.size:
        return p
    return p + eps * zeros - (eps * n_zero / (p.size - n_zero)) * ~zeros


def divergence(hist: np.ndarray, i: int, n_q: int) -> float:
    """KL(P || Q) for candidate i on the |x| histogram `hist` (see the module docstring)."""
    sliced = hist[:i]
    p = sliced.copy()
    p[-1] += hist[i:].sum()  # outliers folded into the last kept bin
    nonzero = sliced != 0
    starts = (np.arange(n_q) * (i // n_q)).astype(np.int64)  # the last merged bin also takes the remainder
    merged = np.add.reduceat(sliced, starts)  # (n_q,)
    support = np.add.reduceat(nonzero.astype(np.float64), starts)  # non-zero bins per merged bin
    lengths = np.diff(np.append(starts, i))
    per_bin = np.repeat(np.divide(merged, support, out=np.zeros_like(merged), where=support > 0), lengths)
    q = np.where(nonzero, per_bin, 0.0)
    if q.sum() == 0:  # nothing below the candidate threshold: it cannot represent the data at all
        return float("inf")
    p, q = smooth(p / p.sum()), smooth(q / q.sum())
    keep = p > 0
    return float(np.sum(p[keep] * np.log(p[keep] / np.maximum(q[keep], np.finfo(np.float64).tiny))))


def entropy_threshold(hist: np.ndarray, amax: float, n_q: int) -> float:
    """TensorRT's threshold for an |x| histogram over [0, amax] and n_q quantized bins (amax: upper edge)."""
    bins = hist.size
    if amax == 0 or bins <= n_q or hist.sum() == 0:
        return amax
    candidates = range(n_q, bins + 1)
    kl = np.array([divergence(hist, i, n_q) for i in candidates])
    best = candidates[int(np.argmin(kl))]
    return best * amax / bins


@ESTIMATORS.register("kl")
class KLEstimator(HistogramEstimator):
    """Entropy (KL divergence) calibration on a per-tensor histogram."""

    name = "kl"
    supported = (PerTensor,)

    def __init__(self, granularity: Granularity = PER_TENSOR, bins: int = DEFAULT_BINS) -> None:
        super().__init__(granularity, bins)

    def _range(self, qtype: QType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        require_integer(qtype, self.name)
        h = self.hist
        has_negative = self.min < 0
        n_q = int(positive_levels(qtype, has_negative)[0]) + 1  # levels 0 .. top of the positive side
        if n_q > h.bins:
            log.info(
                "kl: %d quantized bins exceed the %d-bin histogram; no clipping (threshold = max|x|)",
                n_q,
                h.bins,
            )
        amax = float(torch.maximum(self.min.abs(), self.max.abs())[0])
        folded = h.folded()[0].cpu().numpy()  # |x| over [0, R], R a power-of-two multiple of an earlier max
        radius = float(h.radius[0])
        used = min(h.bins, math.ceil(amax / radius * h.bins)) if radius > 0 else h.bins  # bins up to max|x|
        top = used * radius / h.bins  # the upper edge of the last bin used (>= max|x|)
        threshold = entropy_threshold(folded[:used], top, n_q)
        threshold = torch.tensor([threshold], dtype=torch.float32, device=self.min.device)
        return self.symmetric_range(threshold)
