"""Bias quantization: a quantized conv/linear layer's bias rounded to int32 codes at s_x * s_w.

An integer kernel accumulates x_q * w_q in int32 at scale s_x * s_w[c] and adds the bias there, so the bias a
QDQ runtime uses is round(b / (s_x * s_w)) * s_x * s_w; onnxruntime fuses DQ -> Conv/Gemm -> Q into one integer
kernel only when the bias comes as int32 through a DequantizeLinear. The simulation rounds the bias the same way,
so that it equals the exported model (`lowbit.export.qdq` writes these codes).

The codes must fit int32 with room for the accumulator: the kernel adds them to sum(x_q * w_q), up to
fan-in x 255 x 127 in magnitude, and int32 arithmetic wraps. A channel whose weights are nearly zero (a dead
channel after BatchNorm folding: EfficientNet-Lite0 has some with |w| ~ 1e-7) gets a weight scale ~1e-9, and its
bias then needs more than 2^31 codes: onnxruntime's sum wrapped and such channels read 6-37 codes where the
exact result was 0. `fit_int32_biases` raises the weight scale of those channels until the bias fits (their
weights then round to ~0 codes, which they nearly are); onnxruntime's own quantizer adjusts its weight scales
the same way.
"""

from __future__ import annotations

from dataclasses import replace

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


def _accumulator_bound(act: QParams, weight: QParams, fan_in: int) -> int:
    """The largest |sum(x_q - z_x) * w_q| a kernel can reach for one output."""
    a, w = act.qtype, weight.qtype
    return fan_in * (a.qmax - a.qmin) * max(abs(w.qmin), abs(w.qmax))


def fit_int32_biases(qmodel) -> list[str]:
    """Raise the weight scales of the channels of `qmodel` (a QuantizedModel) whose int32 bias codes would not fit
    beside the accumulator (module docstring) and re-quantize those weights. Returns the layers changed; idempotent."""
    from lowbit.graph.nodes import get_attr_tensor

    gm, changed = qmodel.graph_module, []
    for n in gm.graph.nodes:
        if n.op != "call_module" or not isinstance(gm.get_submodule(n.target), BiasQuantizer):
            continue
        bq = gm.get_submodule(n.target)
        act, wq = bq._sources
        if n.args[0].op != "get_attr" or bq.layer not in qmodel.layers or bq.scale(1) is None:
            continue
        w, b = qmodel.weight_of(qmodel.layers[bq.layer]).detach(), get_attr_tensor(gm, n.args[0]).detach()
        room = INT32_MAX - _accumulator_bound(act.qparams, wq.qparams, w[0].numel())
        if room <= 0:
            continue
        s_x, s_w = act.qparams.scale.reshape(()).double(), wq.qparams.scale.reshape(-1).double()
        needed = b.reshape(-1).double().abs() / (s_x * room)
        if isinstance(wq.qparams.granularity, PerTensor):
            needed = needed.max().reshape(1)
        if not bool((s_w < needed).any()):
            continue
        scale = torch.maximum(s_w, needed * (1 + 1e-6)).float()
        wq.set_qparams(w, replace(wq.qparams, scale=scale.reshape(wq.qparams.scale.shape)))
        changed.append(bq.layer)
    return changed
