"""QAT wrappers: Conv2d and Linear whose weights and inputs pass through a method's quantizers.

They subclass the torch layers, so parameter names stay those of the float model (`stem.0.weight`) and a float
checkpoint loads into a prepared model. The quantizers' own state sits under `weight_quantizer.*` and
`input_quantizer.*`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lowbit.qat.base import InputQuantizer, WeightQuantizer


class QATLayerMixin:
    """forward: y = op(input_quantizer(x), weight_quantizer(W)) [* K] + b."""

    weight_quantizer: WeightQuantizer
    input_quantizer: InputQuantizer | None

    def attach(self, weight_quantizer: WeightQuantizer, input_quantizer: InputQuantizer | None) -> None:
        self.weight_quantizer = weight_quantizer
        self.input_quantizer = input_quantizer

    def _linear_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = None
        if self.input_quantizer is not None:
            k = self.input_quantizer.output_scale(x, self)
            x = self.input_quantizer(x)
        y = self._linear_op(x, self.weight_quantizer(self.weight))
        if k is not None:
            y = y * k
        if self.bias is not None:
            y = y + self.bias.reshape((1, -1) + (1,) * (y.dim() - 2))
        return y


class QATConv2d(QATLayerMixin, nn.Conv2d):
    @classmethod
    def from_float(cls, conv: nn.Conv2d, wq: WeightQuantizer, iq: InputQuantizer | None) -> QATConv2d:
        new = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        new.weight, new.bias = conv.weight, conv.bias
        new.attach(wq, iq)
        return new

    def _linear_op(self, x, w):
        return self._conv_forward(x, w, None)


class QATLinear(QATLayerMixin, nn.Linear):
    @classmethod
    def from_float(cls, linear: nn.Linear, wq: WeightQuantizer, iq: InputQuantizer | None) -> QATLinear:
        new = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        new.weight, new.bias = linear.weight, linear.bias
        new.attach(wq, iq)
        return new

    def _linear_op(self, x, w):
        return F.linear(x, w)


QAT_WRAPPERS = {nn.Conv2d: QATConv2d, nn.Linear: QATLinear}
