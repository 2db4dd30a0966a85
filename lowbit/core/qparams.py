"""Quantization parameters: per-block scales and zero points for one tensor, and how the scales are stored.

`QParams.scale` is always the effective float scale per block (shape `(num_blocks,)`), so the primitives stay
one formula. Two-level and compressed scales (VS-Quant sub-scales, MX exponents, QLoRA double quantization)
keep their stored form in `scale_storage`, which `bits_per_value` counts.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from lowbit.core.granularity import Granularity, MXBlock, PerGroup, PerTensor, PerVector
from lowbit.core.qtype import FloatQType, IntQType, QType

FP32_BITS = 32
MIN_SCALE = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class SubScales:
    """VS-Quant two-level scales: `codes` (unsigned `bits`) per vector times one float `outer` per tensor."""

    codes: torch.Tensor  # (num_blocks,) uint
    outer: torch.Tensor  # (1,) float32
    bits: int

    def bits_per_block(self) -> float:
        return self.bits + FP32_BITS * self.outer.numel() / self.codes.numel()


@dataclass(frozen=True)
class Pow2Scales:
    """MX shared scales: an 8-bit exponent per block, scale = 2 ** exponent."""

    exponent: torch.Tensor  # (num_blocks,) int8
    bits: int = 8

    def bits_per_block(self) -> float:
        return float(self.bits)


@dataclass(frozen=True)
class DoubleQuantScales:
    """QLoRA double quantization: block scales minus their mean, quantized to signed `bits` integers with one
    float scale per `block` scales (Dettmers et al. 2023, section 3)."""

    codes: torch.Tensor  # (num_blocks,) int8
    scale2: torch.Tensor  # (ceil(num_blocks / block),) float32
    offset: torch.Tensor  # () float32, the mean that was subtracted
    bits: int
    block: int

    def bits_per_block(self) -> float:
        n = self.codes.numel()
        return self.bits + FP32_BITS * (self.scale2.numel() + 1) / n


ScaleStorage = SubScales | Pow2Scales | DoubleQuantScales


@dataclass(frozen=True)
class QParams:
    """Scale and zero point per block of a tensor under `granularity` (see `to_blocks`)."""

    scale: torch.Tensor  # (num_blocks,) float32, > 0
    zero_point: torch.Tensor  # (num_blocks,) int32; zeros when symmetric
    qtype: QType
    granularity: Granularity = PerTensor()
    scale_storage: ScaleStorage | None = None

    @property
    def symmetric(self) -> bool:
        return bool((self.zero_point == 0).all())

    @classmethod
    def from_range(cls, lo, hi, qtype: QType, granularity: Granularity = PerTensor(), symmetric: bool = True):
        """QParams mapping `[lo, hi]` (per block, shape `(num_blocks,)` or scalars) onto `qtype`.

        Symmetric: scale = max(|lo|, |hi|) / max_level, zero point 0 (unsigned types with negative data put it
        at mid-range). Asymmetric (integers only): the range is widened to include 0 so that 0 is exact,
        scale = (hi - lo) / (qmax - qmin), zero point = qmin - round(lo / scale). A block with lo == hi gets
        scale |lo| (1 when 0) and round-trips exactly."""
        check_pairing(qtype, granularity, symmetric)
        lo = torch.as_tensor(lo, dtype=torch.float32).reshape(-1)
        hi = torch.as_tensor(hi, dtype=torch.float32).reshape(-1)
        if lo.shape != hi.shape:
            raise ValueError(f"lo and hi need the same shape, got {tuple(lo.shape)} and {tuple(hi.shape)}")
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError("the range holds NaN or Inf; clean the data the range was computed from")
        if (lo > hi).any():
            raise ValueError("a block has lo > hi; pass the minimum as lo and the maximum as hi")
        if symmetric or not qtype.is_integer:
            scale, zp = _symmetric(lo, hi, qtype)
        else:
            scale, zp = _asymmetric(lo, hi, qtype)
        const = lo == hi
        if const.any():
            scale, zp = _constant_blocks(lo, const, scale, zp, qtype)
        qp = cls(scale.clamp_min(MIN_SCALE), zp, qtype, granularity)
        return _encode_scales(qp)


def check_pairing(qtype: QType, granularity: Granularity, symmetric: bool) -> None:
    """Reject combinations that have no meaning, with a message that says what to choose instead."""
    if not symmetric and not qtype.is_integer:
        raise ValueError(f"asymmetric ranges (a zero point) need an integer qtype; {qtype.name} is symmetric only")
    if isinstance(granularity, PerVector) and not isinstance(qtype, IntQType):
        raise ValueError(f"PerVector (VS-Quant) sub-scales need an integer qtype, not {qtype.name}")
    if isinstance(granularity, MXBlock) and not isinstance(qtype, (IntQType, FloatQType)):
        raise ValueError(f"MX blocks need an integer or float element type, not {qtype.name}")
    if isinstance(granularity, (PerVector, MXBlock)) and not symmetric:
        raise ValueError(f"{type(granularity).__name__} scales are symmetric; pass symmetric=True")


def _symmetric(lo, hi, qtype):
    amax = torch.maximum(lo.abs(), hi.abs())
    zp = torch.zeros_like(amax, dtype=torch.int32)
    if isinstance(qtype, IntQType) and not qtype.signed:
        neg = lo < 0
        mid = (qtype.qmax + 1) // 2
        zp = torch.where(neg, torch.full_like(zp, mid), zp)
        denom = torch.where(neg, torch.full_like(amax, qtype.qmax - mid), torch.full_like(amax, qtype.qmax))
        return amax / denom, zp
    return amax / qtype.max_level, zp


def _asymmetric(lo, hi, qtype: IntQType):
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # 0 must be representable exactly
    scale = (hi - lo) / (qtype.qmax - qtype.qmin)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = (qtype.qmin - torch.round(lo / safe)).clamp(qtype.qmin, qtype.qmax).to(torch.int32)
    return scale, zp


def _constant_blocks(c, const, scale, zp, qtype):
    """A constant block c: scale |c| encodes it as level ±1 (or 0), which every qtype represents exactly."""
    s = torch.where(c == 0, torch.ones_like(c), c.abs())
    z = torch.zeros_like(zp)
    if isinstance(qtype, IntQType) and not qtype.signed:
        z = torch.where(c < 0, torch.ones_like(z), z)  # code 0 -> (0 - 1) * |c| = c
    return torch.where(const, s, scale), torch.where(const, z, zp)


def _encode_scales(qp: QParams) -> QParams:
    """Replace the float scales by their stored two-level form where the granularity asks for it."""
    g = qp.granularity
    if isinstance(g, MXBlock):
        return mx_scales(qp)
    if isinstance(g, PerVector):
        return vector_scales(qp)
    return qp


def mx_scales(qp: QParams) -> QParams:
    """OCP MX: scale = 2^(floor(log2(amax)) - emax_elem), emax_elem the exponent of the element type's largest
    value; amax = scale_float * max_level recovers each block's absolute maximum."""
    amax = qp.scale * qp.qtype.max_level
    emax_elem = int(torch.floor(torch.log2(torch.tensor(qp.qtype.max_level))))
    exponent = (torch.floor(torch.log2(amax)) - emax_elem).clamp(-127, 127).to(torch.int8)
    scale = torch.exp2(exponent.to(torch.float32))
    return replace(qp, scale=scale, scale_storage=Pow2Scales(exponent))


def vector_scales(qp: QParams) -> QParams:
    """VS-Quant: each vector's ideal scale s_v is stored as an unsigned `scale_bits` integer times one float scale
    for the tensor (the paper's per-layer second level), rounded up so that no vector clips."""
    g: PerVector = qp.granularity
    s_max = (2**g.scale_bits) - 1
    outer = qp.scale.amax() / s_max  # ()
    codes = torch.ceil(qp.scale / outer).clamp(1, s_max)  # (num_blocks,)
    storage = SubScales(codes.to(torch.uint8), outer.reshape(1), g.scale_bits)
    return replace(qp, scale=codes * outer, scale_storage=storage)


def double_quantize(qp: QParams, bits: int = 8, block: int = 256) -> QParams:
    """QLoRA's double quantization of per-group scales: subtract the mean, quantize blocks of `block` scales to
    signed `bits` integers with one float32 scale each. The QParams keeps the decoded scales for the numerics."""
    if not isinstance(qp.granularity, PerGroup):
        raise ValueError(f"double quantization applies to per-group scales, not {qp.granularity}")
    s = qp.scale
    offset = s.mean()
    centred = s - offset
    pad = (-centred.numel()) % block
    blocks = torch.nn.functional.pad(centred, (0, pad)).reshape(-1, block)  # (num_blocks / block, block)
    qmax = 2 ** (bits - 1) - 1
    scale2 = (blocks.abs().amax(dim=1) / qmax).clamp_min(MIN_SCALE)  # (num_blocks / block,)
    codes = torch.round(blocks / scale2[:, None]).clamp(-qmax, qmax)
    decoded = (codes * scale2[:, None]).reshape(-1)[: s.numel()] + offset
    storage = DoubleQuantScales(codes.reshape(-1)[: s.numel()].to(torch.int8), scale2, offset, bits, block)
    return replace(qp, scale=decoded.clamp_min(MIN_SCALE), scale_storage=storage)


def bits_per_value(qp: QParams, shape: tuple[int, ...]) -> float:
    """Storage bits per element of a tensor of `shape`: the element bits plus its share of scales and zero points."""
    numel = 1
    for d in shape:
        numel *= d
    n_blocks = qp.scale.numel()
    scale_bits = qp.scale_storage.bits_per_block() if qp.scale_storage is not None else FP32_BITS
    zp_bits = 0 if qp.symmetric else qp.qtype.bits
    return qp.qtype.bits + n_blocks * (scale_bits + zp_bits) / numel


