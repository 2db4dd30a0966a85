"""Units of reconstruction: single layers (AdaRound) or blocks (BRECQ, QDrop), cut out of the captured graph.

Li et al., "BRECQ: Pushing the Limit of Post-Training Quantization by Block Reconstruction" (ICLR 2021),
reconstruct the output of a *block* -- a residual block of a ResNet, an inverted residual block of a MobileNet,
a transformer layer -- rather than of a layer or of the whole network (section 3.3). lowbit finds blocks from
the module tree the capture recorded (`nn_module_stack`): a block is the shallowest module that holds at most
`max_layers` quantized layers (fashion-cnn: `layer1`, `layer2`; EfficientNet-Lite0: `_blocks.3`; MiniLM:
`encoder.encoder.layer.0`). A layer directly under a larger module is a block of its own.

A `Block` holds the graph nodes it computes, in graph order: its modules' ops, its layers' weight quantizers,
the activation quantizers on its layers' inputs (reached through pass-through ops) and on its ops' outputs.
`inputs` are the values it reads from outside (the *unquantized* values: its own quantizers quantize them),
`outputs` the values of its ops read outside it. `subgraph` turns it into a GraphModule that shares the
model's modules and weights, so a reconstruction can swap quantizers in it without touching the model.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import fx

from lowbit.graph.placement import PASS_THROUGH
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.graph.quantizers import ActQuantizer

MAX_LAYERS = 8  # a transformer layer: Q, K, V, two matmuls, output, FFN up and down


@dataclass
class Block:
    name: str
    layers: tuple[str, ...]  # quantized layers in graph order
    nodes: list[fx.Node]  # graph order
    inputs: list[fx.Node]
    outputs: list[fx.Node]


def fqn(node: fx.Node) -> str:
    """Qualified name of the innermost module that produced `node` ("" when none was recorded)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def inside(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def block_prefixes(layer_fqns: list[str], max_layers: int = MAX_LAYERS) -> list[str]:
    """Per layer, in order, the shallowest enclosing module with at most `max_layers` layers (deduplicated)."""

    def ancestors(name: str) -> list[str]:
        parts = name.split(".")
        return [".".join(parts[: i + 1]) for i in range(len(parts))]

    count = Counter(a for f in layer_fqns for a in ancestors(f))
    chosen: list[str] = []
    for f in layer_fqns:
        if not any(inside(f, c) for c in chosen):
            chosen.append(next((a for a in ancestors(f) if count[a] <= max_layers), f))
    return chosen


def partition(qmodel: QuantizedModel, unit: str = "block", max_layers: int = MAX_LAYERS) -> list[Block]:
    """The model's reconstruction units in graph order: one per quantized layer (`unit="layer"`) or blocks."""
    gm = qmodel.graph_module
    by_name = {n.name: n for n in gm.graph.nodes}
    layers = [i for i in qmodel.quantized_layers() if i.node in by_name]
    if unit == "layer":
        groups = [(i.name, {by_name[i.node]}) for i in layers]
    elif unit == "block":
        prefixes = block_prefixes([fqn(by_name[i.node]) for i in layers], max_layers)
        calls = [n for n in gm.graph.nodes if n.op == "call_function"]
        groups = [(p, {n for n in calls if inside(fqn(n), p)}) for p in prefixes]
    else:
        raise ValueError(f"reconstruction unit must be 'layer' or 'block', not {unit!r}")
    layer_of = {i.node: i.name for i in layers}
    blocks = [_block(gm, name, core, layer_of) for name, core in groups]
    return [b for b in blocks if b.layers]


def _block(gm: fx.GraphModule, name: str, core: set[fx.Node], layer_of: dict[str, str]) -> Block:
    members, ends = set(core), set(core)
    for n in core:
        if n.name in layer_of:
            members.update(_layer_feeds(gm, n))
    for n in gm.graph.nodes:  # quantizers on the outputs of the block's ops (fully quantized models)
        if _is_act_quantizer(gm, n) and n.args[0] in core:
            members.add(n)
            ends.add(n)
    _close_over_constants(members)
    nodes = [n for n in gm.graph.nodes if n in members]
    inputs = list(dict.fromkeys(a for n in nodes for a in n.all_input_nodes if a not in members))
    outputs = [n for n in nodes if n in ends and any(u not in members for u in n.users)]
    layers = tuple(layer_of[n.name] for n in nodes if n.name in layer_of)
    return Block(name, layers, nodes, inputs, outputs)


def _layer_feeds(gm: fx.GraphModule, layer: fx.Node) -> list[fx.Node]:
    """The layer's weight (and bias) quantizer and, for each data input, the pass-through ops back to its act
    quantizer."""
    feeds = [a for a in layer.args[1:3] if isinstance(a, fx.Node) and a.op == "call_module"]
    n_data = 2 if layer.target in (torch.ops.aten.matmul.default, torch.ops.aten.bmm.default) else 1
    for a in layer.args[:n_data]:
        chain = []
        while isinstance(a, fx.Node) and a.op == "call_function" and a.target in PASS_THROUGH:
            chain.append(a)
            a = a.args[0]
        if isinstance(a, fx.Node) and _is_act_quantizer(gm, a):
            feeds += chain + [a]
    return feeds


def _is_act_quantizer(gm: fx.GraphModule, n: fx.Node) -> bool:
    return n.op == "call_module" and isinstance(gm.get_submodule(str(n.target)), ActQuantizer)


def _close_over_constants(members: set[fx.Node]) -> None:
    """Pull in the get_attr nodes the block reads (weights are constants, not inputs)."""
    for n in list(members):
        members.update(a for a in n.all_input_nodes if a.op == "get_attr")


def subgraph(gm: fx.GraphModule, block: Block) -> fx.GraphModule:
    """`block` as a GraphModule of its own: placeholders for `inputs`, a tuple of `outputs`. Shares gm's
    modules and tensors; replace a quantizer with `setattr(sub, name, module)` to change it in `sub` only."""
    g = fx.Graph()
    env = {n: g.placeholder(f"in_{i}") for i, n in enumerate(block.inputs)}
    for n in block.nodes:
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(tuple(env[o] for o in block.outputs))
    return fx.GraphModule(gm, g)


__all__ = ["Block", "MAX_LAYERS", "block_prefixes", "fqn", "inside", "partition", "subgraph"]
