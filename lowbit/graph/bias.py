"""Bias quantization: a quantized conv/linear layer's bias rounded to int32 codes at s_x * s_w.

An integer kernel accumulates x_q * w_q in int32 at scale s_x * s_w[c] and adds the bias there, so the bias a
QDQ runtime uses is round(b / (s_x * s_w)) * s_x * s_w; onnxruntime fuses DQ -> Conv/Gemm -> Q into one integer
kernel only when the bias comes as int32 through a DequantizeLinear. The simulation rounds the bias the same way,
so that it equals the exported model (`lowbit.export.qdq` writes these codes).
"""

from __future__ import annotations

import torch

from lowbit.core.granularity import PerChannel, PerTensor
from lowbit.core.qparams import QParams
from lowbit.core.qtype import IntQType

INT32_MAX = 2**31 - 1


def bias_scale(act: QParams | None, weight: QParams | None, n: int) -> torch.Tensor | None:
    """s_x * s_w per output channel ([n] float32), or None when the pair has no integer accumulator (non-integer
    types, per-group weights, per-token activations)."""
    if act is None or weight is None:
        return None
    if not (isinstance(act.qtype, IntQType) and isinstance(weight.qtype, IntQType)):
        return None
    if not isinstance(act.granularity, PerTensor):
        return None
    if isinstance(weight.granularity, PerChannel) and weight.granularity.axis == 0:
        s_w = weight.scale.reshape(-1)
    elif isinstance(weight.granularity, PerTensor):
        s_w = weight.scale.reshape(1).expand(n)
    else:
        return None
    return (act.scale.reshape(()).double() * s_w.double()).float()


def quantize_bias(bias: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int32 codes of `bias` at `scale` (zero point 0)."""
    return torch.round(bias.detach().float() / scale).clamp(-INT32_MAX, INT32_MAX).to(torch.int32)


class BiasQuantizer(torch.nn.Module):
    """Rounds the bias of `layer` to its int32 grid. It follows its input and weight quantizers: the bias is exact
    float whenever either is off, uncalibrated, observing or dynamic."""

    def __init__(self, layer: str, act, weight) -> None:
        super().__init__()
        self.layer = layer
        self._sources = (act, weight)  # a tuple: not registered as submodules (they are the graph's own)

    def scale(self, n: int) -> torch.Tensor | None:
        act, weight = self._sources
        if not (act.enabled and weight.enabled) or act.observing or act.dynamic or act.kept_float:
            return None
        return bias_scale(act.qparams, weight.qparams, n)

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        s = self.scale(b.numel())
        if s is None:
            return b
        return (quantize_bias(b, s).to(b.dtype) * s).reshape(b.shape)

    def extra_repr(self) -> str:
        return f"{self.layer}: int32 at s_x * s_w"
