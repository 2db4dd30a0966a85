"""Walk a captured graph node by node over all calibration batches at once.

GPTQ, AWQ and SmoothQuant need, at one layer, that layer's inputs for every calibration batch, and the layers
after it must see what this layer's (re-scaled or quantized) version computes. Running the graph in lockstep
does both in one pass: every node is evaluated for every batch before the next node, so at any node the
values of all batches are at hand, and a hook may rewrite weights before the node runs (GPTQ) or rescale a
node's outputs after it ran (smoothing folded into that node). Memory is the graph's live values times the
number of batches; fx's last-use bookkeeping frees each value after its last reader.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import fx
from torch.utils._pytree import tree_leaves

Calls = list[tuple[tuple, dict]]  # per batch: (args, kwargs) of one node
Before = Callable[[fx.Node, Calls], Calls | None]  # may return replacement (args, kwargs) per batch
After = Callable[[fx.Node, list], list | None]  # may return replacement values per batch


def walk(gm: fx.GraphModule, batches: Sequence[tuple], before: Before | None = None,
         after: After | None = None, last: fx.Node | None = None) -> list:
    """Evaluate `gm` on every batch, node by node in lockstep; returns the outputs per batch ([] when stopped).

    `before(node, calls)` sees the node's arguments for all batches and may return new ones; `after(node,
    values)` sees its results for all batches and may return new ones. `last`: stop once that node's hooks ran
    (without computing it when there is no `after` hook), so that a language model's vocabulary-sized logits
    for every batch at once are never built when no hook needs them."""
    interps = [fx.Interpreter(gm) for _ in batches]
    for interp, batch in zip(interps, batches, strict=True):
        interp.env = {}
        interp.args_iter = iter(tree_leaves(list(batch)))
    outputs: list = []
    with torch.no_grad():  # not inference_mode: weights written by hooks may later be trained (QAT)
        for node in gm.graph.nodes:
            calls = [interp.fetch_args_kwargs_from_env(node) for interp in interps]
            new_calls = before(node, calls) if before is not None else None
            calls = calls if new_calls is None else new_calls
            if node is last and after is None:
                return []
            values = [_run(interp, node, args, kwargs) for interp, (args, kwargs) in zip(interps, calls,
                                                                                        strict=True)]
            replaced = after(node, values) if after is not None else None
            values = values if replaced is None else replaced
            if node.op == "output":
                outputs = values
            if node is last:
                return []
            for interp, value in zip(interps, values, strict=True):
                interp.env[node] = value
                for dead in interp.user_to_last_uses.get(node, []):
                    del interp.env[dead]
    return outputs


def _run(interp: fx.Interpreter, node: fx.Node, args: tuple, kwargs: dict):
    if node.op == "placeholder":
        return next(interp.args_iter)
    return getattr(interp, node.op)(node.target, args, kwargs)


def flat_inputs(values: Sequence[torch.Tensor]) -> torch.Tensor:
    """(tokens, features) rows of a layer input over all batches: every axis but the last is a token axis."""
    return torch.cat([v.reshape(-1, v.shape[-1]) for v in values])


def subsample(x: torch.Tensor, max_rows: int) -> torch.Tensor:
    """At most `max_rows` rows of `x`, evenly spaced (deterministic)."""
    if x.shape[0] <= max_rows:
        return x
    idx = torch.linspace(0, x.shape[0] - 1, max_rows).round().long()
    return x[idx]
