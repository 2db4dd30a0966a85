"""LLM.int8(): mixed-precision decomposition of a linear layer around activation outlier features.

Dettmers, Lewis, Belkada, Zettlemoyer, "LLM.int8(): 8-bit Matrix Multiplication for Transformers at Scale"
(NeurIPS 2022, arXiv:2208.07339). In each call, the input feature columns O holding any value with
|x| >= `threshold` (6.0 in the paper) are multiplied in float with the matching columns of W; the rest R go
through int8 with per-token (vector-wise) activation scales computed over R only and the layer's per-output-
channel int8 weight:
    Y = X_O W_O^T + Q_tok(X_R) Q_ch(W)_R^T.
The simulation computes exactly that, as one matmul of X~ = [X_O | Q_tok(X_R)] with W~ = [W_O | Q_ch(W)_R].

The pass "llm_int8" (stage "quantized", a dynamic mode: the outlier set is found per call) replaces every
matching quantized linear layer's op by an `Int8Decomposition` module that reads the float input (bypassing
the layer's own activation quantizer), the float weight and the weight quantizer's int8 weight. Pair it with
per-channel int8 weights (preset "w8a8-llm-int8").
"""

from __future__ import annotations

import fnmatch
import logging

import torch
from torch import fx

from lowbit.config import QuantSpec
from lowbit.core.granularity import PerToken
from lowbit.core.primitives import dynamic_qparams, fake_quantize
from lowbit.core.qtype import get_qtype
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.graph.quantizers import ActQuantizer
from lowbit.ptq import register_pass

log = logging.getLogger(__name__)
DEFAULT_THRESHOLD = 6.0
INT8_PER_TOKEN = QuantSpec(get_qtype("int8"), PerToken())


class Int8Decomposition(torch.nn.Module):
    """forward(x, w, w_hat, bias) = linear(X~, W~, bias) with the outlier columns of X and W kept float."""

    def __init__(self, threshold: float, spec: QuantSpec, layer: str) -> None:
        super().__init__()
        self.threshold, self.spec, self.layer = threshold, spec, layer
        self.enabled = True
        self.columns, self.outlier_columns = 0, 0  # running totals over calls, for the summary

    def outliers(self, x: torch.Tensor) -> torch.Tensor:
        """(in_features,) bool: columns with any |x| >= threshold in this call."""
        return (x.abs() >= self.threshold).reshape(-1, x.shape[-1]).any(0)

    def forward(self, x: torch.Tensor, w: torch.Tensor, w_hat: torch.Tensor, bias: torch.Tensor | None = None):
        if not self.enabled:
            return torch.nn.functional.linear(x, w, bias)
        o = self.outliers(x)
        x_r = x.masked_fill(o, 0.0)
        x_q = fake_quantize(x_r, dynamic_qparams(x_r, self.spec.qtype, self.spec.granularity, self.spec.symmetric))
        self.columns, self.outlier_columns = self.columns + o.numel(), self.outlier_columns + int(o.sum())
        return torch.nn.functional.linear(torch.where(o, x, x_q), torch.where(o, w, w_hat), bias)

    def extra_repr(self) -> str:
        return f"{self.layer}: threshold {self.threshold}, int8 per token / per channel, outliers float"


def _act_source(gm: fx.GraphModule, node: fx.Node) -> fx.Node:
    """The float value behind a layer input: the input of its activation quantizer, if it has one."""
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), ActQuantizer):
        return node.args[0]
    return node


@register_pass("llm_int8", "quantized", paper="Dettmers et al. 2022, arXiv:2208.07339")
def llm_int8(qmodel: QuantizedModel, batches, *, progress=None, threshold: float = DEFAULT_THRESHOLD,
             pattern: str = "*") -> list[str]:
    """Replace matching quantized linear layers (name glob `pattern`) by the LLM.int8() decomposition.
    Returns the layers replaced."""
    gm = qmodel.graph_module
    nodes = {n.name: n for n in gm.graph.nodes}
    act = qmodel.config.activation
    spec = act if act is not None and isinstance(act.granularity, PerToken) else INT8_PER_TOKEN
    done = []
    for info in qmodel.quantized_layers():
        if info.kind != "linear" or not info.weight_quantizer or not fnmatch.fnmatchcase(info.name, pattern):
            continue
        node, name = nodes[info.node], f"lowbit_{info.name.replace('.', '_')}_int8"
        gm.add_module(name, Int8Decomposition(threshold, spec, info.name))
        wq_node = node.args[1]
        args = (_act_source(gm, node.args[0]), wq_node.args[0], wq_node, *node.args[2:3])
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(name, args)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        info.node, info.input_quantizers = new.name, (name,)
        info.note = "; ".join(filter(None, [info.note, f"LLM.int8 decomposition, threshold {threshold}"]))
        done.append(info.name)
    _drop_unused_quantizers(gm)
    log.info("llm_int8: %d linear layers decomposed at threshold %g", len(done), threshold)
    return done


def _drop_unused_quantizers(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and not node.users and isinstance(gm.get_submodule(node.target), ActQuantizer):
            target = node.target
            gm.graph.erase_node(node)
            gm.delete_submodule(target)
    gm.graph.lint()
    gm.recompile()


def outlier_fraction(qmodel: QuantizedModel) -> float:
    """Fraction of input columns kept float, over every decomposed layer's calls so far."""
    mods = [m for m in qmodel.graph_module.children() if isinstance(m, Int8Decomposition)]
    return sum(m.outlier_columns for m in mods) / max(sum(m.columns for m in mods), 1)


__all__ = ["Int8Decomposition", "llm_int8", "outlier_fraction"]
