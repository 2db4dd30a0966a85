"""DSQ: differentiable soft quantization.

Gong et al., "Differentiable Soft Quantization: Bridging Full-Precision and Low-Bit Neural
Networks", ICCV 2019.
On a grid of step Delta, for u = x / Delta in the interval [i, i + 1) with centre m_i = i + 1/2
(equations 3-5):
    phi(u) = s * tanh(k (u - m_i)),   s = 1 / (1 - alpha),   k = log(2 / alpha - 1)   (in units of Delta),
    Q_S(u) = i + (phi(u) + 1) / 2,
a tanh staircase that tends to hard rounding as alpha -> 0. As in the paper the forward pass is hard
(rounding, i.e. sign(phi)) and the backward pass uses the derivative of Q_S. Here the clipping range is
learned through its upper bound u (lower bound -u for weights and signed inputs, 0 for non-negative inputs),
a simplification of the paper's learned (l, u) that keeps zero exact; alpha is not learned but annealed
geometrically from ALPHA_START to ALPHA_END with `lowbit.qat.set_progress(model, p)`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lowbit.core.granularity import PerChannel, PerTensor
from lowbit.core.primitives import quantize
from lowbit.core.qparams import MIN_SCALE, QParams
from lowbit.core.qtype import IntQType
from lowbit.qat.base import (
    InputQuantizer,
    QATMethod,
    WeightQuantizer,
    channel_shape,
    per_channel_absmax,
    register_method,
    weight_int,
)

ALPHA_START = 0.2
ALPHA_END = 0.01


def soft_round(u: torch.Tensor, alpha: float) -> torch.Tensor:
    """Q_S in units of the step: the tanh staircase with characteristic alpha in (0, 1)."""
    i = torch.floor(u).detach()
    s = 1.0 / (1.0 - alpha)
    k = math.log(2.0 / alpha - 1.0)
    return i + (s * torch.tanh(k * (u - i - 0.5)) + 1.0) / 2.0


def dsq_fake_quant(
    x: torch.Tensor, upper: torch.Tensor, q_min: int, q_max: int, alpha: float
) -> torch.Tensor:
    """Hard forward round(clip(x, l, u) / Delta) * Delta, backward through the soft staircase;
    Delta = u / q_max."""
    delta = upper.clamp_min(MIN_SCALE) / q_max
    clipped = torch.minimum(torch.maximum(x, q_min * delta), q_max * delta)
    u = clipped / delta
    soft = soft_round(u, alpha)
    return (soft + (torch.round(u) - soft).detach()) * delta


def annealed_alpha(progress: float) -> float:
    return ALPHA_START * (ALPHA_END / ALPHA_START) ** progress


class DSQWeight(WeightQuantizer):
    def __init__(self, bits: int, weight: torch.Tensor) -> None:
        super().__init__(bits)
        self.qtype = weight_int(bits)
        self.alpha = ALPHA_START
        self.upper = nn.Parameter(per_channel_absmax(weight))  # (C,)

    def set_progress(self, progress):
        self.alpha = annealed_alpha(progress)

    def train_forward(self, w):
        u = self.upper.reshape(channel_shape(w))
        return dsq_fake_quant(w, u, self.qtype.qmin, self.qtype.qmax, self.alpha)

    def export(self, w):
        s = self.upper.detach().clamp_min(MIN_SCALE) / self.qtype.qmax
        qp = QParams(s, torch.zeros_like(s, dtype=torch.int32), self.qtype, PerChannel(0))
        return quantize(w.detach(), qp), qp


class DSQInput(InputQuantizer):
    def __init__(self, bits: int, channels: int | None = None) -> None:
        super().__init__(bits)
        self.alpha = ALPHA_START
        self.upper = nn.Parameter(torch.ones(()))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))

    @property
    def qtype(self) -> IntQType:
        return IntQType(self.bits, signed=bool(self.signed), narrow=bool(self.signed))

    def set_progress(self, progress):
        self.alpha = annealed_alpha(progress)

    def init_from(self, x):
        self.signed.fill_(bool(x.min() < 0))
        self.upper.fill_(float(x.abs().max()))

    def train_forward(self, x):
        return dsq_fake_quant(x, self.upper, self.qtype.qmin, self.qtype.qmax, self.alpha)

    def qparams(self):
        s = (self.upper.detach().clamp_min(MIN_SCALE) / self.qtype.qmax).reshape(1)
        return QParams(s, torch.zeros(1, dtype=torch.int32), self.qtype, PerTensor())


register_method(
    QATMethod(
        name="dsq",
        weight=DSQWeight,
        input=DSQInput,
        paper="Gong et al., Differentiable Soft Quantization, ICCV 2019",
    )
)
