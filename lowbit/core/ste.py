"""Straight-through estimators (Bengio et al. 2013): fake quantization in the forward pass, identity gradient
inside the representable range and zero outside it (the clipped STE used by QAT)."""

from __future__ import annotations

import torch

from lowbit.core.granularity import from_blocks, to_blocks
from lowbit.core.primitives import Rounding, fake_quantize
from lowbit.core.qparams import QParams


class _FakeQuantSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, qp: QParams, rounding: Rounding):
        levels = qp.qtype.levels()
        lo_code, hi_code = float(levels[0]), float(levels[-1])
        xb = to_blocks(x, qp.granularity)  # (num_blocks, block_size)
        scale = qp.scale.to(x.device).reshape(-1, 1)  # (num_blocks, 1)
        zp = qp.zero_point.to(x.device, torch.float32).reshape(-1, 1)  # (num_blocks, 1)
        lo, hi = (lo_code - zp) * scale, (hi_code - zp) * scale
        inside = from_blocks((xb >= lo) & (xb <= hi), qp.granularity, x.shape)
        ctx.save_for_backward(inside)
        return fake_quantize(x, qp, rounding)

    @staticmethod
    def backward(ctx, grad):
        (inside,) = ctx.saved_tensors
        return grad * inside.to(grad.dtype), None, None


def fake_quantize_ste(x: torch.Tensor, qp: QParams, rounding: Rounding = Rounding.NEAREST_EVEN) -> torch.Tensor:
    """Differentiable fake quantization: d out / d x = 1 where x lies in the clipping range, else 0."""
    return _FakeQuantSTE.apply(x, qp, rounding)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) with an identity gradient."""
    return x + (torch.round(x) - x).detach()
