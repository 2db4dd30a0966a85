"""Pack 1, 2, 4 (and 8) bit codes into bytes. Element i of a byte group sits in bits [i*b, (i+1)*b):
the first element in the lowest bits (little-endian within the byte)."""

from __future__ import annotations

import torch

PACK_BITS = (1, 2, 4, 8)


def _check(bits: int) -> None:
    if bits not in PACK_BITS:
        raise ValueError(f"packing supports {PACK_BITS} bits per value, not {bits}; store wider codes as int8/int16")


def pack(codes: torch.Tensor, bits: int, signed: bool = False) -> torch.Tensor:
    """Flatten `codes` and pack them into a uint8 tensor of ceil(numel * bits / 8) bytes.
    Signed codes are offset by 2^(bits-1) first (two's complement range [-2^(b-1), 2^(b-1) - 1])."""
    _check(bits)
    v = codes.reshape(-1).to(torch.int32)
    if signed:
        v = v + 2 ** (bits - 1)
    if ((v < 0) | (v >= 2**bits)).any():
        raise ValueError(f"codes out of range for {bits}-bit {'signed' if signed else 'unsigned'} packing")
    per_byte = 8 // bits
    pad = (-v.numel()) % per_byte
    v = torch.nn.functional.pad(v, (0, pad)).reshape(-1, per_byte)  # (num_bytes, per_byte)
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits  # (per_byte,)
    return (v << shifts).sum(dim=1).to(torch.uint8)


def unpack(packed: torch.Tensor, bits: int, numel: int, signed: bool = False) -> torch.Tensor:
    """Inverse of `pack`: the first `numel` codes as int32 (flat)."""
    _check(bits)
    per_byte = 8 // bits
    if packed.numel() * per_byte < numel:
        capacity = packed.numel() * per_byte
        raise ValueError(f"{packed.numel()} bytes hold at most {capacity} {bits}-bit values, not {numel}")
    shifts = torch.arange(per_byte, dtype=torch.int32) * bits  # (per_byte,)
    v = (packed.to(torch.int32).reshape(-1, 1) >> shifts) & (2**bits - 1)  # (num_bytes, per_byte)
    v = v.reshape(-1)[:numel]
    return v - 2 ** (bits - 1) if signed else v
