"""Place quantizers on the captured graph according to a QuantConfig.

Every layer (conv, linear, matmul -- attention's two matmuls included) gets a weight quantizer on its weight and
activation quantizers on its tensor inputs. A tensor edge is quantized once, however many layers read it
(Q, K and V projections share one quantizer on their common input), as a QDQ runtime does. With
`fully_quantized`, the outputs of add, concat (one shared range for all its inputs), pooling, activation
functions and layer norm are quantized too, so activations can stay int8 between ops.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field, replace

import torch
from torch import fx

from lowbit.config import Mode, QuantConfig, QuantSpec
from lowbit.core.granularity import GROUPED
from lowbit.graph.bias import BiasQuantizer
from lowbit.graph.nodes import module_name
from lowbit.graph.quantizers import ActQuantizer, WeightQuantizer

aten = torch.ops.aten
LAYER_OPS = {
    aten.linear.default: "linear",
    aten.conv2d.default: "conv2d",
    aten.conv1d.default: "conv1d",
    aten.matmul.default: "matmul",
    aten.bmm.default: "matmul",
}
OUTPUT_OPS = {
    aten.add.Tensor: "add", aten.cat.default: "concat", aten.adaptive_avg_pool2d.default: "pool",
    aten.avg_pool2d.default: "pool", aten.max_pool2d.default: "pool", aten.mean.dim: "pool",
    aten.relu.default: "activation", aten.hardtanh.default: "activation", aten.gelu.default: "activation",
    aten.silu.default: "activation", aten.sigmoid.default: "activation", aten.tanh.default: "activation",
    aten.hardswish.default: "activation", aten.layer_norm.default: "layer_norm", aten.relu6.default: "activation",
}
CLAMPS = {aten.relu.default, aten.hardtanh.default, aten.relu6.default}  # F.relu6 stays aten.relu6 in the capture
# Ops that move values without changing them: a quantized value stays on its grid through them.
PASS_THROUGH = {
    aten.view.default, aten.reshape.default, aten.transpose.int, aten.permute.default, aten.pad.default,
    aten.flatten.using_ints, aten.unsqueeze.default, aten.squeeze.dim, aten.expand.default, aten.clone.default,
    aten.contiguous.default, aten.slice.Tensor, aten.select.int, aten.dropout.default, aten.max_pool2d.default,
}
MIN_POW2_GROUP = 16
BOOKKEEPING = {"getitem", "sym_size", "_assert", "to", "arange", "ones", "zeros", "full", "new_ones", "ge", "lt",
               "__and__", "expand", "slice", "alias", "detach", "scalar_tensor", "lift_fresh_copy", "empty"}


@dataclass
class LayerInfo:
    name: str
    kind: str
    module_type: str | None
    node: str
    weight_quantizer: str | None = None
    input_quantizers: tuple[str, ...] = ()
    kept_float: str = ""
    weight_shape: tuple[int, ...] | None = None
    note: str = ""


@dataclass
class Placement:
    layers: dict[str, LayerInfo]
    output_quantizers: dict[str, str]  # quantizer name -> the op it follows
    float_ops: dict[str, str]  # op -> why it stays float
    embeddings: dict[str, LayerInfo] = field(default_factory=dict)  # quantized tables (lowbit/graph/embedding.py)


def place_quantizers(gm: fx.GraphModule, config: QuantConfig, quantize_bias: bool = True) -> Placement:
    """`quantize_bias`: round biases to the int32 grid s_x * s_w as integer kernels do (graph/bias.py); QAT's
    converted models keep the float bias they were trained with."""
    from lowbit.graph.embedding import find_embeddings, quantize_embeddings

    layers = _find_layers(gm)
    _check_rules(config, {**(find_embeddings(gm) if config.embedding is not None else {}), **layers})
    quantized_edges: dict[fx.Node, fx.Node] = {}
    outputs: dict[str, str] = {}
    act_dynamic = config.mode is Mode.DYNAMIC
    if config.fully_quantized and config.activation is not None and config.mode is Mode.STATIC:
        outputs = _quantize_outputs(gm, config.activation, quantized_edges)
    for info, node in layers.values():
        wspec, aspec, why = config.for_layer(info.name, info.module_type)
        if why or (wspec is None and aspec is None):
            info.kept_float = why or "no weight or activation spec"
            continue
        _quantize_weight(gm, info, node, wspec)
        if aspec is not None:
            _quantize_inputs(gm, info, node, aspec, act_dynamic, quantized_edges)
            if quantize_bias and not act_dynamic:
                _quantize_bias(gm, info, node)
            if config.fully_quantized and config.mode is Mode.STATIC:
                _quantize_layer_output(gm, info, node, aspec, quantized_edges, outputs)
    embeddings = quantize_embeddings(gm, config)  # after the layers: a tied table reuses their quantizer
    gm.graph.lint()
    gm.recompile()
    return Placement({k: v[0] for k, v in layers.items()}, outputs, _float_ops(gm, config), embeddings)


def _find_layers(gm: fx.GraphModule) -> dict[str, tuple[LayerInfo, fx.Node]]:
    layers: dict[str, tuple[LayerInfo, fx.Node]] = {}
    per_module: Counter[str] = Counter()
    for node in gm.graph.nodes:
        kind = LAYER_OPS.get(node.target) if node.op == "call_function" else None
        if kind is None:
            continue
        fqn, cls = module_name(node)
        name = fqn
        if kind == "matmul" or fqn in layers:
            name = f"{fqn}.matmul_{per_module[fqn]}" if kind == "matmul" else f"{fqn}.{kind}_{per_module[fqn]}"
            per_module[fqn] += 1
            cls = "matmul" if kind == "matmul" else cls
        layers[name] = (LayerInfo(name, kind, cls, node.name), node)
    return layers


def _check_rules(config: QuantConfig, layers: dict) -> None:
    names = list(layers)
    for rule in config.rules:
        if not rule.optional and not any(rule.matches(n, info.module_type) for n, (info, _) in layers.items()):
            what = rule.pattern if rule.pattern is not None else f"module type {rule.module_type}"
            near = difflib.get_close_matches(rule.pattern or "", names, n=3) if rule.pattern else []
            types = sorted({i.module_type for i, _ in layers.values() if i.module_type})
            raise ValueError(
                f"rule {what!r} matches no layer; "
                + (f"did you mean {near}? " if near else f"layer names look like {names[:3]}; ")
                + f"module types here: {types}"
            )


def _add_module(gm: fx.GraphModule, prefix: str, module: torch.nn.Module) -> str:
    base = "lowbit_" + prefix.replace(".", "_")
    name, i = base, 1
    while hasattr(gm, name):
        name, i = f"{base}_{i}", i + 1
    gm.add_module(name, module)
    return name


def _quantize_weight(gm, info: LayerInfo, node: fx.Node, spec: QuantSpec | None) -> None:
    w = node.args[1]
    if spec is None or info.kind == "matmul" or not (isinstance(w, fx.Node) and w.op == "get_attr"):
        return
    shape = tuple(w.meta["val"].shape) if "val" in w.meta else None
    if shape is not None:
        spec = _fit_group(spec, shape, info)
    qname = _add_module(gm, f"{info.name}.wq", WeightQuantizer(spec, info.name))
    with gm.graph.inserting_after(w):
        wq = gm.graph.call_module(qname, (w,))
    node.replace_input_with(w, wq)
    info.weight_quantizer = qname
    info.weight_shape = shape


def _fit_group(spec: QuantSpec, shape: tuple[int, ...], info: LayerInfo) -> QuantSpec:
    """A per-group spec whose group does not divide this weight's dimension gets the largest power-of-two divisor
    of at least 16 below it (runtimes' blocked kernels, such as onnxruntime's MatMulNBits, take those: SmolLM2's 576
    input features under groups of 128 get 64), else the largest divisor; noted on the layer."""
    g = spec.granularity
    if not isinstance(g, GROUPED):
        return spec
    dim = shape[g.axis]
    if dim % g.size == 0:
        return spec
    divisors = [d for d in range(1, g.size + 1) if dim % d == 0]
    pow2 = [d for d in divisors if d >= MIN_POW2_GROUP and d & (d - 1) == 0]
    size = max(pow2 or divisors)
    info.note = f"group {size} instead of {g.size}: {dim} is not a multiple of {g.size}"
    return replace(spec, granularity=replace(g, size=size))


def _source(node: fx.Node) -> fx.Node:
    """Follow pass-through ops back to the node whose value they carry."""
    while node.op == "call_function" and node.target in PASS_THROUGH and isinstance(node.args[0], fx.Node):
        node = node.args[0]
    return node


def _is_quantized(node: fx.Node, gm) -> bool:
    src = _source(node)
    return src.op == "call_module" and isinstance(gm.get_submodule(src.target), ActQuantizer)


def _quantize_inputs(gm, info, node, spec, dynamic, quantized_edges) -> None:
    n_inputs = 2 if info.kind == "matmul" else 1
    names = []
    for x in node.args[:n_inputs]:
        if not isinstance(x, fx.Node) or x.op == "get_attr":
            continue
        if _is_quantized(x, gm):
            names.append(str(_source(x).target))
            continue
        if x not in quantized_edges:
            q = ActQuantizer(spec, dynamic=dynamic, consumers=(info.name,))
            qname = _add_module(gm, f"{info.name}.in{len(names)}", q)
            with gm.graph.inserting_after(x):
                quantized_edges[x] = gm.graph.call_module(qname, (x,))
        else:
            q = gm.get_submodule(quantized_edges[x].target)
            q.consumers = q.consumers + (info.name,)
        node.replace_input_with(x, quantized_edges[x])
        names.append(str(quantized_edges[x].target))
    info.input_quantizers = tuple(names)


def _quantize_outputs(gm, spec: QuantSpec, quantized_edges) -> dict[str, str]:
    out: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        kind = OUTPUT_OPS.get(node.target) if node.op == "call_function" else None
        if kind is None or not _is_float_tensor(node):
            continue
        if kind == "add" and not all(isinstance(a, fx.Node) for a in node.args[:2]):
            continue
        if kind not in ("activation", "concat") and node.users and all(_clips(u) for u in node.users):
            continue  # add -> ReLU: quantized once, after the ReLU (one QLinearAdd, no requantization)
        fqn, _ = module_name(node)
        if kind == "concat":
            qname = _add_module(gm, f"{fqn}.cat", ActQuantizer(spec, consumers=(node.name,)))
            ins = []
            for x in node.args[0]:
                with gm.graph.inserting_before(node):
                    ins.append(gm.graph.call_module(qname, (x,)))  # one module: one shared range
            node.args = (ins,) + tuple(node.args[1:])
            out[qname] = f"{node.name} (inputs, shared range)"
            continue
        qname = _add_module(gm, f"{fqn}.{kind}", ActQuantizer(spec, consumers=(node.name,)))
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(qname, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q)
        quantized_edges[node] = q
        out[qname] = node.name
    return out


def _quantize_bias(gm, info: LayerInfo, node: fx.Node) -> None:
    """Conv/linear with a quantized input and weight: the bias on the int32 grid s_x * s_w (lowbit/graph/bias.py)."""
    b = node.args[2] if len(node.args) > 2 else None
    if not (info.weight_quantizer and info.input_quantizers and isinstance(b, fx.Node) and b.op == "get_attr"):
        return
    act = gm.get_submodule(info.input_quantizers[0])
    bq = BiasQuantizer(info.name, act, gm.get_submodule(info.weight_quantizer))
    qname = _add_module(gm, f"{info.name}.bq", bq)
    with gm.graph.inserting_before(node):
        q = gm.graph.call_module(qname, (b,))
    node.replace_input_with(b, q)


def _quantize_layer_output(gm, info: LayerInfo, node: fx.Node, spec: QuantSpec, quantized_edges, out) -> None:
    """Fully quantized: a layer's output gets a quantizer unless every reader already quantizes it (an output
    quantizer, a quantized activation function) or it is the model's output, so that a QDQ runtime finds
    DQ -> layer -> Q and runs the layer as one integer kernel (QLinearConv, QLinearMatMul)."""
    readers = list(node.users)
    if all(u.op == "output" or _quantizes(u, gm) for u in readers):
        return
    qname = _add_module(gm, f"{info.name}.out", ActQuantizer(spec, consumers=tuple(u.name for u in readers)))
    with gm.graph.inserting_after(node):
        q = gm.graph.call_module(qname, (node,))
    node.replace_all_uses_with(q, delete_user_cb=lambda u, q=q: u is not q and u.op != "output")
    quantized_edges[node] = q
    out[qname] = node.name


def _quantizes(user: fx.Node, gm) -> bool:
    if user.op == "call_module":
        return isinstance(gm.get_submodule(user.target), ActQuantizer)
    return user.op == "call_function" and OUTPUT_OPS.get(user.target) == "activation" and any(
        _quantizes(u, gm) for u in user.users)


def _clips(user: fx.Node) -> bool:
    """A ReLU/ReLU6-style clamp whose own output quantizer covers its input: onnxruntime folds Relu/Clip into the
    QuantizeLinear after it, so DQ -> Add -> Relu -> Q runs as one QLinearAdd; a quantizer between the op and the
    clamp would leave a DequantizeLinear -> QuantizeLinear requantization instead."""
    return user.op == "call_function" and user.target in CLAMPS


def _is_float_tensor(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.is_floating_point()


def _float_ops(gm: fx.GraphModule, config: QuantConfig) -> dict[str, str]:
    """Compute ops that stay float, with the reason (listed in the report)."""
    counts: Counter[str] = Counter()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target in LAYER_OPS or node.target in PASS_THROUGH:
            continue
        short = getattr(node.target, "__name__", str(node.target)).split(".")[0]
        if short in BOOKKEEPING or (config.fully_quantized and node.target in OUTPUT_OPS):
            continue
        if config.embedding is not None and node.target is aten.embedding.default:
            continue  # weight-only: the gather reads the quantized table
        counts[short] += 1
    why = "no integer kernel in lowbit's op set" if config.fully_quantized else "not a quantized layer type"
    return {op: f"{n}x, {why}" for op, n in sorted(counts.items())}
