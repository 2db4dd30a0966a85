"""AdaRound: learn, per weight, whether to round up or down.

Nagel, Amjad, van Baalen, Louizos, Blankevoort, "Up or Down? Adaptive Rounding for Post-Training Quantization"
(ICML 2020, arXiv:2004.10568). With step s and zero point z of the weight's QParams, the quantized weight is

    W_tilde = s * (clip(floor(W / s) + h(V) + z, q_min, q_max) - z)

where h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1) is the rectified sigmoid (zeta = 1.1, gamma = -0.1,
eq. 23) and V is learned, one value per weight, by minimising the layer's output error plus the regulariser
f_reg(V) = sum_i 1 - |2 h(V_i) - 1|^beta (eq. 24), which pushes every h to 0 or 1 as beta is annealed from 20 to 2.
After learning, h is replaced by its hard value 1[V >= 0]: every weight is floor(W/s) or ceil(W/s), clipped (a
weight exactly on the grid keeps its value).
V starts where h(V) equals the fractional part of W / s, so the soft weight starts at W itself (within the range).

This file holds the rounding (`AdaRoundWeight`) and the regulariser's schedule; `lowbit.ptq.reconstruction`
runs it layer by layer as the "adaround" pass and over blocks for BRECQ and QDrop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lowbit.core.granularity import from_blocks, to_blocks
from lowbit.core.qparams import QParams
from lowbit.core.qtype import IntQType

ZETA, GAMMA = 1.1, -0.1  # stretch of the rectified sigmoid (eq. 23)
BETA_START, BETA_END = 20.0, 2.0  # regulariser annealing (section 5)
WARMUP = 0.2  # fraction of the iterations without the regulariser (BRECQ's code, also QDrop's)


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(h: torch.Tensor) -> torch.Tensor:
    """V with rectified_sigmoid(V) = h for h in (0, 1)."""
    return -torch.log((ZETA - GAMMA) / (h - GAMMA) - 1.0)


@dataclass(frozen=True)
class BetaSchedule:
    """beta of f_reg at iteration t: no regulariser during the warm-up, then linear decay start -> end."""

    iters: int
    warmup: float = WARMUP
    start: float = BETA_START
    end: float = BETA_END

    def active(self, t: int) -> bool:
        return t >= self.warmup * self.iters

    def beta(self, t: int) -> float:
        t0 = self.warmup * self.iters
        rel = (t - t0) / max(self.iters - t0, 1)
        return self.end + (self.start - self.end) * max(0.0, 1.0 - rel)


def supports(qp: QParams | None) -> bool:
    """AdaRound chooses between neighbouring integer codes: integer qtypes only."""
    return qp is not None and isinstance(qp.qtype, IntQType)


class AdaRoundWeight(nn.Module):
    """Replaces a WeightQuantizer during reconstruction: returns the soft-rounded weight (or the hard one)."""

    def __init__(self, w: torch.Tensor, qp: QParams) -> None:
        super().__init__()
        if not supports(qp):
            raise ValueError(f"AdaRound needs an integer weight qtype, not {qp.qtype.name}")
        self.qp, self.shape = qp, tuple(w.shape)
        wb = to_blocks(w.detach().float(), qp.granularity)  # (num_blocks, block_size)
        self.register_buffer("s", qp.scale.reshape(-1, 1).float())  # (num_blocks, 1)
        self.register_buffer("z", qp.zero_point.reshape(-1, 1).float())  # (num_blocks, 1)
        u = wb / self.s
        self.register_buffer("w_floor", torch.floor(u))
        self.register_buffer("off_grid", (u != self.w_floor).float())  # a weight on the grid has no choice
        frac = (u - self.w_floor).clamp(1e-4, 1 - 1e-4)  # strictly inside (0, 1): V stays finite
        self.v = nn.Parameter(inverse_rectified_sigmoid(frac))

    def h(self) -> torch.Tensor:
        return rectified_sigmoid(self.v)

    def codes(self, hard: bool = False) -> torch.Tensor:
        """(num_blocks, block_size) integer-valued codes: floor + h (soft) or floor + 1[V >= 0] (hard)."""
        r = ((self.v >= 0).float() if hard else self.h()) * self.off_grid
        qt = self.qp.qtype
        return torch.clamp(self.w_floor + r + self.z, qt.qmin, qt.qmax)

    def forward(self, w: torch.Tensor | None = None, hard: bool = False) -> torch.Tensor:
        xb = (self.codes(hard) - self.z) * self.s
        return from_blocks(xb, self.qp.granularity, self.shape)

    def regularizer(self, beta: float) -> torch.Tensor:
        """f_reg = sum 1 - |2h - 1|^beta (eq. 24)."""
        return (1.0 - (2.0 * self.h() - 1.0).abs().pow(beta)).sum()

    def hard_weight(self) -> torch.Tensor:
        with torch.no_grad():
            return self.forward(hard=True).detach().clone()


def soft_round_gap(module: AdaRoundWeight) -> float:
    """Mean |h - round(h)|: how far the soft rounding still is from a hard decision (0 when converged)."""
    with torch.no_grad():
        h = module.h()
        return float((h - torch.round(h)).abs().mean())


__all__ = ["AdaRoundWeight", "BetaSchedule", "inverse_rectified_sigmoid", "rectified_sigmoid", "soft_round_gap",
           "supports"]
