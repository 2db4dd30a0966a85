"""Dynamic int8 activations as ONNX's DynamicQuantizeLinear, which onnxruntime fuses into DynamicQuantizeMatMul.

A dynamic activation quantizer with one uint8 asymmetric range per tensor (what `layout.deployable` makes of a
dynamic config) becomes `lowbit::dynamic_quantize(x)`: its reference implementation is ONNX's DynamicQuantizeLinear
followed by DequantizeLinear, and its ONNX translation is exactly those two nodes. DynamicQuantizeLinear computes
its range from the tensor on every call:
    scale = (max(0, max(x)) - min(0, min(x))) / 255,  zero point = clamp(round(-min(0, min(x)) / scale), 0, 255),
    codes = clamp(round(x / scale) + zero point, 0, 255)     (round half to even),
the simulation's `dynamic_qparams` for uint8 asymmetric per tensor. onnxruntime's graph optimizer fuses
DynamicQuantizeLinear -> DequantizeLinear -> MatMul <- DequantizeLinear(int8 weight codes) into one
DynamicQuantizeMatMul node (its u8s8 integer GEMM); the test reads its optimized graph.
"""

from __future__ import annotations

import torch
from torch import Tensor

QMAX = 255


@torch.library.custom_op("lowbit::dynamic_quantize", mutates_args=())
def dynamic_quantize(x: Tensor) -> Tensor:
    """Reference: DynamicQuantizeLinear then DequantizeLinear (module docstring), in float32."""
    xf = x.float()
    scale, zero_point = qparams(xf)
    codes = torch.clamp(torch.round(xf / scale) + zero_point, 0, QMAX)
    return ((codes - zero_point) * scale).to(x.dtype)


def qparams(xf: Tensor) -> tuple[Tensor, Tensor]:
    """DynamicQuantizeLinear's (scale, zero point) of a float32 tensor (module docstring)."""
    lo, hi = xf.min().clamp(max=0), xf.max().clamp(min=0)
    scale = (hi - lo) / QMAX
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero tensor: any scale gives codes 0
    return scale, torch.clamp(torch.round(-lo / scale), 0, QMAX)


@dynamic_quantize.register_fake
def _(x):
    return torch.empty_like(x)


def onnx_translation():
    """{op: onnxscript function} for torch.onnx.export(custom_translation_table=...)."""
    from onnxscript import opset21 as op

    def translate(x):
        codes, scale, zero_point = op.DynamicQuantizeLinear(x)
        return op.DequantizeLinear(codes, scale, zero_point)

    return {torch.ops.lowbit.dynamic_quantize.default: translate}
