"""PACT: parameterized clipping activation.

Choi et al., "PACT: Parameterized Clipping Activation for Quantized Neural Networks", arXiv:1805.06085, 2018.
y = clip(x, 0, alpha), y_q = round(y * (2^k - 1) / alpha) * alpha / (2^k - 1) with the straight-through
estimator for round, so that (equation 3)  d y_q / d alpha = 1 if x >= alpha else 0  and d y_q / d x = 1 on
[0, alpha). alpha is learned per layer; add it to the optimizer with L2 decay as the paper does if wanted.
Inputs that can be negative (the first batch has negatives) use the symmetric clip [-alpha, alpha] and signed
codes. Weights use max-abs STE quantization per output channel (the paper uses DoReFa's; see ste_ema.py).
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.core.granularity import PerTensor
from lowbit.core.qparams import MIN_SCALE, QParams
from lowbit.core.qtype import IntQType
from lowbit.qat.base import InputQuantizer, QATMethod, register_method
from lowbit.qat.ste_ema import MaxAbsWeight


class PACTInput(InputQuantizer):
    def __init__(self, bits: int, channels: int | None = None, alpha: float | None = None) -> None:
        super().__init__(bits)
        self.init_alpha = alpha
        self.alpha = nn.Parameter(torch.ones(()))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))

    @property
    def qtype(self) -> IntQType:
        return IntQType(self.bits, signed=bool(self.signed), narrow=bool(self.signed))

    def init_from(self, x):
        """alpha from the argument, else the first batch's largest magnitude (the paper starts at 10)."""
        self.signed.fill_(bool(x.min() < 0))
        self.alpha.fill_(self.init_alpha if self.init_alpha is not None else float(x.abs().max()))

    def scale(self) -> torch.Tensor:
        return self.alpha.clamp_min(MIN_SCALE) / self.qtype.qmax

    def train_forward(self, x):
        lo = -self.alpha if bool(self.signed) else torch.zeros_like(self.alpha)
        y = torch.minimum(
            torch.maximum(x, lo), self.alpha
        )  # gradient to alpha where x >= alpha (x <= -alpha)
        s = self.scale().detach()
        y_q = torch.round(y / s) * s
        return y + (y_q - y).detach()

    def qparams(self):
        s = self.scale().detach().reshape(1)
        return QParams(s, torch.zeros(1, dtype=torch.int32), self.qtype, PerTensor())


register_method(
    QATMethod(
        name="pact", weight=MaxAbsWeight, input=PACTInput, paper="Choi et al., PACT, arXiv:1805.06085, 2018"
    )
)
