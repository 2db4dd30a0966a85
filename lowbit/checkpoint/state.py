"""The tensors of a QuantizedModel's graph module, by dotted path, and which float weights a checkpoint may drop.

A quantized layer's float weight is dropped when its quantizer is its only reader: the stored integer codes
then define it (on load it is set to their dequantized values). A weight also read elsewhere (a tied embedding
and LM head) or read by a disabled quantizer is stored as is.
"""

from __future__ import annotations

import torch
from torch import fx

from lowbit.graph.quantizers import WeightQuantizer


def graph_tensors(gm: fx.GraphModule) -> dict[str, torch.Tensor]:
    """The tensors the graph reads (get_attr: parameters, buffers, constants), by path. Tensors it no longer
    reads, such as the statistics of a BatchNorm folded into its convolution, are left out."""
    out = {}
    for node in gm.graph.nodes:
        if node.op == "get_attr":
            value = _get(gm, str(node.target))
            if isinstance(value, torch.Tensor):
                out[str(node.target)] = value
    return out


def quantized_weights(gm: fx.GraphModule) -> dict[str, str]:
    """{weight path: weight quantizer name} for the weights whose only reader is one enabled, fixed quantizer."""
    readers: dict[int, set[str]] = {}
    paths: dict[int, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        value = _get(gm, str(node.target))
        if not isinstance(value, torch.Tensor):
            continue
        key = id(value)
        paths.setdefault(key, []).append(str(node.target))
        users = readers.setdefault(key, set())
        for user in node.users:
            wq = gm.get_submodule(str(user.target)) if user.op == "call_module" else None
            usable = isinstance(wq, WeightQuantizer) and wq.enabled and wq.w_hat is not None
            users.add(str(user.target) if usable else f"<float reader {user.name}>")
    return {
        path: next(iter(users))
        for key, users in readers.items()
        if len(users) == 1 and not next(iter(users)).startswith("<")
        for path in paths[key]
    }


def set_tensor(gm: fx.GraphModule, path: str, value: torch.Tensor) -> None:
    """Copy `value` into the tensor at `path` in place (tied parameters stay tied)."""
    with torch.no_grad():
        _get(gm, path).copy_(value)


def _get(gm: fx.GraphModule, path: str):
    owner, _, name = path.rpartition(".")
    return getattr(gm.get_submodule(owner) if owner else gm, name, None)
