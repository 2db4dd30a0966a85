"""The expected input of a layer from the BatchNorm statistics of the layer that produces it, without data.

Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization Through Weight Equalization and Bias
Correction" (ICCV 2019), section 4.2 and appendix: when the input x of a layer is clip(z, a, b) of a
pre-activation z ~ N(mu, sigma^2) per channel (ReLU: a = 0, b = inf; ReLU6: a = 0, b = 6), then with
alpha = (a - mu) / sigma and beta = (b - mu) / sigma

    E[x] = a Phi(alpha) + b (1 - Phi(beta)) + mu (Phi(beta) - Phi(alpha)) + sigma (phi(alpha) - phi(beta)).

mu and sigma are the folded BatchNorm's beta and |gamma| (`lowbit.graph.bn_stats`, kept up to date by the float
passes). The producer is found by walking back from the layer's input through its activation quantizer,
channel-preserving ops (pad, dropout, clone) and at most one clipping activation (relu, relu6, hardtanh,
clamp, including the per-channel clamp equalization writes). Anything else (add, concat, pooling, the model's
input) ends the walk: that layer's input has no analytic mean.
"""

from __future__ import annotations

import math

import torch
from torch import fx

from lowbit.graph.bn_stats import bn_stats
from lowbit.graph.nodes import get_attr_tensor
from lowbit.graph.quantizers import ActQuantizer

aten = torch.ops.aten
CHANNEL_PRESERVING = {aten.pad.default, aten.dropout.default, aten.clone.default}  # max-pool shifts the mean
RELU6_MAX = 6.0
HARDTANH_DEFAULT = (-1.0, 1.0)


def _phi(t: torch.Tensor) -> torch.Tensor:
    """Standard normal density."""
    return torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)


def clipped_normal_mean(mu, sigma, a, b) -> torch.Tensor:
    """E[clip(z, a, b)] for z ~ N(mu, sigma^2), elementwise in float64; a may be -inf, b +inf, sigma 0."""
    mu, sigma, a, b = torch.broadcast_tensors(*(torch.as_tensor(t, dtype=torch.float64) for t in (mu, sigma, a, b)))
    spread = sigma > 0
    s = torch.where(spread, sigma, torch.ones_like(sigma))
    alpha, beta = (a - mu) / s, (b - mu) / s
    below = torch.where(torch.isinf(a), torch.zeros_like(a), a * torch.special.ndtr(alpha))
    above = torch.where(torch.isinf(b), torch.zeros_like(b), b * torch.special.ndtr(-beta))
    inside = mu * (torch.special.ndtr(beta) - torch.special.ndtr(alpha)) + s * (_phi(alpha) - _phi(beta))
    return torch.where(spread, below + above + inside, torch.clamp(mu, a, b))


def _scalar(node: fx.Node, i: int, default: float) -> float:
    value = node.args[i] if len(node.args) > i else None
    return default if value is None else float(value)


def clip_bounds(gm: fx.GraphModule, node: fx.Node) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(a, b) of a clipping activation node (scalars or one per channel), None for any other node."""
    inf = math.inf
    if node.op != "call_function":
        return None
    if node.target is aten.relu.default:
        bounds = (0.0, inf)
    elif node.target is aten.relu6.default:
        bounds = (0.0, RELU6_MAX)
    elif node.target is aten.hardtanh.default:
        bounds = (_scalar(node, 1, HARDTANH_DEFAULT[0]), _scalar(node, 2, HARDTANH_DEFAULT[1]))
    elif node.target is aten.clamp.default:
        bounds = (_scalar(node, 1, -inf), _scalar(node, 2, inf))
    elif node.target is aten.clamp.Tensor:
        return tuple(get_attr_tensor(gm, t).reshape(-1) if isinstance(t, fx.Node) else torch.tensor(inf * sign)
                     for t, sign in ((node.args[1], -1), (node.args[2], 1)))
    else:
        return None
    return torch.tensor(bounds[0]), torch.tensor(bounds[1])


def input_source(gm: fx.GraphModule, layer: fx.Node) -> tuple[fx.Node, tuple | None] | None:
    """The node with BatchNorm statistics that the layer's input comes from, and the clip bounds between."""
    x, bounds = layer.args[0], None
    while isinstance(x, fx.Node):
        if bn_stats(x) is not None:
            return x, bounds
        quantizer = x.op == "call_module" and isinstance(gm.get_submodule(x.target), ActQuantizer)
        if quantizer or (x.op == "call_function" and x.target in CHANNEL_PRESERVING):
            x = x.args[0]
            continue
        found = clip_bounds(gm, x) if bounds is None else None
        if found is None:
            return None
        x, bounds = x.args[0], found
    return None


def analytic_input_mean(gm: fx.GraphModule, layer: fx.Node) -> torch.Tensor | None:
    """E[x] per input channel of `layer` from BatchNorm statistics (float64), or None where there are none."""
    found = input_source(gm, layer)
    if found is None:
        return None
    source, bounds = found
    stats = bn_stats(source)
    a, b = bounds if bounds is not None else (-math.inf, math.inf)
    return clipped_normal_mean(stats.mean, stats.std, a, b)


__all__ = ["analytic_input_mean", "clip_bounds", "clipped_normal_mean", "input_source"]
