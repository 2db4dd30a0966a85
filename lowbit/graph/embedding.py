"""Weight-only quantization of embedding tables (`QuantConfig.embedding`).

`aten.embedding(table, ids)` gathers rows of a [V, D] table. With `QuantConfig.embedding` set, the table gets a
WeightQuantizer (one scale per row, `PerChannel(0)`, by default; per-group specs work too), so the gather reads
the dequantized table and nothing else changes: no activation quantizer, the gathered rows stay float.

A table that a quantized layer also reads (an embedding tied to the LM head) is quantized once: the gather reads
that layer's WeightQuantizer, so both read the same codes under the layer's spec, and a checkpoint or an ONNX file
holds one integer table. `QuantConfig.embedding` then only decides that the gather reads the quantized table.
"""

from __future__ import annotations

import torch
from torch import fx

from lowbit.config import QuantConfig
from lowbit.graph.nodes import get_attr_tensor, module_name
from lowbit.graph.placement import LayerInfo, _add_module, _fit_group
from lowbit.graph.quantizers import WeightQuantizer

EMBEDDING = torch.ops.aten.embedding.default


def find_embeddings(gm: fx.GraphModule) -> dict[str, tuple[LayerInfo, fx.Node]]:
    """{name: (LayerInfo, embedding node)}, named after the module that calls the gather."""
    found: dict[str, tuple[LayerInfo, fx.Node]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not EMBEDDING:
            continue
        fqn, cls = module_name(node)
        name, i = fqn, 1
        while name in found:
            name, i = f"{fqn}.embedding_{i}", i + 1
        found[name] = (LayerInfo(name, "embedding", cls, node.name), node)
    return found


def quantize_embeddings(gm: fx.GraphModule, config: QuantConfig) -> dict[str, LayerInfo]:
    """Put a weight quantizer on every embedding table the config asks for; returns their LayerInfos."""
    if config.embedding is None:
        return {}
    found = find_embeddings(gm)
    for info, node in found.values():
        spec, why = config.for_embedding(info.name, info.module_type)
        table = node.args[0]
        if not why and not (isinstance(table, fx.Node) and table.op == "get_attr"):
            why = "the table is not a constant of the model"
        if why:
            info.kept_float = why
            continue
        shape = tuple(table.meta["val"].shape) if "val" in table.meta else None
        wq = _tied_quantizer(gm, table)
        if wq is not None:
            layer = gm.get_submodule(str(wq.target)).layer
            info.note = f"tied to {layer}: reads that layer's quantized table (its spec)"
        else:
            spec = _fit_group(spec, shape, info) if shape is not None else spec
            qname = _add_module(gm, f"{info.name}.wq", WeightQuantizer(spec, info.name))
            with gm.graph.inserting_after(table):
                wq = gm.graph.call_module(qname, (table,))
        node.replace_input_with(table, wq)
        info.weight_quantizer, info.weight_shape = str(wq.target), shape
    return {name: info for name, (info, _) in found.items()}


def _tied_quantizer(gm: fx.GraphModule, table: fx.Node) -> fx.Node | None:
    """The weight quantizer another layer already put on `table`'s tensor (read through any get_attr), if any."""
    tensor = get_attr_tensor(gm, table)
    for node in gm.graph.nodes:
        if node.op != "get_attr" or get_attr_tensor(gm, node) is not tensor:
            continue
        for user in node.users:
            if user.op == "call_module" and isinstance(gm.get_submodule(str(user.target)), WeightQuantizer):
                return user
    return None
