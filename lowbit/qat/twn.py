"""TWN: ternary weight networks.

Li, Zhang and Liu, "Ternary Weight Networks", arXiv:1605.04711, 2016. Per output channel (the paper uses one
per layer): threshold Delta = 0.7 * mean |w| (equation 8), t = sign(w) where |w| > Delta else 0, and scale
alpha = mean of |w| over {|w| > Delta} (equation 7): w ~ alpha * t. The gradient reaches the
real-valued weights
straight through (identity), as in the paper's training with ternary weights in the forward pass only.
"""

from __future__ import annotations

import torch

from lowbit.core.granularity import PerChannel
from lowbit.core.qparams import MIN_SCALE, QParams
from lowbit.core.qtype import TernaryQType
from lowbit.qat.base import QATMethod, WeightQuantizer, channel_shape, per_channel_absmean, register_method
from lowbit.qat.binary import _ACT
from lowbit.qat.ste_ema import EMAInput

THRESHOLD_FACTOR = 0.7
TERNARY = TernaryQType()


def twn_ternarize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """t in {-1, 0, 1} (shape of w) and alpha per output channel (C,)."""
    w = w.detach()
    delta = THRESHOLD_FACTOR * per_channel_absmean(w)  # (C,)
    mask = w.abs() > delta.reshape(channel_shape(w))
    kept = mask.reshape(w.shape[0], -1)
    total = (w.abs() * mask).reshape(w.shape[0], -1).sum(dim=1)
    alpha = (total / kept.sum(dim=1).clamp_min(1)).clamp_min(MIN_SCALE)  # (C,)
    return torch.sign(w) * mask, alpha


class TWNWeight(WeightQuantizer):
    def __init__(self, bits: int, weight: torch.Tensor) -> None:
        super().__init__(bits)

    def train_forward(self, w):
        t, alpha = twn_ternarize(w)
        return w + (alpha.reshape(channel_shape(w)) * t - w).detach()

    def export(self, w):
        t, alpha = twn_ternarize(w)
        qp = QParams(alpha, torch.zeros_like(alpha, dtype=torch.int32), TERNARY, PerChannel(0))
        return (t + 1).to(torch.int32), qp  # index into TernaryQType's levels [-1, 0, 1]


register_method(
    QATMethod(
        name="twn",
        weight=TWNWeight,
        input=EMAInput,
        paper="Li, Zhang and Liu, Ternary Weight Networks, arXiv:1605.04711, 2016",
        weight_bits=(2,),
        act_bits=_ACT,
    )
)
