"""Per-channel scale migration shared by SmoothQuant and AWQ: find where a scale can be folded, and fold it.

For linear layers Y_i = X W_i^T that read one tensor X, any positive per-input-channel vector s gives
    Y_i = (X diag(s)^-1) (W_i diag(s))^T
exactly. The division by s costs nothing at run time when it folds into the op that produced X:
- RMSNorm / LayerNorm: the norm's weight (and bias) divided by s;
- a linear layer: its weight rows (and bias) divided by s;
- an element-wise product a * b (SwiGLU's silu(gate) * up) where a or b is such a linear layer.
A `Group` is one producer with every linear layer that reads it; a producer with any other reader, or whose
weight is shared (tied embeddings), is left alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import fx

from lowbit.config import Mode, QuantConfig, QuantSpec
from lowbit.core.granularity import GROUPED
from lowbit.core.primitives import dynamic_qparams, fake_quantize
from lowbit.graph.nodes import attr_uses, get_attr_tensor, module_name, set_attr_tensor
from lowbit.graph.quantizers import WeightQuantizer

aten = torch.ops.aten
MIN_SMOOTH_SCALE = 1e-5
# Activation functions. `insert_muls` leaves their outputs alone unless asked: a multiply there sits between a
# linear layer's activation and its output quantizer, which torch.compile's x86 int8 lowering otherwise fuses into
# one oneDNN kernel (linear + GELU + quantize), and on MiniLM smoothing the GELU outputs lowered the cosine as well
# (docs/ARCHITECTURE.md, "Scale migration").
ACTIVATIONS = frozenset({aten.gelu.default, aten.relu.default, aten.silu.default, aten.sigmoid.default,
                         aten.tanh.default, aten.hardswish.default, aten.hardtanh.default, aten.leaky_relu.default,
                         aten.elu.default, aten.mish.default})


@dataclass
class Group:
    """A producer node, the linear layers reading it (with their layer names) and how to fold 1/s into it."""

    source: fx.Node
    linears: list[fx.Node]
    names: list[str]
    fold: Callable[[torch.Tensor], None]


def _own_attr(node, uses: dict[str, int]) -> bool:
    return isinstance(node, fx.Node) and node.op == "get_attr" and uses.get(str(node.target)) == 1


def _scale_attr(gm: fx.GraphModule, node: fx.Node, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    set_attr_tensor(gm, str(node.target), fn(get_attr_tensor(gm, node).detach()))


def _linear_fold(gm, lin: fx.Node, uses) -> Callable | None:
    """Fold 1/s into a linear's output channels (weight rows and bias)."""
    if lin.target is not aten.linear.default or not _own_attr(lin.args[1], uses):
        return None
    bias = lin.args[2] if len(lin.args) > 2 else None
    if bias is not None and not _own_attr(bias, uses):
        return None

    def fold(s: torch.Tensor) -> None:
        _scale_attr(gm, lin.args[1], lambda w: w / s[:, None])
        if bias is not None:
            _scale_attr(gm, bias, lambda b: b / s)

    return fold


def _fold_for(gm: fx.GraphModule, src: fx.Node, channels: int, uses: dict[str, int]) -> Callable | None:
    """How to fold 1/s into the producer `src` of a `channels`-wide tensor, or None when it cannot be."""
    if src.op != "call_function":
        return None
    if src.target is aten.layer_norm.default and all(_own_attr(a, uses) for a in src.args[2:4]):

        def fold_norm(s: torch.Tensor) -> None:
            for a in src.args[2:4]:
                _scale_attr(gm, a, lambda t: t / s)

        return fold_norm
    if src.target is aten.linear.default and len(src.users) == 1:
        return _linear_fold(gm, src, uses)
    if src.target is not aten.mul.Tensor:
        return None
    for a in src.args[:2]:  # RMSNorm's weight * normalised x
        if _own_attr(a, uses) and tuple(get_attr_tensor(gm, a).shape) == (channels,):
            return lambda s, a=a: _scale_attr(gm, a, lambda t: t / s)
    for a in src.args[:2]:  # silu(gate) * up: fold into up
        if isinstance(a, fx.Node) and len(a.users) == 1:
            fold = _linear_fold(gm, a, uses)
            if fold is not None:
                return fold
    return None


def _quantized_linear_readers(src: fx.Node, config: QuantConfig, uses: dict[str, int]) -> list[fx.Node]:
    """The linear layers that read `src` as their input, own their weight and are quantized by `config`."""
    out = []
    for r in src.users:
        if r.target is aten.linear.default and r.args[0] is src and _own_attr(r.args[1], uses):
            name, cls = module_name(r)
            if config.for_layer(name, cls)[0] is not None:
                out.append(r)
    return out


def insert_muls(gm: fx.GraphModule, config: QuantConfig, after_activations: bool = False) -> int:
    """Give every producer whose 1/s has nowhere to fold (a LayerNorm also read by a residual add, as in BERT; a
    reshape of attention's output) an explicit `x * (1/s)` in front of its quantized linear readers, s = 1 until
    a pass sets it. This is the form NNCF's SmoothQuant takes: one float per-channel multiply before the
    activation quantizer, so the migration works on any producer. Outputs of activation functions (`ACTIVATIONS`:
    GELU, ReLU, SiLU, ...) get one only with `after_activations`. Returns how many were inserted."""
    uses, count = attr_uses(gm), 0
    for src in list(gm.graph.nodes):
        if not after_activations and src.op == "call_function" and src.target in ACTIVATIONS:
            continue
        readers = _quantized_linear_readers(src, config, uses)
        if not readers or (len(readers) == len(src.users) and _fold_for(
                gm, src, get_attr_tensor(gm, readers[0].args[1]).shape[1], uses) is not None):
            continue
        path = f"lowbit_smooth_{count}"
        set_attr_tensor(gm, path, torch.ones(get_attr_tensor(gm, readers[0].args[1]).shape[1]))
        with gm.graph.inserting_after(src):
            inv = gm.graph.get_attr(path)
        with gm.graph.inserting_after(inv):
            mul = gm.graph.call_function(aten.mul.Tensor, (src, inv))
        for r in readers:
            r.args = (mul, *r.args[1:])
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def find_groups(gm: fx.GraphModule, config: QuantConfig) -> dict[fx.Node, Group]:
    """Producer node -> Group, for producers whose every reader is a linear layer the config quantizes."""
    uses = attr_uses(gm)
    groups: dict[fx.Node, Group] = {}
    for src in gm.graph.nodes:
        readers = list(src.users)
        if not readers or not all(r.target is aten.linear.default and r.args[0] is src for r in readers):
            continue
        if not all(_own_attr(r.args[1], uses) for r in readers):
            continue
        names = [module_name(r)[0] for r in readers]
        if any(config.for_layer(n, module_name(r)[1])[0] is None for n, r in zip(names, readers, strict=True)):
            continue
        fold = _fold_for(gm, src, get_attr_tensor(gm, readers[0].args[1]).shape[1], uses)
        if fold is not None:
            groups[src] = Group(src, readers, names, fold)
    return groups


def scale_weights(gm: fx.GraphModule, group: Group, s: torch.Tensor) -> None:
    """W_i diag(s) for every linear of the group (the other half of the migration)."""
    for lin in group.linears:
        _scale_attr(gm, lin.args[1], lambda w: w * s[None, :])


def apply(gm: fx.GraphModule, group: Group, s: torch.Tensor, values: list) -> list:
    """Migrate `s` into the group's weights and producer; returns the producer's values divided by s."""
    group.fold(s)
    scale_weights(gm, group, s)
    return [v / s for v in values]


def weights(gm: fx.GraphModule, group: Group) -> list[torch.Tensor]:
    return [get_attr_tensor(gm, lin.args[1]).detach() for lin in group.linears]


def fake_quant_weight(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The weight as the config's weight quantizer will quantize it (groups fitted to the weight's width)."""
    g = spec.granularity
    if isinstance(g, GROUPED) and w.shape[g.axis] % g.size:
        size = max(d for d in range(1, g.size + 1) if w.shape[g.axis] % d == 0)
        spec = replace(spec, granularity=replace(g, size=size))
    wq = WeightQuantizer(spec, "")
    wq.set_qparams(w)
    return wq.w_hat


def fake_quant_input(x: torch.Tensor, config: QuantConfig) -> torch.Tensor:
    """Rows of a layer input as the config's activation quantizer will see them (dynamic or static range)."""
    spec = config.activation
    if spec is None or config.mode is Mode.WEIGHT_ONLY:
        return x
    return fake_quantize(x, dynamic_qparams(x, spec.qtype, spec.granularity, spec.symmetric))


def group_error(x: torch.Tensor, ws: list[torch.Tensor], s: torch.Tensor, config: QuantConfig,
                quantize_input: bool) -> float:
    """sum_i ||Q(X/s) Q(W_i s)^T - X W_i^T||^2 on the rows `x`: the error a candidate scale leaves."""
    xs = x / s
    xq = fake_quant_input(xs, config) if quantize_input else xs
    err = 0.0
    for w in ws:
        ref = x @ w.T
        err += float((xq @ fake_quant_weight(w * s, config.weight).T - ref).pow(2).sum())
    return err
