"""Binary inference for real: ±1 matrices packed to bits, multiplied by XNOR and popcount on the CPU.

For rows a, b in {-1, +1}^K stored as bits (1 for +1, 0 for -1; BinaryQType's codes),
    a . b = (#agreements) - (#disagreements) = K - 2 popcount(a XOR b)
(Rastegari et al., XNOR-Net, ECCV 2016, section 3.2; the XNOR form counts agreements instead). Bits are packed
in the layout of `lowbit.core.packing.pack` (first element in the lowest bit; numpy's packbits does
it fast), rows padded with zeros to whole 64-bit words:
padding bits agree in both operands, so they add nothing to the popcount. The reference is the float matmul
of the ±1 matrices (`reference_matmul`), against which the kernel is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lowbit.core.packing import pack, unpack

WORD_BITS = 64
BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
CHUNK_ELEMENTS = 1 << 22  # XOR words materialised at once (32 MiB of uint64)


@dataclass(frozen=True)
class PackedBits:
    """Rows of a ±1 matrix as 64-bit words: `words` (rows, ceil(k / 64)) uint64, `k` valid bits per row."""

    words: np.ndarray
    k: int

    @property
    def nbytes(self) -> int:
        return int(self.words.nbytes)


def pack_signs(x: torch.Tensor) -> PackedBits:
    """(M, K) real matrix -> bits of sign(x) with sign(0) = +1 (bit 1 = +1)."""
    if x.dim() != 2:
        raise ValueError(f"pack_signs takes a 2-D matrix (rows, K), got shape {tuple(x.shape)}")
    m, k = x.shape
    bits = np.zeros((m, k + (-k) % WORD_BITS), dtype=bool)  # (M, ceil(K / 64) * 64), zero padding
    bits[:, :k] = (x >= 0).numpy()
    packed = np.packbits(bits, axis=1, bitorder="little")  # (M, ceil(K / 64) * 8): core.packing.pack's layout
    return PackedBits(packed.view("<u8"), k)  # (M, ceil(K / 64)) little-endian words


def pack_signs_reference(x: torch.Tensor) -> np.ndarray:
    """The same bytes through lowbit.core.packing.pack (slow; the test compares the two)."""
    m, k = x.shape
    codes = torch.nn.functional.pad((x >= 0).to(torch.int32), (0, (-k) % WORD_BITS))  # (M, ceil(K/64) * 64)
    return pack(codes, bits=1).numpy().reshape(m, -1)  # (M, ceil(K / 64) * 8) uint8


def unpack_signs(p: PackedBits) -> torch.Tensor:
    """Inverse of pack_signs: the (M, K) matrix of ±1 as float32."""
    m, w = p.words.shape
    codes = unpack(torch.from_numpy(p.words.view(np.uint8).reshape(-1).copy()), 1, m * w * WORD_BITS)
    return codes.reshape(m, -1)[:, : p.k].to(torch.float32) * 2 - 1


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per uint64 word (numpy >= 2 has bitwise_count; else a byte table)."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(words)
    per_byte = BYTE_POPCOUNT[words.view(np.uint8)]  # (..., 8 * words)
    return per_byte.reshape(*words.shape, 8).sum(axis=-1, dtype=np.uint16)


def xnor_popcount_matmul(a: PackedBits, b: PackedBits) -> torch.Tensor:
    """A @ B^T for ±1 matrices A (M, K) and B (N, K) given as bits: int32 (M, N), exact."""
    if a.k != b.k:
        raise ValueError(f"inner dimensions differ: {a.k} and {b.k}")
    m, n, w = a.words.shape[0], b.words.shape[0], a.words.shape[1]
    out = np.empty((m, n), dtype=np.int32)
    rows = max(1, CHUNK_ELEMENTS // max(1, n * w))
    for i in range(0, m, rows):
        xor = np.bitwise_xor(a.words[i : i + rows, None, :], b.words[None, :, :])  # (rows, N, W)
        out[i : i + rows] = a.k - 2 * _popcount(xor).sum(axis=2, dtype=np.int32)
    return torch.from_numpy(out)


def reference_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The float reference: sign(A) @ sign(B)^T in float64 (exact for integer results below 2^53)."""
    sa = torch.where(a >= 0, 1.0, -1.0).to(torch.float64)
    sb = torch.where(b >= 0, 1.0, -1.0).to(torch.float64)
    return sa @ sb.T


def xnor_linear(layer, x: torch.Tensor) -> torch.Tensor:
    """A converted XNOR `QuantizedLinear` evaluated with the popcount kernel: the binary input codes and the
    binary weight codes are packed, multiplied by XNOR/popcount, then scaled by alpha (per output) and K
    (per sample) and biased. Matches `layer(x)` up to float rounding."""
    centered = x - layer.input_offset.reshape(1, -1)
    k = centered.abs().mean(dim=1, keepdim=True)  # (N, 1): XNOR-Net's K for a linear layer
    w_signs = layer.weight_codes.to(torch.float32) * 2 - 1  # codes 1 -> +1, 0 -> -1
    dots = xnor_popcount_matmul(pack_signs(centered), pack_signs(w_signs))  # (N, out) int32
    return dots.to(torch.float32) * layer.weight_scale.reshape(1, -1) * k + layer.bias.reshape(1, -1)
