"""A gather from a per-group int4/int8 table as onnxruntime's GatherBlockQuantized (com.microsoft contrib op).

`lowbit::gather_nbits(B, scales, zero_points, ids, bits, block)` returns the dequantized rows `ids` of a table held
in MatMulNBits' layout (`lowbit.export.nbits.pack_weight`): B uint8 [V, n_blocks, block * bits / 8] of unsigned
codes, element 2i in the low nibble for 4 bits; scales float [V, n_blocks, 1]; zero points uint8 [V, n_blocks, 1]
(one unsigned zero point per byte). The output is [*ids.shape, n_blocks, block] with
y = (u - zp) * scale; the caller flattens the last two axes. GatherBlockQuantized runs it on the packed table
(gather_axis 0, quantize_axis 2), so an LM head's MatMulNBits and the tied embedding's gather share one B.
"""

from __future__ import annotations

import torch
from torch import Tensor

LOW_NIBBLE = 0xF


def unpack_rows(b: Tensor, bits: int) -> Tensor:
    """uint8 [..., n_bytes] -> unsigned codes [..., n_bytes * 8 / bits] (low nibble first for 4 bits)."""
    if bits == 8:
        return b
    return torch.stack((b & LOW_NIBBLE, b >> 4), dim=-1).flatten(-2)


@torch.library.custom_op("lowbit::gather_nbits", mutates_args=())
def gather_nbits(b: Tensor, scales: Tensor, zero_points: Tensor, ids: Tensor, bits: int, block: int) -> Tensor:
    """Reference: gather the packed rows, unpack them, dequantize per block."""
    u = unpack_rows(b[ids], bits).to(torch.float32)
    return (u - zero_points[ids].to(torch.float32)) * scales[ids]


@gather_nbits.register_fake
def _(b, scales, zero_points, ids, bits, block):
    return scales.new_empty((*ids.shape, b.shape[1], block))


def onnx_translation():
    """{op: onnxscript function} for torch.onnx.export(custom_translation_table=...)."""
    from lowbit.export.contrib import contrib_op

    gather = contrib_op(
        "GatherBlockQuantized",
        inputs=[("data", "T1"), ("indices", "Tind"), ("scales", "T2"), ("zero_points", "T1")],
        outputs=[("output", "T2")],
        types={"T1": ["tensor(uint8)"], "T2": ["tensor(float)"], "Tind": ["tensor(int32)", "tensor(int64)"]},
        int_attributes=("bits", "block_size", "gather_axis", "quantize_axis"),
    )

    def translate(b, scales, zero_points, ids, bits: int, block: int):
        return gather(b, ids, scales, zero_points, bits=bits, block_size=block, gather_axis=0, quantize_axis=2)

    return {torch.ops.lowbit.gather_nbits.default: translate}
