"""The QDQ form of a QuantizedModel: every quantizer module replaced by PyTorch's decomposed quantize/dequantize ops.

    gm = to_qdq(qmodel)        # an fx.GraphModule; gm(*inputs) equals the simulation up to bias rounding

This is the one deployable representation both runtimes consume:
- activations: `quantized_decomposed.quantize_per_tensor -> dequantize_per_tensor` with the calibrated scale and
  zero point (QuantizeLinear/DequantizeLinear in ONNX);
- weights: integer codes stored as an int8 constant (not float) followed by `dequantize_per_channel` or
  `dequantize_per_tensor` (an int8 initializer plus DequantizeLinear in ONNX); the codes are those of the
  quantizer's cached weight, so learned rounding (AdaRound, GPTQ) is exported as simulated;
- zero padding next to an activation quantizer sits where each runtime fuses it (`_place_pads`, exact either way:
  code zero_point is 0.0, and 0.0 quantizes to zero_point). onnxruntime folds DQ -> Pad -> Conv into QLinearConv's
  own padding, so a pad before a quantizer (the stem's, on the model input) moves after its dequantize; a separate
  uint8 Pad there measured slower (EfficientNet-Lite0, batch 32: 182 against 160 ms). Inductor lowers a conv to
  int8 only when it reads a dequantize, so for PT2E (`pad_codes`) pads apply to the integer codes, with the zero
  point as value (EfficientNet's depthwise convs: 33 -> 49 of 49 convs int8);
- quantized embedding tables: integer codes gathered, then only the gathered rows dequantized (`export/gather.py`);
- biases of quantized conv/linear layers whose input and weight are quantized: int32 codes at scale
  s_x * s_w[c] (what an integer kernel adds to its int32 accumulator), dequantized the same way. onnxruntime fuses
  DQ -> Conv/Gemm -> Q into QLinearConv/QGemm only when every input, the bias included, comes from a DequantizeLinear.
This is also the representation PyTorch's PT2E flow produces, which torch.compile's x86 inductor backend lowers to
oneDNN int8 kernels (`lowbit.export.pt2e`).

Per-group weights (w4a16) are written as int8 codes dequantized with plain arithmetic (the ONNX writer turns the
matmuls they feed into onnxruntime's MatMulNBits). Dynamic uint8 per-tensor activations become
`lowbit::dynamic_quantize` (DynamicQuantizeLinear in ONNX, `export/dynamic.py`). Quantizers the runtimes cannot
express (codebooks, FP8, dynamic per-token activations) raise ExportError naming them.
"""

from __future__ import annotations

import copy

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  (registers torch.ops.quantized_decomposed)
from torch import fx

from lowbit.core.granularity import GROUPED, PerChannel, PerTensor
from lowbit.core.primitives import quantize
from lowbit.core.qparams import QParams
from lowbit.core.qtype import IntQType
from lowbit.graph.bias import INT32_MAX, BiasQuantizer, fit_int32_biases, quantize_bias
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.graph.quantizers import ActQuantizer, WeightQuantizer

qd = torch.ops.quantized_decomposed


class ExportError(ValueError):
    """The QuantizedModel holds something the export format cannot express; the message says what to change."""


def _storage_dtype(qtype: IntQType) -> torch.dtype:
    return torch.uint8 if not qtype.signed else torch.int8


def _int_qtype(q, what: str) -> IntQType:
    if not isinstance(q.qparams.qtype, IntQType) or q.qparams.qtype.bits > 8:
        raise ExportError(
            f"{what} uses {q.qparams.qtype.name}: QDQ export carries 2- to 8-bit integers only; quantize this "
            "tensor with an int qtype (or keep the layer float with a LayerRule) to export"
        )
    return q.qparams.qtype


def to_qdq(qmodel: QuantizedModel, int_bias: bool = True, nbits: bool = False,
           pad_codes: bool = False) -> fx.GraphModule:
    """A copy of the model's graph with quantizers replaced by decomposed quantize/dequantize ops.
    `int_bias`: biases as int32 codes (onnxruntime's fusion needs them); PT2E keeps them float.
    `pad_codes`: zero padding applied to the integer codes (PT2E) instead of after the dequantize (`_place_pads`).
    `nbits`: weight-only per-group linear layers become `lowbit::matmul_nbits` (MatMulNBits in ONNX)."""
    qmodel.prepare_weights()
    fit_int32_biases(qmodel)  # after QAT or a pass that moved scales since quantize()
    gm = copy.deepcopy(qmodel.graph_module)
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if isinstance(mod, ActQuantizer):
            _replace_act(gm, node, mod)
        elif isinstance(mod, BiasQuantizer):  # int32 bias codes are written by _quantize_biases
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
        elif isinstance(mod, WeightQuantizer):
            from lowbit.export.gather import replace_gathers

            replace_gathers(gm, node, mod, nbits)  # embedding tables (a tied one: before its linear layer)
            if not node.users:
                gm.graph.erase_node(node)
            elif not (nbits and _replace_nbits(gm, node, mod)):
                _replace_weight(gm, node, mod)
    _quantize_biases(gm, qmodel, as_int32=int_bias)
    _place_pads(gm, codes=pad_codes)
    for name, mod in list(gm.named_children()):
        if isinstance(mod, (ActQuantizer, WeightQuantizer, BiasQuantizer)):
            delattr(gm, name)
    gm.graph.eliminate_dead_code()
    _drop_unused_tensors(gm)
    gm.graph.lint()
    gm.recompile()
    return gm


def _drop_unused_tensors(gm: fx.GraphModule) -> None:
    """Delete parameters and buffers no node reads any more (the float weights the int8 codes replaced), so that
    torch.export does not ship them."""
    used = {str(n.target) for n in gm.graph.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name in used:
            continue
        owner, _, attr = name.rpartition(".")
        mod = gm.get_submodule(owner) if owner else gm
        if attr in mod._parameters:
            del mod._parameters[attr]
        elif attr in mod._buffers:
            del mod._buffers[attr]


def _replace_act(gm: fx.GraphModule, node: fx.Node, q: ActQuantizer) -> None:
    x = node.args[0]
    if not q.enabled or q.kept_float:
        node.replace_all_uses_with(x)
        gm.graph.erase_node(node)
        return
    if q.dynamic:
        _replace_dynamic(gm, node, q)
        return
    if q.qparams is None:
        raise ExportError(f"activation quantizer {node.target} has no range: calibrate the model before export")
    qtype = _int_qtype(q, f"activation quantizer {node.target}")
    if not isinstance(q.qparams.granularity, PerTensor):
        raise ExportError(f"activation quantizer {node.target} is {q.qparams.granularity}; export takes per-tensor "
                          "activation ranges")
    scale, zp = float(q.qparams.scale.reshape(-1)[0]), int(q.qparams.zero_point.reshape(-1)[0])
    args = (scale, zp, qtype.qmin, qtype.qmax, _storage_dtype(qtype))
    with gm.graph.inserting_before(node):
        qn = gm.graph.call_function(qd.quantize_per_tensor.default, (x, *args))
        dq = gm.graph.call_function(qd.dequantize_per_tensor.default, (qn, *args))
    dq.meta = {**node.meta, "lowbit_quantizer": str(node.target)}  # which quantizer it replaced (bench/parity.py)
    node.replace_all_uses_with(dq)
    gm.graph.erase_node(node)


PAD = torch.ops.aten.pad.default
PADS = (PAD, torch.nn.functional.pad)  # a capture by torch.export, or by fx.symbolic_trace
QDQ = (qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default)


def _zero_pad(node: fx.Node) -> bool:
    """aten.pad / F.pad with mode 'constant' and value 0 (the default)."""
    if node.op != "call_function" or node.target not in PADS:
        return False
    mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
    value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
    return mode == "constant" and not value


def _place_pads(gm: fx.GraphModule, codes: bool) -> None:
    """Zero padding moved across an adjacent activation quantizer (exact: code zero_point is 0.0, and 0.0 quantizes
    to zero_point). `codes` (PT2E): dequantize(c) -> pad(0) becomes pad(c, zero_point) -> dequantize, and
    pad(0) -> quantize becomes quantize -> pad(zero_point): a conv after the pad then reads a dequantize, which
    inductor's int8 conv pattern needs (EfficientNet-Lite0's 16 padded depthwise convs ran in float without it).
    Otherwise (onnxruntime): pad(0) -> quantize -> dequantize becomes quantize -> dequantize -> pad(0), the
    DQ -> Pad -> Conv that onnxruntime folds into QLinearConv (the model input's pad cost 3.6 ms of 162 at batch 32)."""
    for node in list(gm.graph.nodes):
        if not _zero_pad(node):
            continue
        src, users = node.args[0], list(node.users)
        if codes and isinstance(src, fx.Node) and src.target == QDQ[1]:
            args = src.args[1:]
            with gm.graph.inserting_after(node):
                padded = gm.graph.call_function(PAD, (src.args[0], node.args[1], "constant", float(args[1])))
            with gm.graph.inserting_after(padded):
                dq = gm.graph.call_function(QDQ[1], (padded, *args))
            node.replace_all_uses_with(dq)
            gm.graph.erase_node(node)
        elif len(users) == 1 and users[0].target == QDQ[0] and (codes or all(
                u.target == QDQ[1] for u in users[0].users)):
            q = users[0]
            q.replace_input_with(node, node.args[0])
            after, value = ([q], float(q.args[2])) if codes else (list(q.users), 0.0)
            for at in after:
                with gm.graph.inserting_after(at):
                    padded = gm.graph.call_function(PAD, (at, node.args[1], "constant", value))
                for user in list(at.users):
                    if user is not padded:
                        user.replace_input_with(at, padded)
                if "lowbit_quantizer" in at.meta:  # the simulated quantizer's value is the padded one
                    padded.meta["lowbit_quantizer"] = at.meta.pop("lowbit_quantizer")
            gm.graph.erase_node(node)


def _replace_dynamic(gm: fx.GraphModule, node: fx.Node, q: ActQuantizer) -> None:
    """A dynamic uint8 asymmetric per-tensor quantizer -> `lowbit::dynamic_quantize` (DynamicQuantizeLinear ->
    DequantizeLinear in ONNX, `export/dynamic.py`); any other dynamic quantizer has no ONNX form."""
    qtype = q.spec.qtype
    if not (isinstance(q.spec.granularity, PerTensor) and isinstance(qtype, IntQType) and qtype.bits == 8
            and not qtype.signed and not q.spec.symmetric):
        raise ExportError(
            f"activation quantizer {node.target} is dynamic {qtype.name} {q.spec.granularity}"
            f"{' symmetric' if q.spec.symmetric else ''}: ONNX's DynamicQuantizeLinear takes one uint8 asymmetric "
            "range per tensor; pass the config through lowbit.export.layout.deployable, or use a static preset "
            "(w8a8) or a weight-only one (w4a16, w8a16) to export"
        )
    import lowbit.export.dynamic  # noqa: F401  (registers torch.ops.lowbit.dynamic_quantize)

    with gm.graph.inserting_before(node):
        dq = gm.graph.call_function(torch.ops.lowbit.dynamic_quantize.default, (node.args[0],))
    dq.meta = {**node.meta, "lowbit_quantizer": str(node.target)}
    node.replace_all_uses_with(dq)
    gm.graph.erase_node(node)


def _const(gm: fx.GraphModule, before: fx.Node, prefix: str, value: torch.Tensor) -> fx.Node:
    """A get_attr of a new buffer named `prefix` (numbered if taken), or of the buffer already named `prefix` when
    it holds the same tensor (a tied table's codes, read by its gather and its linear layer, are stored once)."""
    name, i = prefix, 0
    while hasattr(gm, name) and not _same(getattr(gm, name), value):
        i += 1
        name = f"{prefix}_{i}"
    if not hasattr(gm, name):
        gm.register_buffer(name, value)
    with gm.graph.inserting_before(before):
        return gm.graph.get_attr(name)


def _same(a, b: torch.Tensor) -> bool:
    return isinstance(a, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)


def _replace_weight(gm: fx.GraphModule, node: fx.Node, wq: WeightQuantizer) -> None:
    w_node = node.args[0]
    if not wq.enabled:
        node.replace_all_uses_with(w_node)
        gm.graph.erase_node(node)
        return
    w = wq.w_hat  # learned rounding (AdaRound, GPTQ) lives here; on the grid, so these are its codes exactly
    qp = wq.qparams
    qtype = _int_qtype(wq, f"weight of {wq.layer}")
    codes = quantize(w, qp).to(_storage_dtype(qtype))
    base = "lowbit_" + wq.layer.replace(".", "_")
    c = _const(gm, node, base + "_wcodes", codes)
    with gm.graph.inserting_before(node):
        dq = _dequantize_weight(gm, node, c, qp, qtype, w.shape, base)
    dq.meta = {**node.meta, "lowbit_quantizer": str(node.target)}  # which quantizer it replaced (bench/parity.py)
    node.replace_all_uses_with(dq)
    gm.graph.erase_node(node)


def _replace_nbits(gm: fx.GraphModule, node: fx.Node, wq: WeightQuantizer) -> bool:
    """Replace `linear(x, wq(w), b)` with float x and a per-group int4/int8 weight by `lowbit::matmul_nbits`."""
    from lowbit.export.nbits import exportable, matmul_nbits, pack_weight

    users = list(node.users)
    qp = wq.qparams
    if not (wq.enabled and len(users) == 1 and users[0].target is torch.ops.aten.linear.default
            and isinstance(qp.granularity, GROUPED) and isinstance(qp.qtype, IntQType)):
        return False
    lin = users[0]
    x = lin.args[0]
    if isinstance(x, fx.Node) and x.target is qd.dequantize_per_tensor.default:
        return False  # a quantized input: not weight-only
    w = wq.w_hat  # the simulated weight (learned rounding included), on the grid
    if w.dim() != 2 or qp.granularity.axis % 2 != 1 or not exportable(qp.qtype.bits, qp.granularity.size):
        return False
    n, k = w.shape
    b, scales, zps = pack_weight(quantize(w, qp), qp.scale, qp.zero_point, qp.qtype.bits, qp.granularity.size,
                                 qp.qtype.signed)
    base = "lowbit_" + wq.layer.replace(".", "_")
    consts = [_const(gm, lin, base + suffix, t) for suffix, t in (("_nb", b), ("_nbscale", scales), ("_nbzp", zps))]
    bias = lin.args[2] if len(lin.args) > 2 else None
    with gm.graph.inserting_before(lin):
        mm = gm.graph.call_function(matmul_nbits._opoverload, (x, *consts, k, n, qp.qtype.bits,
                                                               qp.granularity.size))
        if bias is not None:
            mm = gm.graph.call_function(torch.ops.aten.add.Tensor, (mm, bias))
    mm.meta = dict(lin.meta)
    lin.replace_all_uses_with(mm)
    gm.graph.erase_node(lin)
    gm.graph.erase_node(node)
    return True


def _dequantize_weight(gm, node, c, qp: QParams, qtype: IntQType, shape, base) -> fx.Node:
    g, dtype = qp.granularity, _storage_dtype(qtype)
    if isinstance(g, PerTensor):
        args = (float(qp.scale.reshape(-1)[0]), int(qp.zero_point.reshape(-1)[0]), qtype.qmin, qtype.qmax, dtype)
        return gm.graph.call_function(qd.dequantize_per_tensor.default, (c, *args))
    if isinstance(g, PerChannel):
        axis = g.axis % len(shape)
        s = _const(gm, node, base + "_wscale", qp.scale.reshape(-1).to(torch.float32))
        z = _const(gm, node, base + "_wzp", qp.zero_point.reshape(-1).to(torch.int64))
        return gm.graph.call_function(qd.dequantize_per_channel.default, (c, s, z, axis, qtype.qmin, qtype.qmax, dtype))
    if isinstance(g, GROUPED) and len(shape) == 2 and g.axis % 2 == 1:
        # (codes - zp) * scale with one scale per (row, group): [N, K] viewed as [N, K/gs, gs]
        n, k = shape
        s = _const(gm, node, base + "_wscale", qp.scale.reshape(n, k // g.size, 1).to(torch.float32))
        z = _const(gm, node, base + "_wzp", qp.zero_point.reshape(n, k // g.size, 1).to(torch.float32))
        view = gm.graph.call_function(torch.ops.aten.view.default, (c, [n, k // g.size, g.size]))
        f = gm.graph.call_function(torch.ops.aten._to_copy.default, (view,), {"dtype": torch.float32})
        sub = gm.graph.call_function(torch.ops.aten.sub.Tensor, (f, z))
        mul = gm.graph.call_function(torch.ops.aten.mul.Tensor, (sub, s))
        return gm.graph.call_function(torch.ops.aten.view.default, (mul, [n, k]))
    raise ExportError(f"weight granularity {g} of a {len(shape)}-d weight has no QDQ form; use PerChannel(0), "
                      "PerTensor() or PerGroup along the input dimension of a linear layer")


def _quantize_biases(gm: fx.GraphModule, qmodel: QuantizedModel, as_int32: bool) -> None:
    """Bias -> int32 codes at s_x * s_w[c] (zero point 0) wherever the simulation rounds it so
    (lowbit/graph/bias.py), so that an integer kernel can add it to its accumulator; `as_int32=False` keeps a
    float bias holding the same rounded values (PT2E's form)."""
    scales = {m.layer: m for m in qmodel.graph_module.children() if isinstance(m, BiasQuantizer)}
    nodes = {n.name: n for n in gm.graph.nodes}
    for info in qmodel.quantized_layers():
        node, bq = nodes.get(info.node), scales.get(info.name)
        if bq is None or node is None or len(node.args) < 3:
            continue
        b = node.args[2]
        owner, _, attr = str(b.target).rpartition(".")
        bias = getattr(gm.get_submodule(owner) if owner else gm, attr).detach()
        s_b = bq.scale(bias.numel())
        if s_b is None:
            continue
        base = "lowbit_" + info.name.replace(".", "_")
        if not as_int32:
            rounded = _const(gm, node, base + "_bias", (quantize_bias(bias, s_b).float() * s_b).reshape(bias.shape))
            node.replace_input_with(b, rounded)
            continue
        c = _const(gm, node, base + "_bcodes", quantize_bias(bias, s_b))
        s = _const(gm, node, base + "_bscale", s_b.contiguous())
        z = _const(gm, node, base + "_bzp", torch.zeros(bias.numel(), dtype=torch.int64))
        with gm.graph.inserting_before(node):
            dq = gm.graph.call_function(qd.dequantize_per_channel.default,
                                        (c, s, z, 0, -INT32_MAX, INT32_MAX, torch.int32))
        node.replace_input_with(b, dq)
