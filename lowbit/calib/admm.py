"""ADMM-style alternating minimisation of ||x − s·q||² over the scale s and the codes q.

With q fixed the best scale is the least-squares one, s = <x, q> / <q, q>; with s fixed the best codes are the
rounded, clamped x / s. Alternating the two steps (as in the ADMM/alternating schemes for low-bit networks,
Leng
et al. 2018, and the PPQ/MQBench calibration that borrows them) descends the quantization error; here x runs
over
the histogram's bin centres weighted by their counts, so nothing but the histogram is kept.

Symmetric: x ≈ s·q with q on the qtype's levels (the zero point fixed by the data's sign). Asymmetric
(integers):
x ≈ s·(q − z): the scale and offset step is a weighted linear regression of x on q, then z = round(−offset /
s).
"""

from __future__ import annotations

import torch

from lowbit.calib.base import ESTIMATORS, PER_TENSOR, positive_levels, require_integer
from lowbit.calib.histogram import DEFAULT_BINS, HistogramEstimator
from lowbit.core.granularity import Granularity
from lowbit.core.qtype import IntQType, QType

DEFAULT_ITERATIONS = 30


def codes_symmetric(x: torch.Tensor, s: torch.Tensor, zp: torch.Tensor, qtype: QType) -> torch.Tensor:
    """Levels (in units of s, zero point removed) that x / s rounds to: (rows, B)."""
    u = (x / s[:, None] + zp[:, None]).to(torch.float32)
    return qtype.decode(qtype.encode(u)).to(x.dtype) - zp[:, None]


def admm_symmetric(x, w, amax, qtype: QType, has_negative, iterations: int) -> torch.Tensor:
    """Threshold T = s · (positive levels) per row; x, w (rows, B) centres and counts, amax (rows,)."""
    top = positive_levels(qtype, has_negative).to(x.dtype)  # (rows,)
    zp = torch.zeros_like(top)
    if isinstance(qtype, IntQType) and not qtype.signed:
        zp = torch.where(has_negative, torch.full_like(top, (qtype.qmax + 1) // 2), zp)
    s = (amax / top).clamp(min=torch.finfo(torch.float32).tiny)
    for _ in range(iterations):
        q = codes_symmetric(x, s, zp, qtype)
        qq = (w * q * q).sum(dim=1)
        s = torch.where(qq > 0, (w * x * q).sum(dim=1) / qq.clamp(min=torch.finfo(x.dtype).tiny), s)
    return s * top


def admm_asymmetric(x, w, lo, hi, qtype: IntQType, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, hi) of the grid s·(qmin − z) .. s·(qmax − z), by alternating codes and a weighted regression."""
    steps = qtype.qmax - qtype.qmin
    s = ((hi - lo) / steps).clamp(min=torch.finfo(torch.float32).tiny)
    z = (qtype.qmin - torch.round(lo / s)).clamp(qtype.qmin, qtype.qmax)
    total = w.sum(dim=1)
    for _ in range(iterations):
        q = torch.round(x / s[:, None] + z[:, None]).clamp(qtype.qmin, qtype.qmax)  # (rows, B)
        mq, mx = (w * q).sum(1) / total, (w * x).sum(1) / total
        var_q = (w * (q - mq[:, None]) ** 2).sum(1)
        cov = (w * (q - mq[:, None]) * (x - mx[:, None])).sum(1)
        s_new = torch.where(var_q > 0, cov / var_q.clamp(min=torch.finfo(x.dtype).tiny), s).clamp(
            min=torch.finfo(torch.float32).tiny
        )
        offset = mx - s_new * mq  # x ≈ s·q + offset, offset = −s·z
        s, z = s_new, torch.round(-offset / s_new).clamp(qtype.qmin, qtype.qmax)
    return s * (qtype.qmin - z), s * (qtype.qmax - z)


@ESTIMATORS.register("admm")
class ADMMEstimator(HistogramEstimator):
    name = "admm"

    def __init__(
        self,
        granularity: Granularity = PER_TENSOR,
        iterations: int = DEFAULT_ITERATIONS,
        bins: int = DEFAULT_BINS,
    ) -> None:
        super().__init__(granularity, bins)
        if iterations < 1:
            raise ValueError(f"ADMM needs at least one iteration, got {iterations}")
        self.iterations = iterations

    def _range(self, qtype: QType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        x, w = self.hist.centres(), self.hist.counts  # (rows, 2 * bins) float64
        if symmetric:
            amax = torch.maximum(self.min.abs(), self.max.abs()).to(torch.float64)
            threshold = admm_symmetric(x, w, amax, qtype, self.min < 0, self.iterations)
            return self.symmetric_range(threshold.to(torch.float32))
        qtype = require_integer(qtype, self.name)
        lo = self.min.clamp(max=0).to(torch.float64)
        hi = self.max.clamp(min=0).to(torch.float64)
        lo, hi = admm_asymmetric(x, w, lo, hi, qtype, self.iterations)
        const = self.min == self.max  # a constant block keeps lo == hi, which round-trips exactly
        return torch.where(const, self.min, lo.to(torch.float32)), torch.where(
            const, self.max, hi.to(torch.float32)
        )
