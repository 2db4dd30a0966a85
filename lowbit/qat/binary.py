"""Binary weights without a scale: deterministic sign and stochastic BinaryConnect.

Courbariaux, Bengio and David, "BinaryConnect: Training Deep Neural Networks with binary weights during
propagations", NeurIPS 2015. Deterministic: w_b = +1 if w >= 0 else -1 (equation 1). Stochastic: w_b = +1 with
probability p = hard_sigmoid(w / H) = clip((w / H + 1) / 2, 0, 1), else -1 (equations 2-3, with the reference
code's Glorot bound H as the weight range); at test time
the deterministic
sign is used (the paper's binary inference option). Gradients pass straight through to the
real-valued weights,
cancelled where |w| > 1 (Hubara et al., "Binarized Neural Networks", NeurIPS 2016), instead of the paper's
clipping of the weights after each update. Activations: float, or any integer width with EMA ranges.
"""

from __future__ import annotations

import torch

from lowbit.core.granularity import PerChannel
from lowbit.core.qparams import QParams
from lowbit.core.qtype import BinaryQType
from lowbit.qat.base import QATMethod, WeightQuantizer, register_method
from lowbit.qat.ste_ema import EMAInput

BINARY = BinaryQType()
STE_CLIP = 1.0  # gradients reach the real value only where |w| <= 1


def straight_through(w: torch.Tensor, forward_value: torch.Tensor, clip: float = STE_CLIP) -> torch.Tensor:
    """`forward_value` in the forward pass; gradient 1 where |w| <= clip and 0 elsewhere."""
    clipped = w.clamp(-clip, clip)
    return clipped + (forward_value - clipped).detach()


def sign_ste(w: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = +1 (BinaryQType's convention), straight-through gradient 1_{|w| <= 1}."""
    return straight_through(w, torch.where(w >= 0, 1.0, -1.0).to(w.dtype))


def binary_export(w: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, QParams]:
    """Codes 1 for w >= 0 and 0 otherwise (BinaryQType levels [-1, +1]), one scale per output channel."""
    qp = QParams(
        scale.detach().to(torch.float32), torch.zeros_like(scale, dtype=torch.int32), BINARY, PerChannel(0)
    )
    return (w.detach() >= 0).to(torch.int32), qp


class SignWeight(WeightQuantizer):
    """Deterministic BinaryConnect: w_b = sign(w), no scale."""

    def __init__(self, bits: int, weight: torch.Tensor) -> None:
        super().__init__(bits)

    def train_forward(self, w):
        return sign_ste(w)

    def export(self, w):
        return binary_export(w, torch.ones(w.shape[0]))


def glorot_bound(weight: torch.Tensor) -> float:
    """H = sqrt(1.5 / (fan_in + fan_out)): the range BinaryConnect's reference code scales weights to (its "H",
    Glorot's bound), so that hard_sigmoid(w / H) is a real probability for weights of a trained network."""
    fan_out = weight.shape[0]
    fan_in = weight[0].numel()
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    return (1.5 / (fan_in + fan_out * receptive)) ** 0.5


class StochasticSignWeight(SignWeight):
    """Stochastic BinaryConnect: +1 with probability hard_sigmoid(w / H) during training, sign(w) at test time.
    H is the Glorot bound of the layer (the reference code's H); gradients pass where |w| <= H."""

    def __init__(self, bits: int, weight: torch.Tensor) -> None:
        super().__init__(bits, weight)
        self.h = glorot_bound(weight)

    def train_forward(self, w):
        p = ((w.detach() / self.h + 1) / 2).clamp(0, 1)
        w_b = torch.where(torch.rand_like(p) < p, 1.0, -1.0).to(w.dtype)
        return straight_through(w, w_b, clip=self.h)


_PAPER = "Courbariaux et al., BinaryConnect, NeurIPS 2015"
_ACT = (None, 2, 3, 4, 5, 6, 7, 8, 16)
register_method(
    QATMethod(
        name="binary-sign", weight=SignWeight, input=EMAInput, paper=_PAPER, weight_bits=(1,), act_bits=_ACT
    )
)
register_method(
    QATMethod(
        name="binaryconnect",
        weight=StochasticSignWeight,
        input=EMAInput,
        paper=_PAPER,
        weight_bits=(1,),
        act_bits=_ACT,
    )
)
