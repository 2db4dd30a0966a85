"""Quantized embedding tables in the QDQ form: the table stays integer codes and only the gathered rows are
dequantized, so a runtime keeps the table in memory as integers.

- per-row (`PerChannel(0)`), per-tensor, or per-group tables as plain ops: int8 codes [V, D] and float scales
  [V, n_blocks] gathered by the same ids, y = (float(codes[ids]) - zp[ids]) * scale[ids] per block (in ONNX:
  Gather -> Cast -> Mul with a second Gather for the scales; the Sub only with zero points);
- with `nbits`, per-group int4/int8 tables as `lowbit::gather_nbits` (onnxruntime's GatherBlockQuantized) on the
  packed MatMulNBits layout, which a tied LM head's MatMulNBits reads too (one initializer for both).
The codes are those of the quantizer's cached table (`w_hat`), so the result equals the simulation exactly.
"""

from __future__ import annotations

import torch
from torch import fx

from lowbit.core.granularity import GROUPED, PerChannel, PerTensor
from lowbit.core.primitives import quantize
from lowbit.core.qtype import IntQType
from lowbit.export.gather_nbits import gather_nbits
from lowbit.export.nbits import exportable, pack_weight
from lowbit.export.qdq import ExportError, _const, _int_qtype, _storage_dtype
from lowbit.graph.quantizers import WeightQuantizer

aten = torch.ops.aten


def replace_gathers(gm: fx.GraphModule, wq_node: fx.Node, wq: WeightQuantizer, nbits: bool) -> None:
    """Rewrite every `embedding(wq(table), ids)` that reads `wq_node` as a gather of integer codes (a disabled
    quantizer: left as is, the gather reads the float table)."""
    if not wq.enabled:
        return
    for user in list(wq_node.users):
        if not (user.op == "call_function" and user.target is aten.embedding.default):
            continue
        with gm.graph.inserting_before(user):
            out = _gather_packed(gm, user, wq) if nbits and _packable(wq) else _gather_rows(gm, user, wq)
        out.meta = dict(user.meta)
        user.replace_all_uses_with(out)
        gm.graph.erase_node(user)


def _codes(wq: WeightQuantizer) -> torch.Tensor:
    _int_qtype(wq, f"embedding table of {wq.layer}")
    if wq.w_hat.dim() != 2:
        raise ExportError(f"embedding table of {wq.layer} has shape {tuple(wq.w_hat.shape)}; a gather reads 2-d tables")
    return quantize(wq.w_hat, wq.qparams)  # w_hat lies on the grid: its codes exactly


def _blocks_per_row(wq: WeightQuantizer) -> int:
    g, (_, d) = wq.qparams.granularity, wq.w_hat.shape
    if isinstance(g, PerTensor) or (isinstance(g, PerChannel) and g.axis % 2 == 0):
        return 1
    if isinstance(g, GROUPED) and g.axis % 2 == 1:
        return d // g.size
    raise ExportError(f"embedding table of {wq.layer} is quantized {g}; a gather exports per-row (PerChannel(0)), "
                      "per-tensor or per-group (along the row) tables")


def _per_block(t: torch.Tensor, rows: int, blocks: int) -> torch.Tensor:
    return t.reshape(-1, blocks).expand(rows, blocks).to(torch.float32).contiguous()


def _gather_rows(gm: fx.GraphModule, emb: fx.Node, wq: WeightQuantizer) -> fx.Node:
    qp, codes, nb = wq.qparams, _codes(wq), _blocks_per_row(wq)
    (v, d), ids, call = codes.shape, emb.args[1], gm.graph.call_function
    base = "lowbit_" + wq.layer.replace(".", "_")
    table = _const(gm, emb, base + "_wcodes", codes.to(_storage_dtype(qp.qtype)))
    x = call(aten._to_copy.default, (call(aten.embedding.default, (table, ids)),), {"dtype": torch.float32})
    s = call(aten.embedding.default, (_const(gm, emb, base + "_escale", _per_block(qp.scale, v, nb)), ids))
    zp = _per_block(qp.zero_point, v, nb)
    z = call(aten.embedding.default, (_const(gm, emb, base + "_ezp", zp), ids)) if zp.any() else None
    if nb > 1:
        x = call(aten.unflatten.int, (x, -1, [nb, d // nb]))
        s = call(aten.unsqueeze.default, (s, -1))
        z = call(aten.unsqueeze.default, (z, -1)) if z is not None else None
    y = call(aten.mul.Tensor, (call(aten.sub.Tensor, (x, z)) if z is not None else x, s))
    return call(aten.flatten.using_ints, (y, -2, -1)) if nb > 1 else y


def _packable(wq: WeightQuantizer) -> bool:
    qp = wq.qparams
    g = qp.granularity
    return (isinstance(g, GROUPED) and g.axis % 2 == 1 and isinstance(qp.qtype, IntQType) and wq.w_hat.dim() == 2
            and exportable(qp.qtype.bits, g.size))


def _gather_packed(gm: fx.GraphModule, emb: fx.Node, wq: WeightQuantizer) -> fx.Node:
    qp, codes = wq.qparams, _codes(wq)
    bits, block, (v, d) = qp.qtype.bits, qp.granularity.size, codes.shape
    b, _, _ = pack_weight(codes, qp.scale, qp.zero_point, bits, block, qp.qtype.signed)  # MatMulNBits' B
    offset = 2 ** (bits - 1) if qp.qtype.signed else 0
    s = qp.scale.reshape(v, d // block, 1).to(torch.float32).contiguous()
    z = (qp.zero_point.reshape(v, d // block, 1).to(torch.int32) + offset).to(torch.uint8)
    base = "lowbit_" + wq.layer.replace(".", "_")
    consts = [_const(gm, emb, base + suffix, t) for suffix, t in (("_nb", b), ("_gscale", s), ("_gzp", z))]
    y = gm.graph.call_function(gather_nbits._opoverload, (*consts, emb.args[1], bits, block))
    return gm.graph.call_function(aten.flatten.using_ints, (y, -2, -1))
