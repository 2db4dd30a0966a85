"""An activation quantizer whose step size is learned (BRECQ) and whose quantization is randomly dropped (QDrop).

BRECQ (Li et al. 2021, section 4.2) learns activation step sizes with LSQ (Esser et al., "Learned Step Size
Quantization", ICLR 2020) during block reconstruction: x_hat = s * (clip(round(x / s) + z, q_min, q_max) - z)
with round's gradient passed straight through, so d x_hat / d s = round(x/s) - x/s inside the range and the
clipped code minus z outside it.

QDrop (Wei, Gong, Li, Liu, Yu, "QDrop: Randomly Dropping Quantization for Extremely Low-bit Post-Training
Quantization", ICLR 2022, section 4) replaces each element's quantized value by its float value with
probability p during reconstruction (x_out = x where u < p, x_hat elsewhere; u ~ U(0, 1) per element), which
flattens the loss landscape the learned rounding has to fit. At p = 0 it is BRECQ's quantizer; in eval mode
it never drops.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from lowbit.core.granularity import from_blocks, to_blocks
from lowbit.core.qparams import MIN_SCALE, QParams
from lowbit.core.qtype import IntQType
from lowbit.core.ste import round_ste


def supports(qp: QParams | None) -> bool:
    return qp is not None and isinstance(qp.qtype, IntQType) and qp.scale_storage is None


class LearnedActQuantizer(nn.Module):
    """Fake quantization with a (possibly trainable) step size and QDrop's random drop while training."""

    def __init__(self, qp: QParams, learn_scale: bool = True, drop: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= drop < 1.0:
            raise ValueError(f"QDrop's drop probability must be in [0, 1), got {drop}")
        self.qp, self.drop = qp, drop
        self.scale = nn.Parameter(qp.scale.detach().clone().float(), requires_grad=learn_scale)
        self.register_buffer("z", qp.zero_point.reshape(-1, 1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = to_blocks(x, self.qp.granularity)  # (num_blocks, block_size)
        s = self.scale.abs().clamp_min(MIN_SCALE).reshape(-1, 1)
        qt = self.qp.qtype
        xq = (torch.clamp(round_ste(xb / s) + self.z, qt.qmin, qt.qmax) - self.z) * s
        x_hat = from_blocks(xq, self.qp.granularity, x.shape)
        if self.training and self.drop > 0:
            return torch.where(torch.rand_like(x) < self.drop, x, x_hat)
        return x_hat

    def qparams(self) -> QParams:
        """The learned QParams (the zero point is kept)."""
        return replace(self.qp, scale=self.scale.detach().abs().clamp_min(MIN_SCALE).clone())


__all__ = ["LearnedActQuantizer", "supports"]
