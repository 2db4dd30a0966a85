"""LSQ: learned step size quantization.

Esser et al., "Learned Step Size Quantization", ICLR 2020. v_hat = round(clip(v / s, -Q_N, Q_P)) * s with the
straight-through estimator for round; the step s is learned with the gradient (equation 3)
    d v_hat / d s = -v/s + round(v/s)  if -Q_N < v/s < Q_P,   -Q_N  if v/s <= -Q_N,   Q_P  if v/s >= Q_P,
scaled by g = 1 / sqrt(N * Q_P), N the number of elements sharing the step (section 2.2). Initial step
2 <|v|> / sqrt(Q_P). Weights: one step per output channel, narrow signed range; inputs: one step per tensor,
unsigned when the first batch is non-negative, signed otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from lowbit.core.granularity import PerChannel, PerTensor
from lowbit.core.primitives import quantize
from lowbit.core.qparams import MIN_SCALE, QParams
from lowbit.core.qtype import IntQType
from lowbit.core.ste import round_ste
from lowbit.qat.base import (
    InputQuantizer,
    QATMethod,
    WeightQuantizer,
    channel_shape,
    per_channel_absmean,
    register_method,
    weight_int,
)


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """x in the forward pass, g * (d/dx) in the backward pass (LSQ's gradscale)."""
    return (x - x * g).detach() + x * g


def lsq_fake_quant(v: torch.Tensor, s: torch.Tensor, q_n: int, q_p: int, g: float) -> torch.Tensor:
    """round(clip(v / s, -Q_N, Q_P)) * s with LSQ's gradients; `s` broadcasts against `v`."""
    s = grad_scale(s, g)
    return round_ste(torch.clamp(v / s, -q_n, q_p)) * s


def init_step(mean_abs: torch.Tensor, q_p: int) -> torch.Tensor:
    return (2 * mean_abs / math.sqrt(q_p)).clamp_min(MIN_SCALE)


class LSQWeight(WeightQuantizer):
    def __init__(self, bits: int, weight: torch.Tensor) -> None:
        super().__init__(bits)
        self.qtype = weight_int(bits)
        self.step = nn.Parameter(init_step(per_channel_absmean(weight.detach()), self.qtype.qmax))  # (C,)

    def g(self, w: torch.Tensor) -> float:
        return 1.0 / math.sqrt(w[0].numel() * self.qtype.qmax)

    def train_forward(self, w):
        s = self.step.reshape(channel_shape(w))
        return lsq_fake_quant(w, s, -self.qtype.qmin, self.qtype.qmax, self.g(w))

    def export(self, w):
        s = self.step.detach().clamp_min(MIN_SCALE)
        qp = QParams(s, torch.zeros_like(s, dtype=torch.int32), self.qtype, PerChannel(0))
        return quantize(w.detach(), qp), qp


class LSQInput(InputQuantizer):
    def __init__(self, bits: int, channels: int | None = None) -> None:
        super().__init__(bits)
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))

    @property
    def qtype(self) -> IntQType:
        return IntQType(self.bits, signed=bool(self.signed))

    def init_from(self, x):
        self.signed.fill_(bool(x.min() < 0))
        self.step.copy_(init_step(x.abs().mean(), self.qtype.qmax))

    def train_forward(self, x):
        n = x[0].numel() if x.dim() > 1 else x.numel()  # features per sample
        g = 1.0 / math.sqrt(n * self.qtype.qmax)
        return lsq_fake_quant(x, self.step, -self.qtype.qmin, self.qtype.qmax, g)

    def qparams(self):
        s = self.step.detach().clamp_min(MIN_SCALE).reshape(1)
        return QParams(s, torch.zeros(1, dtype=torch.int32), self.qtype, PerTensor())


register_method(
    QATMethod(
        name="lsq",
        weight=LSQWeight,
        input=LSQInput,
        paper="Esser et al., Learned Step Size Quantization, ICLR 2020",
    )
)
