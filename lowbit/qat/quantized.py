"""Converted layers: integer weight codes, fixed QParams, folded bias. The forward is lowbit.core's:
    y = op(fake_quantize(x - offset, input_qparams), dequantize(codes, weight_qparams)) [* K] + bias.

QParams live in buffers (scale, zero point, a qtype descriptor and, for tables, the levels), so that
`torch.save(state_dict)` / `load_state_dict` round-trips them exactly; buffers whose size depends on the data
(levels, offsets) are resized on load.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lowbit.core.granularity import PerChannel, PerTensor
from lowbit.core.primitives import dequantize, fake_quantize
from lowbit.core.qparams import QParams
from lowbit.core.qtype import BinaryQType, IntQType, QType, TernaryQType
from lowbit.qat.table import TableQType
from lowbit.qat.xnor import activation_scale

KIND_INT, KIND_BINARY, KIND_TERNARY, KIND_TABLE = range(4)


def qtype_to_tensors(qtype: QType) -> tuple[torch.Tensor, torch.Tensor]:
    """(descriptor [kind, bits, signed, narrow] int32, levels float32 — empty unless a table)."""
    empty = torch.zeros(0)
    if isinstance(qtype, IntQType):
        return torch.tensor(
            [KIND_INT, qtype.bits, int(qtype.signed), int(qtype.narrow)], dtype=torch.int32
        ), empty
    if isinstance(qtype, BinaryQType):
        return torch.tensor([KIND_BINARY, 1, 1, 0], dtype=torch.int32), empty
    if isinstance(qtype, TernaryQType):
        return torch.tensor([KIND_TERNARY, 2, 1, 0], dtype=torch.int32), empty
    if isinstance(qtype, TableQType):
        return torch.tensor([KIND_TABLE, qtype.bits, 1, 0], dtype=torch.int32), qtype.levels()
    raise TypeError(f"converted QAT layers cannot store qtype {qtype!r}")


def qtype_from_tensors(desc: torch.Tensor, levels: torch.Tensor) -> QType:
    kind, bits, signed, narrow = (int(v) for v in desc)
    if kind == KIND_INT:
        return IntQType(bits, signed=bool(signed), narrow=bool(narrow))
    if kind == KIND_BINARY:
        return BinaryQType()
    if kind == KIND_TERNARY:
        return TernaryQType()
    return TableQType(tuple(float(v) for v in levels))


class QuantizedLayer(nn.Module):
    """Base of QuantizedConv2d / QuantizedLinear; build with `from_parts`."""

    def __init__(self, out_channels: int, has_input: bool, dynamic_scale: bool) -> None:
        super().__init__()
        self.has_input, self.dynamic_scale = has_input, dynamic_scale
        for key, value in _empty_buffers(out_channels).items():
            self.register_buffer(key, value)

    def set_weight(self, codes: torch.Tensor, qp: QParams) -> None:
        self.weight_codes = codes.to(torch.int16)
        self.weight_scale, self.weight_zero_point = qp.scale.clone(), qp.zero_point.clone()
        self.weight_qtype, self.weight_levels = qtype_to_tensors(qp.qtype)

    def set_input(self, qp: QParams | None, offset: torch.Tensor | None) -> None:
        if qp is None:
            return
        self.input_scale, self.input_zero_point = (
            qp.scale.clone().reshape(1),
            qp.zero_point.clone().reshape(1),
        )
        self.input_qtype, self.input_levels = qtype_to_tensors(qp.qtype)
        self.input_offset = torch.zeros(0) if offset is None else offset.detach().clone()

    def weight_qparams(self) -> QParams:
        qtype = qtype_from_tensors(self.weight_qtype, self.weight_levels)
        return QParams(self.weight_scale, self.weight_zero_point, qtype, PerChannel(0))

    def input_qparams(self) -> QParams | None:
        if not self.has_input:
            return None
        qtype = qtype_from_tensors(self.input_qtype, self.input_levels)
        return QParams(self.input_scale, self.input_zero_point, qtype, PerTensor())

    def _linear_op(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = None
        if self.has_input:
            if self.input_offset.numel():
                x = x - self.input_offset.reshape((1, -1) + (1,) * (x.dim() - 2))
            if self.dynamic_scale:
                k = activation_scale(x, self)
            x = fake_quantize(x, self.input_qparams())
        y = self._linear_op(x, dequantize(self.weight_codes, self.weight_qparams(), dtype=x.dtype))
        if k is not None:
            y = y * k
        return y + self.bias.reshape((1, -1) + (1,) * (y.dim() - 2))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name, buf in self.named_buffers(recurse=False):
            incoming = state_dict.get(prefix + name)
            if incoming is not None and incoming.shape != buf.shape:
                setattr(self, name, torch.empty_like(incoming))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _empty_buffers(c: int) -> dict[str, torch.Tensor]:
    int4 = torch.zeros(4, dtype=torch.int32)
    return {
        "weight_codes": torch.zeros(0, dtype=torch.int16),
        "weight_scale": torch.ones(c),
        "weight_zero_point": torch.zeros(c, dtype=torch.int32),
        "weight_qtype": int4.clone(),
        "weight_levels": torch.zeros(0),
        "bias": torch.zeros(c),
        "input_scale": torch.ones(1),
        "input_zero_point": torch.zeros(1, dtype=torch.int32),
        "input_qtype": int4.clone(),
        "input_levels": torch.zeros(0),
        "input_offset": torch.zeros(0),
    }


class QuantizedConv2d(QuantizedLayer):
    def __init__(self, conv: nn.Conv2d, has_input: bool, dynamic_scale: bool) -> None:
        super().__init__(conv.out_channels, has_input, dynamic_scale)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        if conv.padding_mode != "zeros":
            raise ValueError(f"converted convs support zero padding only, not {conv.padding_mode!r}")

    def _linear_op(self, x, w):
        return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)


class QuantizedLinear(QuantizedLayer):
    def __init__(self, linear: nn.Linear, has_input: bool, dynamic_scale: bool) -> None:
        super().__init__(linear.out_features, has_input, dynamic_scale)
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def _linear_op(self, x, w):
        return F.linear(x, w)
