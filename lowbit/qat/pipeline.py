"""convert(prepared): a trained QAT model as the pipeline's QuantizedModel, the object a PTQ run returns.

Steps: `convert_eager` folds each BatchNorm with its running statistics into integer weight codes and QParams
(see convert.py); a float copy of the network gets each layer's *dequantized* folded weight and bias; the
pipeline captures it (`lowbit.graph.capture`) and places one weight quantizer and one input quantizer per QAT
layer (`place_quantizers`, a QuantConfig with one LayerRule per layer holding the learned qtypes); each
WeightQuantizer gets `set_qparams(w, learned QParams)` and each ActQuantizer its learned QParams, with no
calibration pass. Re-quantizing a dequantized weight with its own QParams returns the same codes, so the
QuantizedModel computes the QAT model's eval forward (float32 rounding aside: the bias is added by the conv).

Layer names are the pipeline's (module FQNs from torch.export's nn_module_stack); a QAT layer name is the
same FQN, since prepare wraps the layers in place. Two QAT layers reading one tensor (a residual block's conv
and its projection shortcut) may have learned separate input ranges; the pipeline's shared input quantizer is
then split into one per layer.

Not expressible, and refused with a clear error: XNOR-Net (an input threshold subtracted per channel and an
output scale K computed from the input); use `convert_eager` and `torch.save(converted.state_dict())`.
Table qtypes (TTQ's {-W_n, 0, W_p}, k-means centroids) are carried as `TableQType` QParams: the torch
forward is exact; an exporter has to know that qtype.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import fx, nn

from lowbit.config import LayerRule, QuantConfig, QuantSpec
from lowbit.core.primitives import dequantize
from lowbit.core.qparams import QParams
from lowbit.graph.capture import capture
from lowbit.graph.nodes import module_name
from lowbit.graph.placement import _find_layers, place_quantizers  # _find_layers: the pipeline's own naming
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.graph.quantizers import ActQuantizer
from lowbit.qat.convert import ConvertedModel, convert_eager
from lowbit.qat.prepare import set_submodule
from lowbit.qat.quantized import QuantizedConv2d, QuantizedLayer

log = logging.getLogger(__name__)
GLOB_SPECIAL = "*?["


def convert(model: nn.Module, example_inputs: tuple | None = None) -> QuantizedModel:
    """The `prepare`d and trained `model` as a QuantizedModel (BatchNorm folded, learned QParams fixed).
    `example_inputs` (a tuple of tensors) defaults to the first rows of the first batch the model saw."""
    eager = convert_eager(model)
    example = example_inputs if example_inputs is not None else getattr(model, "lowbit_qat_example", None)
    if example is None:
        raise ValueError(
            "convert needs example inputs to capture the graph: run at least one batch through the prepared "
            "model, or pass example_inputs=(x,)"
        )
    learned = _learned(eager)
    gm = capture(_float_model(eager.model), tuple(example))
    names = {name: module_name(_node(gm, info.node))[0] for name, (info, _) in _find_layers(gm).items()}
    missing = sorted(set(learned) - set(names.values()))
    if missing:
        raise ValueError(
            f"QAT layers {missing} are not in the captured graph (its layers: {sorted(names.values())}); "
            "convert supports models whose quantized layers are called as modules"
        )
    config = _config(names, learned)
    placement = place_quantizers(gm, config, quantize_bias=False)  # the trained model's float bias
    qmodel = QuantizedModel(gm, config, placement, [bn for _, bn in eager.info.bn_pairs])
    for name, fqn in names.items():
        if fqn in learned:
            _set_layer(qmodel, name, learned[fqn])
    qmodel.calibration_seconds = 0.0
    qmodel.lowbit_qat_info = eager.info
    log.info("converted %d QAT layers into a QuantizedModel", len(learned))
    return qmodel


def _learned(eager: ConvertedModel) -> dict[str, dict]:
    """{layer: {"weight": QParams, "input": QParams | None}}, refusing what the pipeline cannot express."""
    xnor = [
        n
        for n, m in eager.model.named_modules()
        if isinstance(m, QuantizedLayer) and (m.dynamic_scale or (m.has_input and m.input_offset.numel()))
    ]
    if xnor:
        methods = sorted({eager.info.layers.get(n, "?") for n in xnor})
        raise ValueError(
            f"method(s) {methods} (layers {xnor}) quantize inputs around a learned threshold and scale the "
            "output by K computed from the input, which the pipeline's quantizers do not express; use "
            "lowbit.qat.convert_eager(model) and torch.save(converted.state_dict()) instead"
        )
    return {n: {"weight": q["weight"], "input": q["input"]} for n, q in eager.lowbit_qparams().items()}


def _float_model(model: nn.Module) -> nn.Module:
    """A copy with each QuantizedLayer replaced by a plain Conv2d/Linear holding its dequantized weight."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if not isinstance(m, QuantizedLayer):
            continue
        w = dequantize(m.weight_codes, m.weight_qparams())
        if isinstance(m, QuantizedConv2d):
            layer = nn.Conv2d(
                m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups
            )
        else:
            layer = nn.Linear(m.in_features, m.out_features)
        layer.weight, layer.bias = nn.Parameter(w, False), nn.Parameter(m.bias.clone(), False)
        set_submodule(model, name, layer)
    return model.eval()


def _node(gm: fx.GraphModule, name: str) -> fx.Node:
    return next(n for n in gm.graph.nodes if n.name == name)


def _escape(name: str) -> str:
    """An fnmatch pattern matching exactly `name`."""
    return "".join(f"[{c}]" if c in GLOB_SPECIAL else c for c in name)


def _spec(qp: QParams) -> QuantSpec:
    return QuantSpec(qp.qtype, qp.granularity, qp.symmetric, estimator="minmax")


def _config(names: dict[str, str], learned: dict[str, dict]) -> QuantConfig:
    """No default specs; one rule per pipeline layer: the learned qtypes, or float for non-QAT layers."""
    rules = []
    for name, fqn in names.items():
        if fqn not in learned:
            rules.append(LayerRule(_escape(name), keep_float=True, reason="not quantized by QAT"))
            continue
        q = learned[fqn]
        act = _spec(q["input"]) if q["input"] is not None else None
        rules.append(LayerRule(_escape(name), weight=_spec(q["weight"]), activation=act, reason="QAT"))
    return QuantConfig(weight=None, activation=None, rules=tuple(rules), fold_bn=False)


def _set_layer(qmodel: QuantizedModel, name: str, learned: dict) -> None:
    info = qmodel.layers[name]
    gm = qmodel.graph_module
    w = qmodel.weight_of(info)
    wq = gm.get_submodule(info.weight_quantizer)
    wq.set_qparams(w, learned["weight"])
    if not torch.equal(wq.w_hat, w.detach()):
        log.warning("layer %s: re-quantizing its dequantized weight moved some values", name)
    if learned["input"] is None:
        return
    if not info.input_quantizers:
        raise ValueError(f"layer {name} has a learned input range but no input edge the pipeline quantizes")
    qname = info.input_quantizers[0]
    aq = gm.get_submodule(qname)
    if aq.qparams is not None and not _same(aq.qparams, learned["input"]):
        qname = _split_input(qmodel, name, qname)
        aq = gm.get_submodule(qname)
    aq.qparams = learned["input"]
    aq.spec = _spec(learned["input"])


def _same(a: QParams, b: QParams) -> bool:
    return (
        a.qtype == b.qtype
        and a.granularity == b.granularity
        and torch.equal(a.scale, b.scale)
        and torch.equal(a.zero_point, b.zero_point)
    )


def _split_input(qmodel: QuantizedModel, name: str, shared: str) -> str:
    """Give layer `name` its own input quantizer instead of `shared` (read by another layer too)."""
    gm = qmodel.graph_module
    info = qmodel.layers[name]
    layer = _node(gm, info.node)
    q_node = layer.args[0]
    if not (isinstance(q_node, fx.Node) and q_node.op == "call_module" and q_node.target == shared):
        raise ValueError(
            f"layer {name} shares its input quantizer {shared} through a view with another layer whose "
            "learned input range differs; use lowbit.qat.convert_eager for this model"
        )
    old = gm.get_submodule(shared)
    new = ActQuantizer(old.spec, consumers=(name,))
    old.consumers = tuple(c for c in old.consumers if c != name)
    qname, i = f"lowbit_{name.replace('.', '_')}_in0", 1
    while hasattr(gm, qname):
        qname, i = f"lowbit_{name.replace('.', '_')}_in0_{i}", i + 1
    gm.add_module(qname, new)
    with gm.graph.inserting_before(layer):
        node = gm.graph.call_module(qname, (q_node.args[0],))
    layer.replace_input_with(q_node, node)
    gm.graph.lint()
    gm.recompile()
    info.input_quantizers = (qname,)
    return qname


__all__ = ["convert"]
