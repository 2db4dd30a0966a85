"""Step through a captured graph node by node, pausing where a pass needs values.

Layer-by-layer passes (bias correction, AdaRound, BRECQ, QDrop) need, for layer after layer (or block after
block), the values the quantized model computes *after* the earlier layers were changed. Re-running the model
from its input for every layer costs one forward pass per layer. A `GraphRunner` instead keeps the live values
of one batch and resumes where it paused: one sweep over the graph serves every layer, in graph order. Values
are freed after their last use, as `torch.fx.Interpreter` does, so memory is that of one forward pass.

Weights are re-read on every call (`get_attr` and weight quantizers are refreshed), so a pass that rewrites a
weight quantizer's cached weight sees the new weight downstream. A pass that changes something whose value the
runner already computed (a node of the rewritten layer itself) calls `invalidates(nodes)` and restarts the
runner if it says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import fx
from torch.utils._pytree import tree_leaves

from lowbit.graph.quantizers import WeightQuantizer


class StaleValue(RuntimeError):
    """A value asked for was computed and freed before: restart the runner."""


def is_param(gm: fx.GraphModule, node: fx.Node) -> bool:
    """get_attr nodes and modules that read only them (weight and bias quantizers): constants of the graph,
    re-read on every call."""
    if node.op == "get_attr":
        return True
    if node.op != "call_module" or not node.all_input_nodes:
        return False
    module = gm.get_submodule(str(node.target))
    return isinstance(module, WeightQuantizer) or all(a.op == "get_attr" for a in node.all_input_nodes)


class GraphRunner:
    """Runs `gm` on one batch node by node; `run_until(nodes)` returns their values, computing no further."""

    def __init__(self, gm: fx.GraphModule, batch: tuple[torch.Tensor, ...]) -> None:
        self.gm, self.batch = gm, batch
        self.nodes = [n for n in gm.graph.nodes if n.op != "output"]
        self.index = {n: i for i, n in enumerate(self.nodes)}
        self.params = [n for n in self.nodes if is_param(gm, n)]
        self.last_use: dict[fx.Node, int] = {}
        for i, n in enumerate(self.nodes):
            for a in n.all_input_nodes:
                self.last_use[a] = i
        for n in gm.graph.output_node().all_input_nodes:
            self.last_use[n] = len(self.nodes)  # graph outputs are never freed
        self.restart()

    def restart(self) -> None:
        self._interp = fx.Interpreter(self.gm, garbage_collect_values=False)
        self._interp.args_iter = iter(tree_leaves(list(self.batch)))
        self.env: dict[fx.Node, Any] = {}
        self._interp.env = self.env
        self.pos = 0

    @property
    def rows(self) -> int:
        return len(self.batch[0])

    def run_until(self, wanted: Iterable[fx.Node]) -> dict[fx.Node, Any]:
        pending = list(dict.fromkeys(wanted))
        for n in self.params:
            self.env[n] = self._interp.run_node(n)
        found = {}
        while True:
            for w in [w for w in pending if w in self.env]:
                found[w] = self.env[w]
                pending.remove(w)
            if not pending:
                return found
            stale = [w for w in pending if self.index[w] < self.pos]
            if stale:
                raise StaleValue(f"{stale[0].name} was computed and freed before it was asked for")
            n = self.nodes[self.pos]
            self.pos += 1
            if n not in self.env:
                self.env[n] = self._interp.run_node(n)
                for a in n.all_input_nodes:
                    if self.last_use.get(a) == self.pos - 1 and a not in self.params:
                        self.env.pop(a, None)

    def set_value(self, node: fx.Node, value: Any) -> None:
        """Replace a computed value (a pass corrected it); downstream nodes not yet run will read it."""
        self.env[node] = value

    def invalidates(self, changed: Iterable[fx.Node]) -> bool:
        """True when a node downstream of `changed` (or in it) was already computed: its value is stale."""
        seen, todo = set(), list(changed)
        while todo:
            n = todo.pop()
            if n in seen or n.op == "output":
                continue
            seen.add(n)
            if n not in self.params and self.index[n] < self.pos:
                return True
            todo.extend(n.users)
        return False


def runners(gm: fx.GraphModule, batches: list[tuple[torch.Tensor, ...]]) -> list[GraphRunner]:
    return [GraphRunner(gm, b) for b in batches]


def first_rows(batches, max_rows: int) -> list[tuple[torch.Tensor, ...]]:
    """The calibration batches cut to their first `max_rows` rows in all."""
    out, n = [], 0
    for b in batches:
        if n >= max_rows:
            break
        take = min(len(b[0]), max_rows - n)
        out.append(tuple(t[:take] for t in b))
        n += take
    return out


__all__ = ["GraphRunner", "StaleValue", "first_rows", "is_param", "runners"]
