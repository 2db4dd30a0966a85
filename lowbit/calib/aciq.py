"""ACIQ: analytic clipping for a Gaussian or Laplace fit (Banner, Nahshan & Soudry, "Post training 4-bit
quantization of convolutional networks for rapid-deployment", NeurIPS 2019).

Quantizing [μ − α, μ + α] onto 2^M uniform levels costs, for a Laplace(μ, b) or Normal(μ, σ²) variable,

    Laplace:  2 b² e^(−α/b)                                                + α² / (3 · 4^M)
    Gaussian: (α² + σ²)(1 − erf(α / (√2 σ))) − √(2/π) α σ e^(−α²/(2σ²))    + α² / (3 · 4^M)

(clipping noise + rounding noise). The optimum α* is a fixed multiple of b (or σ) per bit width; it is found
here
numerically (golden-section search), not typed in. The fit uses streaming moments per block: mean and variance
(Chan's parallel update) and the mean absolute deviation, measured around the running mean (exact for a single
batch, an approximation when the mean drifts between batches). The Laplace scale is that deviation (its MLE
around the mean). `distribution="auto"` keeps the fit with the higher likelihood.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from lowbit.calib.base import ESTIMATORS, PER_TENSOR, RangeEstimator, require_integer
from lowbit.core.granularity import Granularity
from lowbit.core.qtype import QType

GOLDEN = (math.sqrt(5) - 1) / 2
SEARCH_TOLERANCE = 1e-9
DISTRIBUTIONS = ("auto", "gaussian", "laplace")


def laplace_mse(alpha: float, bits: int) -> float:
    """Expected quantization MSE of Laplace(0, 1) clipped to [−α, α] on 2^bits levels."""
    return 2 * math.exp(-alpha) + alpha**2 / (3 * 4**bits)


def gaussian_mse(alpha: float, bits: int) -> float:
    """Expected quantization MSE of Normal(0, 1) clipped to [−α, α] on 2^bits levels."""
    clip = (alpha**2 + 1) * math.erfc(alpha / math.sqrt(2)) - math.sqrt(2 / math.pi) * alpha * math.exp(
        -(alpha**2) / 2
    )
    return clip + alpha**2 / (3 * 4**bits)


def golden_min(f, a: float, b: float, tol: float = SEARCH_TOLERANCE) -> float:
    """Minimiser of a unimodal f on [a, b]."""
    c, d = b - GOLDEN * (b - a), a + GOLDEN * (b - a)
    while b - a > tol:
        if f(c) < f(d):
            b, d = d, c
            c = b - GOLDEN * (b - a)
        else:
            a, c = c, d
            d = a + GOLDEN * (b - a)
    return (a + b) / 2


@cache
def optimal_alpha(distribution: str, bits: int) -> float:
    """α* in units of b (Laplace) or σ (Gaussian) for `bits`-bit uniform quantization."""
    mse = {"laplace": laplace_mse, "gaussian": gaussian_mse}[distribution]
    upper = 4.0 * bits + 8.0  # beyond every optimum: the clipping term is negligible there
    return golden_min(lambda a: mse(a, bits), 1e-6, upper)


@ESTIMATORS.register("aciq")
class ACIQEstimator(RangeEstimator):
    name = "aciq"

    def __init__(self, granularity: Granularity = PER_TENSOR, distribution: str = "auto") -> None:
        super().__init__(granularity)
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"ACIQ distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        self.distribution = distribution
        self.n = self.mean = self.m2 = self.abs_dev = None  # (num_blocks,) float64 each

    def _update(self, xb: torch.Tensor) -> None:
        x = xb.to(torch.float64)
        n_b = torch.full((x.shape[0],), float(x.shape[1]), dtype=torch.float64, device=x.device)
        mean_b = x.mean(dim=1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(dim=1)
        if self.n is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            self.abs_dev = torch.zeros_like(n_b)
        else:  # Chan et al.'s pairwise update of mean and sum of squared deviations
            n = self.n + n_b
            delta = mean_b - self.mean
            self.mean = self.mean + delta * n_b / n
            self.m2 = self.m2 + m2_b + delta**2 * self.n * n_b / n
            self.n = n
        self.abs_dev = self.abs_dev + (x - self.mean[:, None]).abs().sum(dim=1)

    def fits(self) -> dict[str, torch.Tensor]:
        """Per block: mean, sigma, b and which fit wins ("laplace_better", bool)."""
        sigma = (self.m2 / self.n).sqrt()
        b = self.abs_dev / self.n
        tiny = torch.finfo(torch.float64).tiny
        ll_gauss = -0.5 * torch.log(2 * math.pi * sigma.clamp(min=tiny) ** 2) - 0.5  # mean log-likelihood
        ll_laplace = -torch.log(2 * b.clamp(min=tiny)) - 1.0
        return {"mean": self.mean, "sigma": sigma, "b": b, "laplace_better": ll_laplace > ll_gauss}

    def _range(self, qtype: QType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        bits = require_integer(qtype, self.name).bits
        fit = self.fits()
        half_laplace = optimal_alpha("laplace", bits) * fit["b"]
        half_gauss = optimal_alpha("gaussian", bits) * fit["sigma"]
        use_laplace = {"auto": fit["laplace_better"], "laplace": True, "gaussian": False}[self.distribution]
        half = torch.where(torch.as_tensor(use_laplace, device=half_gauss.device), half_laplace, half_gauss)
        lo, hi = (fit["mean"] - half).to(torch.float32), (fit["mean"] + half).to(torch.float32)
        if symmetric:
            return self.symmetric_range(torch.maximum(lo.abs(), hi.abs()))
        return self.clip_to_data(lo, hi)
