"""convert_eager(prepared): an eval-mode model with BatchNorms folded and integer weight codes in every layer.
(`lowbit.qat.convert` builds the pipeline's QuantizedModel from this; see pipeline.py.)

Folding (policy "fold-running"): for a BatchNorm with running mean mu, variance var, weight gamma, bias beta
following a layer with bias b, c = gamma / sqrt(var + eps) per output channel; the weight scale becomes
scale * |c| (codes negated where c < 0) and the bias beta + c (b - mu). The converted forward equals the
prepared model's eval forward up to float32 rounding.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import replace

import torch
from torch import nn

from lowbit.core.granularity import PerChannel
from lowbit.core.qparams import MIN_SCALE, QParams
from lowbit.core.qtype import IntQType
from lowbit.qat.modules import QATConv2d, QATLayerMixin
from lowbit.qat.prepare import QATInfo, set_submodule
from lowbit.qat.quantized import QuantizedConv2d, QuantizedLayer, QuantizedLinear
from lowbit.qat.table import TableQType

log = logging.getLogger(__name__)


class ConvertedModel(nn.Module):
    """The converted network (`.model`) plus the per-layer data a deployment pipeline needs."""

    def __init__(self, model: nn.Module, info: QATInfo) -> None:
        super().__init__()
        self.model = model
        self.info = info

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)

    def lowbit_qparams(self) -> dict[str, dict[str, QParams | torch.Tensor | None]]:
        """{layer name: {"weight": QParams, "input": QParams or None (float input), "input_offset": tensor}}
        with the BatchNorm already folded into the weight scales; "input_offset" (XNOR's threshold, else
        empty) is subtracted from the input before it is quantized."""
        return {
            name: {"weight": m.weight_qparams(), "input": m.input_qparams(), "input_offset": m.input_offset}
            for name, m in self.model.named_modules()
            if isinstance(m, QuantizedLayer)
        }

    def weight_codes(self) -> dict[str, torch.Tensor]:
        return {
            name: m.weight_codes for name, m in self.model.named_modules() if isinstance(m, QuantizedLayer)
        }


def _negate_codes(codes: torch.Tensor, qp: QParams, neg: torch.Tensor) -> tuple[torch.Tensor, QParams]:
    """Codes of -w for the channels in `neg`, widening a non-symmetric table with the negated levels."""
    mask = neg.reshape((-1,) + (1,) * (codes.dim() - 1))
    if isinstance(qp.qtype, IntQType):
        if qp.qtype.signed and -qp.qtype.qmin == qp.qtype.qmax:
            return torch.where(mask, -codes, codes), qp
        raise ValueError(f"cannot fold a negative BatchNorm scale into {qp.qtype.name} weight codes")
    levels = qp.qtype.levels()
    if torch.equal(-levels.flip(0), levels):
        return torch.where(mask, levels.numel() - 1 - codes, codes), qp
    wide = torch.unique(torch.cat([levels, -levels]))  # sorted
    index = torch.bucketize(levels, wide)  # position of each old level in the wider table
    neg_index = torch.bucketize(-levels, wide)
    new = torch.where(mask, neg_index[codes.long()], index[codes.long()]).to(torch.int32)
    return new, replace(qp, qtype=TableQType(tuple(float(v) for v in wide)))


def fold_bn(codes: torch.Tensor, qp: QParams, bias: torch.Tensor, bn: nn.Module):
    """(codes, QParams per output channel, bias) of the layer followed by `bn` in eval mode."""
    if not qp.symmetric:
        raise ValueError("BatchNorm folding needs symmetric weight quantization (zero points 0)")
    c_out = codes.shape[0]
    var, mu = bn.running_var, bn.running_mean
    gamma = bn.weight if bn.affine else torch.ones_like(var)
    beta = bn.bias if bn.affine else torch.zeros_like(var)
    c = gamma / torch.sqrt(var + bn.eps)  # (C,)
    scale = qp.scale.expand(c_out) if qp.scale.numel() == 1 else qp.scale
    qp = QParams(
        (scale * c.abs()).clamp_min(MIN_SCALE), torch.zeros(c_out, dtype=torch.int32), qp.qtype, PerChannel(0)
    )
    if (c < 0).any():
        codes, qp = _negate_codes(codes, qp, c < 0)
    return codes, qp, beta + c * (bias - mu)


def _per_channel(qp: QParams, c_out: int) -> QParams:
    if isinstance(qp.granularity, PerChannel):
        return qp
    return QParams(
        qp.scale.expand(c_out).clone(), qp.zero_point.expand(c_out).clone(), qp.qtype, PerChannel(0)
    )


@torch.no_grad()
def quantized_layer(layer: QATLayerMixin, bn: nn.Module | None) -> QuantizedLayer:
    codes, qp = layer.weight_quantizer.export(layer.weight)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros(layer.weight.shape[0])
    if bn is not None:
        codes, qp, bias = fold_bn(codes, qp, bias, bn)
    iq = layer.input_quantizer
    dynamic = iq is not None and iq.dynamic_output_scale
    cls = QuantizedConv2d if isinstance(layer, QATConv2d) else QuantizedLinear
    q = cls(layer, has_input=iq is not None, dynamic_scale=dynamic)
    q.set_weight(codes, _per_channel(qp, layer.weight.shape[0]))
    q.bias = bias.detach().clone()
    if iq is not None:
        if not bool(iq.initialized):
            log.warning("an input quantizer never saw data: its QParams are placeholders; run batches first")
        offset = getattr(iq, "tau", None)
        q.set_input(iq.qparams(), offset)
    return q


def convert_eager(model: nn.Module) -> ConvertedModel:
    """Eval-mode copy of a `prepare`d model with each QAT layer holding integer codes and fixed QParams."""
    info: QATInfo | None = getattr(model, "lowbit_qat_info", None)
    if info is None:
        raise ValueError("convert takes a model returned by lowbit.qat.prepare (it has no lowbit_qat_info)")
    qmodel = copy.deepcopy(model).eval()
    bn_of = dict(info.bn_pairs)
    for name, module in list(qmodel.named_modules()):
        if not isinstance(module, QATLayerMixin):
            continue
        bn = qmodel.get_submodule(bn_of[name]) if name in bn_of else None
        set_submodule(qmodel, name, quantized_layer(module, bn))
        if bn is not None:
            set_submodule(qmodel, bn_of[name], nn.Identity())
    return ConvertedModel(qmodel, info).eval()
