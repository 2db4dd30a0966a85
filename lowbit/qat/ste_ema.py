"""STE fake quantization with min/max ranges: weights per output channel from their current absolute maximum,
inputs per tensor from an exponential moving average of the batch minimum and maximum.

Jacob et al., "Quantization and Training of Neural Networks for Efficient Integer-Arithmetic-Only Inference",
CVPR 2018 (EMA ranges, section 3.1); the straight-through estimator of Bengio et al. 2013: identity gradient
inside the clipping range, zero outside (`lowbit.core.ste.fake_quantize_ste`).
"""

from __future__ import annotations

import torch

from lowbit.core.granularity import PerChannel
from lowbit.core.primitives import quantize
from lowbit.core.qparams import QParams
from lowbit.core.qtype import IntQType
from lowbit.core.ste import fake_quantize_ste
from lowbit.qat.base import (
    InputQuantizer,
    QATMethod,
    WeightQuantizer,
    per_channel_absmax,
    register_method,
    weight_int,
)

EMA_DECAY = 0.9  # weight of the old range; short fine-tunes need ranges that follow the weights quickly


class MaxAbsWeight(WeightQuantizer):
    """Symmetric narrow signed integers, scale_c = max|w_c| / qmax, recomputed every step (no clipping)."""

    def __init__(self, bits: int, weight: torch.Tensor) -> None:
        super().__init__(bits)
        self.qtype = weight_int(bits)

    def _qparams(self, w: torch.Tensor) -> QParams:
        scale = per_channel_absmax(w) / self.qtype.qmax  # (C,)
        return QParams(scale, torch.zeros_like(scale, dtype=torch.int32), self.qtype, PerChannel(0))

    def train_forward(self, w):
        return fake_quantize_ste(w, self._qparams(w))

    def export(self, w):
        qp = self._qparams(w)
        return quantize(w.detach(), qp), qp


class EMAInput(InputQuantizer):
    """Asymmetric unsigned integers over an EMA of the batch range [lo, hi] (0 stays exact)."""

    def __init__(self, bits: int, channels: int | None = None, decay: float = EMA_DECAY) -> None:
        super().__init__(bits)
        self.decay = decay
        self.qtype = IntQType(bits, signed=False)
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.ones(()))

    def init_from(self, x):
        self.lo.copy_(x.min())
        self.hi.copy_(x.max())

    def qparams(self) -> QParams:
        return QParams.from_range(self.lo, self.hi, self.qtype, symmetric=False)

    def train_forward(self, x):
        with torch.no_grad():
            self.lo.mul_(self.decay).add_((1 - self.decay) * x.min())
            self.hi.mul_(self.decay).add_((1 - self.decay) * x.max())
        return fake_quantize_ste(x, self.qparams())


register_method(
    QATMethod(
        name="ste",
        weight=MaxAbsWeight,
        input=EMAInput,
        paper="Jacob et al. 2018 (EMA ranges) with the straight-through estimator of Bengio et al. 2013",
    )
)
