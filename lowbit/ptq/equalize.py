"""Cross-layer equalization and high-bias absorption (the "float" stage of data-free quantization).

Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization Through Weight Equalization and Bias
Correction" (ICCV 2019, arXiv:1906.04721), sections 4.1-4.2. For two layers y = W2 f(W1 x + b1) + b2 with f
positively homogeneous per channel (ReLU; identity), scaling output channel i of layer 1 by 1/s_i and input
channel i of layer 2 by s_i leaves the function unchanged. With r1_i the range of W1's output channel i and
r2_i that of W2's input channel i, s_i = sqrt(r1_i r2_i) / r2_i makes both ranges sqrt(r1_i r2_i) (eq. 10):
depthwise layers whose channels spanned orders of magnitude then quantize per tensor. Pairs are equalized in
graph order for `rounds` rounds (chains of layers converge).

ReLU6 (relu6, hardtanh(0, 6)) is not homogeneous: the paper replaces it by ReLU. lowbit keeps the function exact
instead: clamp(z / s, 0, 6 / s) = clamp(z, 0, 6) / s, so an equalized ReLU6 becomes a clamp with a bound per
channel (aten.clamp.Tensor; it stays float in a fully quantized config, as it has no lowbit integer kernel).

High-bias absorption (section 4.2): where f is ReLU(6) and layer 2 reads f's output directly (no zero padding:
a linear layer or a conv with padding 0), c_i = max(0, mu_i - 3 sigma_i) is moved from b1 into b2
(b1 -= c, b2 += W2 c, ReLU6 bound -= c): f(z - c) = f(z) - c wherever z >= c. The paper takes mu and sigma from
the BatchNorm that follows layer 1. With `stats="measured"` (default) they are the pre-activation mean and
standard deviation per channel measured on the calibration batches (first `samples` rows); with `stats="bn"`
they are the folded BatchNorm's beta and |gamma| (`lowbit.graph.bn_stats`, data-free, as in the paper), and
pairs whose first layer had no BatchNorm are not absorbed.

Both steps keep the BatchNorm statistics on layer 1's node in step with its output: equalization divides
channel i by s_i (mean / s, std / s), absorption subtracts c (mean - c).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx
from torch.nn import functional as F  # noqa: N812

from lowbit.graph.bn_stats import bn_stats, scale_bn_stats, shift_bn_stats
from lowbit.graph.nodes import attr_path, get_attr_tensor, set_attr_tensor
from lowbit.ptq import register_pass
from lowbit.ptq.runner import GraphRunner, first_rows

aten = torch.ops.aten
LAYERS = {aten.conv2d.default: "conv", aten.linear.default: "linear"}
HOMOGENEOUS = {aten.relu.default, aten.hardtanh.default, aten.relu6.default}
CHAIN = {aten.pad.default, aten.max_pool2d.default, aten.dropout.default, aten.clone.default}
DEFAULT_ROUNDS = 20
CONVERGED = 1e-4  # stop when every |log s_i| of a round is below this
SIGMAS = 3.0  # c = mu - 3 sigma (section 4.2)
DEFAULT_SAMPLES = 64
STATS = ("measured", "bn")  # where high-bias absorption takes mu and sigma from


@dataclass
class Pair:
    """Two layers with only a homogeneous activation (or nothing) and channel-preserving ops between them."""

    first: fx.Node
    act: fx.Node | None
    chain: list[fx.Node]
    second: fx.Node
    scale: torch.Tensor  # accumulated s per channel


def _only_user(n: fx.Node) -> fx.Node | None:
    return next(iter(n.users)) if len(n.users) == 1 else None


def _groups(n: fx.Node) -> int:
    return int(n.args[6]) if n.target is aten.conv2d.default and len(n.args) > 6 else 1


def _weight(gm, n: fx.Node) -> torch.Tensor | None:
    w = n.args[1]
    ok = isinstance(w, fx.Node) and w.op == "get_attr" and len(w.users) == 1
    return get_attr_tensor(gm, w) if ok else None


def find_pairs(gm: fx.GraphModule) -> list[Pair]:
    pairs = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in LAYERS or _weight(gm, n) is None:
            continue
        act, nxt = None, _only_user(n)
        if nxt is not None and nxt.target in HOMOGENEOUS:
            if nxt.target is aten.hardtanh.default and (len(nxt.args) < 3 or float(nxt.args[1]) != 0.0):
                continue
            act, nxt = nxt, _only_user(nxt)
        chain = []
        while nxt is not None and nxt.target in CHAIN and LAYERS[n.target] == "conv":
            chain.append(nxt)
            nxt = _only_user(nxt)
        if nxt is None or nxt.target is not n.target or nxt.args[0] is not (chain or [act or n])[-1]:
            continue
        w1, w2 = _weight(gm, n), _weight(gm, nxt)
        if w2 is not None and w2.shape[1] * _groups(nxt) == w1.shape[0]:
            pairs.append(Pair(n, act, chain, nxt, torch.ones(w1.shape[0])))
    return pairs


def _in_view(w2: torch.Tensor, groups: int) -> torch.Tensor:
    """W2 as (groups, out per group, in per group, rest): input channel i is (i // cg, i % cg)."""
    return w2.reshape(groups, w2.shape[0] // groups, w2.shape[1], -1)


def bias_node(n: fx.Node) -> fx.Node | None:
    """The get_attr node of a layer's bias (behind its bias quantizer, if any)."""
    b = n.args[2] if len(n.args) > 2 else None
    if isinstance(b, fx.Node) and b.op == "call_module":
        b = b.args[0]
    return b if isinstance(b, fx.Node) and b.op == "get_attr" else None


def ensure_bias(gm: fx.GraphModule, n: fx.Node) -> str:
    """Path of the layer's bias, created (zeros) when the layer has none."""
    if bias_node(n) is not None:
        return attr_path(bias_node(n))
    w_node = n.args[1]
    if w_node.op == "call_module":  # a weight quantizer: the weight is its input
        w_node = w_node.args[0]
    w = get_attr_tensor(gm, w_node)
    path = attr_path(w_node).rsplit(".", 1)[0] + ".equalized_bias"
    set_attr_tensor(gm, path, torch.zeros(w.shape[0], dtype=w.dtype))
    with gm.graph.inserting_before(n):
        b = gm.graph.get_attr(path)
    n.args = (n.args[0], n.args[1], b) + tuple(n.args[3:])
    return path


def equalize_pair(gm: fx.GraphModule, p: Pair) -> torch.Tensor:
    """One equalization step of a pair in place (eq. 10); returns s."""
    w1, w2 = _weight(gm, p.first), _weight(gm, p.second)
    g = _groups(p.second)
    r1 = w1.abs().reshape(w1.shape[0], -1).amax(1)  # (C,)
    r2 = _in_view(w2, g).abs().amax(dim=(1, 3)).reshape(-1)  # (C,)
    ok = (r1 > 0) & (r2 > 0)
    s = torch.where(ok, torch.sqrt(r1 * r2) / r2.clamp_min(torch.finfo(r2.dtype).tiny), torch.ones_like(r1))
    shape1 = (-1,) + (1,) * (w1.dim() - 1)
    set_attr_tensor(gm, attr_path(p.first.args[1]), w1 / s.reshape(shape1))
    scale_bn_stats(p.first, s)
    b_path = ensure_bias(gm, p.first)
    set_attr_tensor(gm, b_path, get_attr_tensor(gm, bias_node(p.first)) / s)
    w2_new = _in_view(w2, g) * s.reshape(g, 1, -1, 1)
    set_attr_tensor(gm, attr_path(p.second.args[1]), w2_new.reshape(w2.shape))
    p.scale = p.scale * s
    return s


def _channel_shape(p: Pair, c: int) -> tuple[int, ...]:
    return (c,) if LAYERS[p.first.target] == "linear" else (c, 1, 1)


def _clamp_per_channel(gm: fx.GraphModule, p: Pair, bound: torch.Tensor) -> None:
    """Turn the pair's hardtanh(0, M) into clamp(x, 0, bound) with one bound per channel."""
    base = attr_path(p.first.args[1]).rsplit(".", 1)[0]
    c = bound.numel()
    set_attr_tensor(gm, base + ".relu6_low", torch.zeros(_channel_shape(p, c)))
    set_attr_tensor(gm, base + ".relu6_high", bound.reshape(_channel_shape(p, c)))
    with gm.graph.inserting_before(p.act):
        lo, hi = gm.graph.get_attr(base + ".relu6_low"), gm.graph.get_attr(base + ".relu6_high")
    p.act.target, p.act.args = aten.clamp.Tensor, (p.act.args[0], lo, hi)


def _relu6_bound(p: Pair) -> torch.Tensor | None:
    """The per-channel clip bound an equalized hardtanh(0, M) needs: M / s."""
    if p.act is None or p.act.target is aten.relu.default:
        return None
    return (6.0 if p.act.target is aten.relu6.default else float(p.act.args[2])) / p.scale


def _absorbable(p: Pair) -> bool:
    padded = p.second.target is aten.conv2d.default and len(p.second.args) > 4 and any(p.second.args[4])
    return p.act is not None and not padded and not any(n.target is aten.pad.default for n in p.chain)


def _pre_activation_stats(gm, pairs: list[Pair], batches) -> dict[fx.Node, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and standard deviation of each pair's first output on the calibration rows."""
    sums: dict[fx.Node, list] = {}
    with torch.no_grad():
        for b in batches:
            found = GraphRunner(gm, b).run_until([p.first for p in pairs])
            for p in pairs:
                y = found[p.first]
                y = y.movedim(1, -1) if LAYERS[p.first.target] == "conv" else y
                y = y.reshape(-1, y.shape[-1]).double()  # (rows * positions, C)
                acc = sums.setdefault(p.first, [0, 0.0, 0.0])
                acc[0] += len(y)
                acc[1] += y.sum(0)
                acc[2] += y.pow(2).sum(0)
    out = {}
    for node, (n, s1, s2) in sums.items():
        mean = s1 / n
        out[node] = (mean.float(), (s2 / n - mean.pow(2)).clamp_min(0).sqrt().float())
    return out


def _bn_pre_activation_stats(pairs: list[Pair]) -> dict[fx.Node, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel mean and standard deviation of each pair's first output as its folded BatchNorm assumed."""
    found = {p.first: bn_stats(p.first) for p in pairs}
    return {n: (st.mean, st.std) for n, st in found.items() if st is not None}


def _absorption_stats(gm, pairs: list[Pair], batches, stats: str, samples: int):
    if stats == "bn":
        return _bn_pre_activation_stats(pairs)
    return _pre_activation_stats(gm, pairs, first_rows(batches, samples)) if pairs and batches else {}


def _absorb(gm: fx.GraphModule, p: Pair, mean: torch.Tensor, std: torch.Tensor) -> None:
    c = (mean - SIGMAS * std).clamp_min(0)
    clamped = p.act.target is aten.clamp.Tensor
    if clamped:
        high = get_attr_tensor(gm, p.act.args[2])
        c = torch.minimum(c, high.reshape(-1))
    if not (c > 0).any():
        return
    set_attr_tensor(gm, attr_path(bias_node(p.first)), get_attr_tensor(gm, bias_node(p.first)) - c)
    shift_bn_stats(p.first, c)
    if clamped:
        set_attr_tensor(gm, attr_path(p.act.args[2]), high - c.reshape(high.shape))
    w2 = _weight(gm, p.second)
    if LAYERS[p.second.target] == "linear":
        shift = w2 @ c
    else:
        x = c.reshape(1, -1, 1, 1).expand(1, -1, *w2.shape[2:])
        shift = F.conv2d(x, w2, groups=_groups(p.second)).reshape(-1)
    b2_path = ensure_bias(gm, p.second)
    set_attr_tensor(gm, b2_path, get_attr_tensor(gm, bias_node(p.second)) + shift)


@register_pass("equalize", "float", paper="Nagel et al. 2019, Data-Free Quantization (sections 4.1-4.2)")
def equalize(gm: fx.GraphModule, batches, *, config=None, progress=None, rounds: int = DEFAULT_ROUNDS,
             absorb_bias: bool = True, samples: int = DEFAULT_SAMPLES, stats: str = "measured") -> list[Pair]:
    """Cross-layer equalization of every conv-conv / linear-linear pair in place, then high-bias absorption
    (`absorb_bias`; mu and sigma measured on the first `samples` calibration rows, or the folded BatchNorm's with
    `stats="bn"`). Returns the pairs with their scales."""
    if stats not in STATS:
        raise ValueError(f"equalize stats must be one of {STATS}, not {stats!r}")
    pairs = find_pairs(gm)
    with torch.no_grad():
        for _ in range(rounds):
            worst = max((float(equalize_pair(gm, p).log().abs().max()) for p in pairs), default=0.0)
            if worst < CONVERGED:
                break
        for p in pairs:
            bound = _relu6_bound(p)
            if bound is not None:
                _clamp_per_channel(gm, p, bound)
        absorbable = [p for p in pairs if _absorbable(p)] if absorb_bias else []
        found = _absorption_stats(gm, absorbable, batches, stats, samples)
        for p in absorbable:  # in graph order: each pair's statistics were taken before any absorption
            if p.first in found:
                _absorb(gm, p, *found[p.first])
    gm.graph.lint()
    gm.recompile()
    return pairs


__all__ = ["Pair", "bias_node", "ensure_bias", "equalize", "equalize_pair", "find_pairs"]
