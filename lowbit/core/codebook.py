"""Codebooks (tables of levels) and the block-wise absmax quantization that uses them.

Every table is a sorted float32 tensor normalised to [-1, 1] ([0, 1] for unsigned maps); a block of values
is scaled by its absolute maximum onto that range and each value is replaced by the index of its nearest
level.

- NF4: Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs" (2023), section 3 and appendix E.
- FP4 E2M1: OCP Microscaling Formats (MX) v1.0 specification, the 4-bit element type.
- Dynamic tree map and block-wise quantization: Dettmers et al., "8-bit Optimizers via Block-wise
  Quantization" (ICLR 2022), section 2 (dynamic tree quantization, block-wise quantization).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NF4_LEVELS = 16
#: QLoRA's outer quantile: the mean of the offsets that put 1/(2*15) and 1/(2*16) of the mass outside
#: the extreme levels of the 15-level (negative) and 16-level (positive) halves.
NF4_OFFSET = 1.0 - 0.5 * (1.0 / (2 * 15) + 1.0 / (2 * 16))
#: E2M1: 2 exponent bits with bias 1, 1 mantissa bit; its largest magnitude is 1.5 * 2**2.
FP4_EXP_BITS, FP4_MAN_BITS, FP4_BIAS = 2, 1, 1
FP4_MAX = (1 + (2**FP4_MAN_BITS - 1) / 2**FP4_MAN_BITS) * 2 ** (2**FP4_EXP_BITS - 1 - FP4_BIAS)
#: CodeTable keys: the top 16 bits of a float32 (sign, 8 exponent bits, 7 mantissa bits), offset to be >= 0.
FLOAT32_BITS, KEY_BITS = 32, 16
KEY_SHIFT = FLOAT32_BITS - KEY_BITS
KEY_OFFSET = 2 ** (KEY_BITS - 1)
CODES_PER_BYTE = 2**8
#: The dynamic map's fractions run linearly over one decade, (DECADE_LOW, 1] times 10**-exponent.
DECADE_LOW = 0.1


def nf4_values() -> torch.Tensor:
    """The 16 NormalFloat4 levels: quantiles of N(0, 1), asymmetric so that 0 is exact.

    As QLoRA defines it: 8 positive quantiles at probabilities linspace(offset, 0.5, 9)[:-1], 7 negative ones
    at linspace(offset, 0.5, 8)[:-1] (negated), plus 0; then divided by the largest, so the ends are -1 and 1.
    """
    pos = torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 9, dtype=torch.float64)[:-1])
    neg = -torch.special.ndtri(torch.linspace(NF4_OFFSET, 0.5, 8, dtype=torch.float64)[:-1])
    values = torch.cat([pos, neg, torch.zeros(1, dtype=torch.float64)]).sort().values
    return (values / values.max()).to(torch.float32)


def fp4_e2m1_values() -> torch.Tensor:
    """The 15 distinct FP4 E2M1 values (0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6), divided by 6."""
    mags = []
    for e in range(2**FP4_EXP_BITS):
        for m in range(2**FP4_MAN_BITS):
            frac = m / 2**FP4_MAN_BITS
            # exponent field 0 is subnormal: no implicit leading one, exponent 1 - bias
            mags.append(frac * 2 ** (1 - FP4_BIAS) if e == 0 else (1 + frac) * 2 ** (e - FP4_BIAS))
    mags_t = torch.tensor(sorted(set(mags)), dtype=torch.float64)  # [8], 0 .. 6
    values = torch.cat([-mags_t[1:].flip(0), mags_t])  # [15]
    return (values / FP4_MAX).to(torch.float32)


def dynamic_map(signed: bool = True, bits: int = 8) -> torch.Tensor:
    """Dettmers' dynamic tree map: 2**bits sorted levels covering [-1, 1] (signed) or [0, 1] (unsigned).

    A code reads, from its high bit: a sign bit (signed maps only); a run of E zero bits, the decimal
    exponent; an indicator bit 1 ending the run; the remaining F bits, a linear fraction. With n magnitude
    bits (bits - 1 signed, bits unsigned) the run length E is 0 .. n-1 and F = n - 1 - E, and the value is
    ``sign * 10**-E * f`` with f on the 2**F right end points of an even split of the decade (0.1, 1]:
    ``f_j = 0.1 + 0.9 * j / 2**F`` for j = 1 .. 2**F. Right end points (rather than bin centres) put the
    levels 1 and -1 in the table, so a block's absmax element is stored exactly, and each decade's top
    level 10**-E is where the next decade up begins, so the levels leave no hole between decades.

    Special codes: all n magnitude bits zero is 0. That makes 2**n codes per sign with no duplicates for an
    unsigned map (2**n - 1 levels + zero). A signed map would hold 0 twice (+0 and -0); the -0 code is read
    instead as the next exponent run, ``-10**-n`` (E = n with an implicit fraction 1), so exactly 2**bits
    distinct levels come out: 2**n - 1 positive, 2**n negative, and 0.
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not (2 if signed else 1) <= bits <= 8:
        raise ValueError(f"dynamic_map takes 1..8 bits unsigned or 2..8 bits signed, not {bits!r}")
    n = bits - 1 if signed else bits
    mags = [torch.zeros(1, dtype=torch.float64)]  # the all-zero code
    for e in range(n):  # e: length of the zero run = decimal exponent
        f_count = 2 ** (n - 1 - e)
        j = torch.arange(1, f_count + 1, dtype=torch.float64)
        mags.append(10.0**-e * (DECADE_LOW + (1 - DECADE_LOW) * j / f_count))
    pos = torch.cat(mags)  # [2**n]: 0 and the 2**n - 1 positive levels
    if not signed:
        return pos.sort().values.to(torch.float32)
    neg = torch.cat([-pos[1:], torch.full((1,), -(10.0**-n), dtype=torch.float64)])  # [2**n], -0 re-read
    return torch.cat([neg, pos]).sort().values.to(torch.float32)


def nearest_code(x: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Index (int64) of the level in sorted `values` nearest to each element of x.

    Found by bucketing x on the midpoints between neighbouring levels. A value exactly on a midpoint (a tie)
    goes to the even index of the two. Values outside [values[0], values[-1]] go to the end levels.
    NaN is not allowed (bucketize would silently send it to the last level).
    """
    values = values.to(device=x.device, dtype=x.dtype)
    mids = (values[1:] + values[:-1]) / 2  # [L-1]
    idx = torch.bucketize(x, mids)  # mids[idx-1] < x <= mids[idx]; a tie x == mids[idx] picks the lower idx
    tie = x == mids[idx.clamp(max=mids.numel() - 1)]
    return torch.where(tie & (idx % 2 == 1), idx + 1, idx)


@dataclass(frozen=True, eq=False)
class CodeTable:
    """A sorted codebook plus a lookup table that codes float32 values in a few passes: the fast path of
    nearest_code, with the same results (the tests compare the two).

    A key is the top KEY_BITS bits of a float32 (sign, exponent, 7 mantissa bits): a run of values no wider
    than 2**-7 of their magnitude. Per key the table holds `low`, the nearest code at the run's low end, and
    `mid`, the one midpoint between levels inside the run (+inf if none); a value's code is then
    low + (x > mid), ties to the even code. When some run holds two midpoints (levels closer than about 1% of
    their magnitude) the table is not built and `encode` falls back to nearest_code.
    """

    values: torch.Tensor  # [L] float32, sorted
    low: torch.Tensor | None  # [2**KEY_BITS] uint8
    mid: torch.Tensor | None  # [2**KEY_BITS] float32

    @classmethod
    def build(cls, values: torch.Tensor) -> CodeTable:
        values = values.detach().to(torch.float32).cpu().contiguous()
        if values.numel() > CODES_PER_BYTE:
            raise ValueError(f"a codebook of {values.numel()} levels does not fit uint8 codes (at most 256)")
        keys = torch.arange(2**KEY_BITS, dtype=torch.int64) - KEY_OFFSET  # [K], signed like the float bits
        first = (keys << KEY_SHIFT).to(torch.int32).view(torch.float32)  # [K] run ends (swapped if negative)
        last = ((keys << KEY_SHIFT) + (2**KEY_SHIFT - 1)).to(torch.int32).view(torch.float32)  # [K]
        ends = torch.stack([first, last]).nan_to_num(nan=math.inf)  # [2, K]; NaN runs never meet finite data
        ends = torch.where(ends.isinf(), math.inf * torch.sign(keys.float() + 0.5), ends)  # keep the sign
        code_lo, code_hi = nearest_code(ends.amin(0), values), nearest_code(ends.amax(0), values)  # [K]
        if (code_hi - code_lo).max() > 1:
            return cls(values, None, None)
        mids = torch.cat([(values[1:] + values[:-1]) / 2, torch.full((1,), math.inf)])  # [L], +inf pad
        mid = torch.where(code_hi > code_lo, mids[code_lo], math.inf)  # [K]
        # a tie x == mid goes up when the lower code is odd: compare against the float just below mid then
        tie_up = (code_hi > code_lo) & (code_lo % 2 == 1)
        mid = torch.where(tie_up, torch.nextafter(mid, torch.tensor(-math.inf)), mid)
        return cls(values, code_lo.to(torch.uint8), mid)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 index of the nearest level to each element of the finite float32 tensor x."""
        if self.low is None or x.dtype != torch.float32:
            return nearest_code(x, self.values).to(torch.uint8)
        flat = x.reshape(-1)  # [n]
        key = (flat.view(torch.int32) >> KEY_SHIFT).add_(KEY_OFFSET)  # [n], in [0, 2**KEY_BITS)
        codes = self.low.to(x.device).index_select(0, key)  # [n] uint8, nearest code at the run's low end
        codes.add_(flat > self.mid.to(x.device).index_select(0, key))  # +1 past the run's midpoint
        return codes.view(x.shape)


def blockwise_quantize(
    x: torch.Tensor, values: torch.Tensor | CodeTable, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block-wise absmax quantization of the flattened x onto a codebook (8-bit optimizers, section 2.1).

    Returns (codes uint8 [numel], absmax float32 [ceil(numel / block_size)]). Each block of block_size
    consecutive elements of x.flatten() is divided by its absolute maximum (an all-zero block by 1) and
    coded by its nearest level; the last block may be short (as if padded with zeros, which never raise its
    absmax). `values` is the sorted codebook (coded by nearest_code, the reference) or its CodeTable (the
    same codes, several times faster).
    """
    _check_block_size(block_size)
    table = values if isinstance(values, CodeTable) else None
    levels = table.values if table is not None else values
    if levels.numel() > CODES_PER_BYTE:
        raise ValueError(f"a codebook of {levels.numel()} levels does not fit uint8 codes (at most 256)")
    flat = x.detach().reshape(-1).to(torch.float32)  # [numel]
    head, tail = _split_blocks(flat, block_size)  # [n_full, block_size], [numel % block_size]
    absmax = head.abs().amax(dim=1)  # [n_full]; NaN propagates into its block's absmax
    if tail.numel():
        absmax = torch.cat([absmax, tail.abs().amax(dim=0, keepdim=True)])  # [n_blocks]
    if not torch.isfinite(absmax).all():
        bad = (~torch.isfinite(absmax)).nonzero().flatten().tolist()
        raise ValueError(
            f"cannot quantize a tensor holding NaN or Inf (in blocks {bad[:8]} of {absmax.numel()}); "
            "check the values (e.g. gradients) for overflow before quantizing"
        )
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))  # [n_blocks]
    u = torch.empty_like(flat)  # [numel], x / absmax of its block, in [-1, 1]
    u_head, u_tail = _split_blocks(u, block_size)
    torch.div(head, scale[: head.shape[0], None], out=u_head)  # [n_full, block_size]
    if tail.numel():
        torch.div(tail, scale[head.shape[0] :], out=u_tail)  # [numel % block_size]
    codes = table.encode(u) if table is not None else nearest_code(u, levels).to(torch.uint8)
    return codes, absmax  # [numel], [n_blocks]


def blockwise_dequantize(
    codes: torch.Tensor,
    absmax: torch.Tensor,
    values: torch.Tensor | CodeTable,
    shape: torch.Size | tuple[int, ...],
    block_size: int,
) -> torch.Tensor:
    """Inverse of blockwise_quantize: float32 tensor of `shape` with ``values[code] * absmax[block]``.

    block_size is required: it cannot be recovered from the number of scales (10 values in 2 blocks may
    have been split 5 + 5 or 6 + 4).
    """
    _check_block_size(block_size)
    levels = values.values if isinstance(values, CodeTable) else values
    numel = math.prod(shape)
    n_blocks = math.ceil(numel / block_size)
    if codes.numel() != numel or absmax.numel() != n_blocks:
        raise ValueError(
            f"{codes.numel()} codes and {absmax.numel()} scales do not fit shape {tuple(shape)} in blocks of "
            f"{block_size} (expected {numel} codes and {n_blocks} scales)"
        )
    levels = levels.to(device=codes.device, dtype=torch.float32)
    out = levels.index_select(0, codes.reshape(-1).to(torch.int32))  # [numel], the levels in [-1, 1]
    head, tail = _split_blocks(out, block_size)  # views: [n_full, block_size], [numel % block_size]
    absmax = absmax.to(torch.float32)
    head.mul_(absmax[: head.shape[0], None])
    if tail.numel():
        tail.mul_(absmax[head.shape[0] :])
    return out.view(shape)  # [*shape]


def _split_blocks(flat: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of a 1-D tensor: its full blocks [n_full, block_size] and the short last block [rest]."""
    full = flat.numel() // block_size * block_size
    return flat[:full].view(-1, block_size), flat[full:]


def _check_block_size(block_size: object) -> None:
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive integer, not {block_size!r}")
