"""Weight-only per-group linear layers as onnxruntime's MatMulNBits (com.microsoft contrib op).

A linear layer with a float input and a per-group (block) int4 or int8 weight becomes
`lowbit::matmul_nbits(x, B, scales, zero_points, bias)`: a torch custom op whose reference implementation
unpacks the codes, dequantizes them and calls linear, and whose ONNX translation is one MatMulNBits node that
onnxruntime runs with its blocked low-bit GEMM kernels (weights stay packed in memory).

MatMulNBits layout (onnxruntime contrib op spec): B is uint8 [N, n_blocks, block_size * bits / 8] holding unsigned
codes, element 2i in the low nibble for 4 bits; scales float [N * n_blocks]; zero points uint8 packed the same way
per row ([N * ceil(n_blocks * bits / 8)]); y = x @ ((B - zp) * scale)^T. lowbit's signed codes q with zero point z
become unsigned u = q + 2^(bits-1), zp_u = z + 2^(bits-1), so (u - zp_u) * s = (q - z) * s exactly.
The block size must be a power of two of at least 16.

How onnxruntime computes with the packed weights is MatMulNBits' `accuracy_level` (`COMPUTE` below): "float"
(0, unset) dequantizes each weight block and multiplies in fp32, so the input stays float (W4A16); "int8" (level 4)
lets it quantize each block of the input to int8 on the fly (one symmetric scale per block of K) and use integer
dot products, a dynamic W4A8 that is faster on CPUs with VNNI and moves the outputs a little (SmolLM2-135M:
BENCHMARKS.md, lowbit-w4a8-nbits-ort against lowbit-w4a16-ort).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lowbit.core.packing import pack, unpack

NBITS = (4, 8)
MIN_BLOCK = 16
COMPUTE = {"float": 0, "int8": 4}  # MatMulNBits accuracy_level: 0 = unset (fp32 compute), 4 = int8 inputs per block


def exportable(bits: int, block: int) -> bool:
    return bits in NBITS and block >= MIN_BLOCK and block & (block - 1) == 0


def pack_weight(codes: Tensor, scale: Tensor, zero_point: Tensor, bits: int, block: int, signed: bool):
    """(B, scales, zero_points) in MatMulNBits layout from codes [N, K] and per-block scale/zero point [N * K/block]."""
    n, k = codes.shape
    offset = 2 ** (bits - 1) if signed else 0
    u = (codes.to(torch.int32) + offset).to(torch.uint8).reshape(n, k // block, block)
    per_byte = 8 // bits
    b = pack(u.reshape(n, -1), bits).reshape(n, k // block, block // per_byte)
    zp = (zero_point.reshape(n, k // block).to(torch.int32) + offset).to(torch.uint8)
    zp_packed = torch.stack([pack(row, bits) for row in zp]).reshape(-1) if bits < 8 else zp.reshape(-1)
    return b.contiguous(), scale.reshape(-1).to(torch.float32).contiguous(), zp_packed.contiguous()


@torch.library.custom_op("lowbit::matmul_nbits", mutates_args=())
def matmul_nbits(x: Tensor, b: Tensor, scales: Tensor, zero_points: Tensor, k: int, n: int, bits: int,
                 block: int) -> Tensor:
    """Reference: unpack B and the zero points, dequantize per block, then linear."""
    n_blocks = k // block
    u = unpack(b.reshape(-1), bits, n * n_blocks * block).reshape(n, n_blocks, block).to(torch.float32)
    if bits < 8:
        zp = torch.stack([unpack(row, bits, n_blocks) for row in zero_points.reshape(n, -1)])
    else:
        zp = zero_points.reshape(n, n_blocks)
    w = (u - zp.to(torch.float32)[..., None]) * scales.reshape(n, n_blocks, 1)
    return torch.nn.functional.linear(x, w.reshape(n, k).to(x.dtype))


def int8_input_blocks(x: Tensor, block: int) -> Tensor:
    """What MatMulNBits' int8 compute (accuracy_level 4) multiplies with: each block of `block` input values along
    K quantized to int8 with one symmetric scale, amax / 127, and dequantized (onnxruntime's MLAS quantizes a row
    block by block this way before its integer dot products: `round(x * (127 / amax))`, half to even)."""
    xs = x.float().reshape(*x.shape[:-1], -1, block)
    amax = xs.abs().amax(-1, keepdim=True)
    inverse = torch.where(amax == 0, 0, 127 / torch.where(amax == 0, 1, amax))  # 127 / amax, one rounding (MLAS)
    return (torch.round(xs * inverse) * (amax / 127)).reshape(x.shape).to(x.dtype)


@matmul_nbits.register_fake
def _(x, b, scales, zero_points, k, n, bits, block):
    return x.new_empty((*x.shape[:-1], n))


def onnx_translation(compute: str = "float"):
    """{op: onnxscript function} for torch.onnx.export(custom_translation_table=...); `compute` is the
    MatMulNBits compute type ("float" or "int8", see `COMPUTE`)."""
    from lowbit.export.contrib import contrib_op

    if compute not in COMPUTE:
        raise ValueError(f"MatMulNBits compute {compute!r} is not one of {sorted(COMPUTE)}: 'float' keeps the input "
                         "float (W4A16), 'int8' lets onnxruntime quantize it per block (faster, dynamic W4A8)")
    level = COMPUTE[compute]

    matmul = contrib_op(
        "MatMulNBits",
        inputs=[("A", "T1"), ("B", "T2"), ("scales", "T1"), ("zero_points", "T2")],
        outputs=[("Y", "T1")],
        types={"T1": ["tensor(float)"], "T2": ["tensor(uint8)"]},
        int_attributes=("K", "N", "bits", "block_size", "accuracy_level"),
    )

    def translate(x, b, scales, zero_points, k: int, n: int, bits: int, block: int):
        return matmul(x, b, scales, zero_points, K=k, N=n, bits=bits, block_size=block, accuracy_level=level)

    return {torch.ops.lowbit.matmul_nbits.default: translate}
