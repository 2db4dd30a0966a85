"""Fold eval-mode BatchNorm into the preceding convolution or linear layer on the captured ATen graph.

    w' = w * gamma / sqrt(var + eps)   (per output channel)
    b' = (b - mean) * gamma / sqrt(var + eps) + beta

The folded layer's node keeps BatchNorm's own assumption about its output, N(beta, gamma^2) per channel, as
`lowbit.graph.bn_stats.BNStats` in its meta (the analytic bias correction reads it).
"""

from __future__ import annotations

import torch
from torch import fx

from lowbit.graph.bn_stats import BNStats, set_bn_stats
from lowbit.graph.nodes import attr_path, get_attr_tensor, set_attr_tensor

aten = torch.ops.aten
FOLDABLE = {aten.conv2d.default, aten.conv1d.default, aten.linear.default}


def fold_bn(gm: fx.GraphModule) -> list[str]:
    """Fold every BatchNorm whose input is a conv/linear used only by it. Returns the folded BN node names."""
    folded = []
    for bn in list(gm.graph.nodes):
        if bn.op != "call_function" or bn.target is not aten.batch_norm.default:
            continue
        conv = bn.args[0]
        if not (isinstance(conv, fx.Node) and conv.target in FOLDABLE and len(conv.users) == 1):
            continue
        if bn.args[5]:  # training=True: statistics come from the batch, nothing to fold
            continue
        if not _fold_pair(gm, conv, bn):
            continue
        bn.replace_all_uses_with(conv)
        gm.graph.erase_node(bn)
        folded.append(bn.name)
    if folded:
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.recompile()
    return folded


def _fold_pair(gm: fx.GraphModule, conv: fx.Node, bn: fx.Node) -> bool:
    w_node = conv.args[1]
    b_node = conv.args[2] if len(conv.args) > 2 else None
    gamma_n, beta_n, mean_n, var_n = bn.args[1:5]
    eps = bn.args[7]
    if not all(isinstance(n, fx.Node) and n.op == "get_attr" for n in (w_node, mean_n, var_n)):
        return False
    w = get_attr_tensor(gm, w_node)
    mean, var = get_attr_tensor(gm, mean_n), get_attr_tensor(gm, var_n)
    gamma = get_attr_tensor(gm, gamma_n) if gamma_n is not None else torch.ones_like(mean)
    beta = get_attr_tensor(gm, beta_n) if beta_n is not None else torch.zeros_like(mean)
    b = get_attr_tensor(gm, b_node) if isinstance(b_node, fx.Node) else torch.zeros_like(mean)
    set_bn_stats(conv, BNStats.from_bn(gamma, beta))
    factor = gamma / torch.sqrt(var + eps)  # (C_out,)
    shape = (-1,) + (1,) * (w.dim() - 1)  # broadcast over the weight's non-output axes
    set_attr_tensor(gm, attr_path(w_node), (w * factor.reshape(shape)).detach())
    new_b = ((b - mean) * factor + beta).detach()
    if isinstance(b_node, fx.Node):
        set_attr_tensor(gm, attr_path(b_node), new_b)
    else:
        name = attr_path(w_node).rsplit(".", 1)[0] + ".folded_bias"
        set_attr_tensor(gm, name, new_b)
        with gm.graph.inserting_before(conv):
            b_new = gm.graph.get_attr(name)
        args = list(conv.args) + [None] * (3 - len(conv.args))
        args[2] = b_new
        conv.args = tuple(args)
    return True
