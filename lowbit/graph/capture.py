"""Graph capture with torch.export.

Why torch.export and not torch.fx.symbolic_trace: export traces through Hugging Face models (data-dependent
Python, masks, caches) that symbolic tracing cannot, gives one ATen-level vocabulary for every model
(aten.linear, aten.conv2d, aten.matmul, ...), keeps the source module of every node (nn_module_stack) for
naming and rules, and is the same representation that PT2E lowering to torch.compile's int8 kernels uses.
`ExportedProgram.module()` gives an ordinary fx.GraphModule that we rewrite in place.
"""

from __future__ import annotations

import copy
import logging
import re

import torch
from torch import fx
from torch.export import Dim

log = logging.getLogger(__name__)


class CaptureError(RuntimeError):
    """The model could not be captured; the message names the op and source line and what to do."""


def capture(model: torch.nn.Module, example_inputs: tuple, dynamic: bool = True) -> fx.GraphModule:
    """Export `model` (a deep copy: the user's model is never modified) on `example_inputs`, with every
    dimension of every tensor input left dynamic when possible, and return the fx.GraphModule."""
    model = copy.deepcopy(model).eval()
    example_inputs = tuple(example_inputs)
    shapes = tuple({i: Dim.AUTO for i in range(t.dim())} if isinstance(t, torch.Tensor) else None
                   for t in example_inputs) if dynamic else None
    try:
        with torch.no_grad():
            ep = torch.export.export(model, example_inputs, dynamic_shapes=shapes, strict=False)
    except Exception as exc:  # export raises many types; we re-raise one with guidance
        raise CaptureError(_explain(exc, model)) from exc
    gm = ep.module()
    decompose_sdpa(gm)
    return gm


def _explain(exc: Exception, model: torch.nn.Module) -> str:
    text = str(exc)
    where = re.findall(r'File "([^"]+)", line (\d+)', text)
    user = [f"{f}:{n}" for f, n in where if "site-packages/torch" not in f]
    op = re.search(r"(aten\.[\w.]+|torch\.[\w.]+|Unsupported[^\n]*)", text)
    children = [n for n, _ in model.named_children()]
    return (
        f"could not capture {type(model).__name__} with torch.export"
        f"{': op ' + op.group(1) if op else ''}"
        f"{' at ' + user[-1] if user else ''}.\n"
        f"First line of the error: {text.strip().splitlines()[0] if text.strip() else type(exc).__name__}\n"
        f"Quantize the traceable parts instead: lowbit.quantize(model, data, config, submodules=[...]) "
        f"with names among its children {children[:8]}."
    )


def decompose_sdpa(gm: fx.GraphModule) -> int:
    """Rewrite aten.scaled_dot_product_attention as matmul(softmax(matmul(q, k^T) * scale + mask), v) so that
    attention's two matmuls are visible to the quantizer. Masking and softmax stay one float function.
    Returns how many were rewritten."""
    aten = torch.ops.aten
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten.scaled_dot_product_attention.default:
            continue
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
        a = dict(zip(names, node.args, strict=False)) | dict(node.kwargs)
        q, k, v = a["query"], a["key"], a["value"]
        g = gm.graph
        with g.inserting_before(node):
            if a.get("enable_gqa", False):
                k = g.call_function(_expand_kv, (q, k))
                v = g.call_function(_expand_kv, (q, v))
            kt = g.call_function(aten.transpose.int, (k, -2, -1))
            scores = g.call_function(aten.matmul.default, (q, kt))
            probs = g.call_function(
                _scaled_masked_softmax, (scores, q, a.get("attn_mask"), a.get("is_causal", False), a.get("scale"))
            )
            out = g.call_function(aten.matmul.default, (probs, v))
        for new in (kt, scores, probs, out):
            new.meta["nn_module_stack"] = dict(node.meta.get("nn_module_stack", {}))
        node.replace_all_uses_with(out)
        g.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _expand_kv(q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
    """Grouped-query attention: repeat key/value heads to match the query heads."""
    return kv.repeat_interleave(q.shape[-3] // kv.shape[-3], dim=-3)


def _scaled_masked_softmax(scores, q, attn_mask=None, is_causal=False, scale=None):
    """softmax(scores * scale + mask) as scaled_dot_product_attention defines it (dropout is off in eval)."""
    scores = scores * (scale if scale is not None else q.shape[-1] ** -0.5)
    if is_causal:
        L, S = scores.shape[-2], scores.shape[-1]
        causal = torch.ones(L, S, dtype=torch.bool, device=scores.device).tril(S - L)
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return torch.softmax(scores, dim=-1)
