"""The reference numerics: quantize, dequantize, fake_quantize. Every fast path is checked against these.

    q = encode(x / scale + zero_point)          (integers: clamp(round_half_even(.), qmin, qmax))
    x_hat = (decode(q) - zero_point) * scale
"""

from __future__ import annotations

import enum

import torch

from lowbit.core.granularity import Granularity, PerTensor, from_blocks, to_blocks
from lowbit.core.qparams import QParams
from lowbit.core.qtype import QType


class Rounding(enum.Enum):
    NEAREST_EVEN = "nearest"
    STOCHASTIC = "stochastic"


def _block_params(qp: QParams, xb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    n = xb.shape[0]
    if qp.scale.numel() not in (1, n):
        raise ValueError(
            f"these QParams hold {qp.scale.numel()} scales but the tensor has {n} blocks under "
            f"{qp.granularity}; were they computed for a tensor of another shape?"
        )
    scale = qp.scale.to(xb.device, torch.float32).reshape(-1, 1)  # (num_blocks, 1)
    zp = qp.zero_point.to(xb.device).reshape(-1, 1).to(torch.float32)  # (num_blocks, 1)
    return scale, zp


def quantize(
    x: torch.Tensor,
    qp: QParams,
    rounding: Rounding = Rounding.NEAREST_EVEN,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Integer codes (int32) with the shape of `x`."""
    xb = to_blocks(x.to(torch.float32), qp.granularity)  # (num_blocks, block_size)
    scale, zp = _block_params(qp, xb)
    u = xb / scale + zp
    q = qp.qtype.encode(u, stochastic=rounding is Rounding.STOCHASTIC, generator=generator)
    return from_blocks(q, qp.granularity, x.shape)


def dequantize(q: torch.Tensor, qp: QParams, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Real values of codes `q` (the inverse of `quantize` on representable values)."""
    qb = to_blocks(q, qp.granularity)  # (num_blocks, block_size)
    scale, zp = _block_params(qp, qb)
    xb = (qp.qtype.decode(qb) - zp) * scale
    return from_blocks(xb, qp.granularity, q.shape).to(dtype)


def fake_quantize(
    x: torch.Tensor,
    qp: QParams,
    rounding: Rounding = Rounding.NEAREST_EVEN,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """dequantize(quantize(x)) in the dtype of `x`: the simulation used by QuantizedModel."""
    return dequantize(quantize(x, qp, rounding, generator), qp, dtype=x.dtype)


def dynamic_qparams(
    x: torch.Tensor, qtype: QType, granularity: Granularity = PerTensor(), symmetric: bool = True
) -> QParams:
    """QParams from the min/max of `x` itself (dynamic quantization: per batch, per token, ...)."""
    xb = to_blocks(x.detach().to(torch.float32), granularity)  # (num_blocks, block_size)
    if not torch.isfinite(xb).all():
        n_bad = int((~torch.isfinite(xb)).sum())
        raise ValueError(f"{n_bad} NaN/Inf values in the tensor to quantize; fix the input before quantizing")
    return QParams.from_range(xb.amin(dim=1), xb.amax(dim=1), qtype, granularity, symmetric)
