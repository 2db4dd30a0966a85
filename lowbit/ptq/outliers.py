"""Static outlier channels: the few input channels of a linear layer that dwarf the rest run in float beside it.

One static range per tensor spends its 255 steps on the largest value. In BERT-style encoders one or two channels
of the FFN-down input (the GELU output) reach 15-25 while the median channel peaks near 1.5, so the step is ~10x
wider than the bulk needs (MiniLM: those inputs hold about half of static W8A8's cosine loss). LLM.int8()
(Dettmers et al. 2022, arXiv:2208.07339) multiplies the outlier feature columns in float and the rest in int8,
choosing the columns per call; here they are chosen once, from calibration data, so the int8 part stays a plain
static-range linear that onnxruntime and torch.compile run as integer kernels:

    Y = Q(X) Q(W_R)^T + X[:, O] W[:, O]^T,    W_R = W with the columns O set to 0,

and the range of Q is estimated on X with the columns O set to 0 (the quantizer saturates those channels at run
time; their weight columns are zero, so that costs nothing). The float part is an `index_select` of k <= 8 columns
and a (tokens x k) by (k x out) matmul, added to the layer's output. When the input is an activation of another
linear (GELU(h W1^T + b1), BERT's FFN), the k columns are recomputed in float from h instead of read from the
activation: reading it would keep the activation's float output in memory, which torch.compile otherwise fuses
away (measured on MiniLM: 15 ms of 125 at batch 32 for 5 columns read that way).

Registered as the quantized-stage pass "outlier_channels" (after calibration): a channel is an outlier when its
calibration peak |x| is at least `ratio` times the median channel's peak; at most `max_channels` per input.
Measured on MiniLM after SmoothQuant (PT2E layout, cosine to fp32 on 1000 sentences): 0.9958 without the pass,
0.9979 at ratio 8 (3 layers), 0.9983 at ratio 4 (6 layers; the default).
"""

from __future__ import annotations

import fnmatch
import logging

import torch

from lowbit.graph.bias import BiasQuantizer
from lowbit.graph.nodes import attr_uses, get_attr_tensor, set_attr_tensor
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.graph.quantizers import ActQuantizer, WeightQuantizer, make_estimator
from lowbit.llm.smoothing import ACTIVATIONS
from lowbit.ptq import register_pass

log = logging.getLogger(__name__)
aten = torch.ops.aten
DEFAULT_RATIO = 4.0
DEFAULT_MAX_CHANNELS = 8


def outlier_channels(amax: torch.Tensor, ratio: float, max_channels: int) -> torch.Tensor:
    """Indices (ascending) of the channels whose peak is >= ratio x the median channel's peak, the largest
    `max_channels` of them; empty when the median is 0."""
    median = amax.median()
    if median <= 0 or max_channels <= 0:
        return torch.zeros(0, dtype=torch.long)
    big = torch.nonzero(amax >= ratio * median).flatten()
    if len(big) > max_channels:
        big = big[amax[big].topk(max_channels).indices]
    return big.sort().values


def _candidates(qmodel: QuantizedModel, layers: str) -> dict[str, list]:
    """Static per-tensor input quantizer -> the linear layers it feeds, where every such layer qualifies (a
    quantized linear matching `layers` whose weight is read by it alone)."""
    uses = attr_uses(qmodel.graph_module)
    by_quantizer: dict[str, list] = {}
    for info in qmodel.layers.values():
        for q in info.input_quantizers:
            by_quantizer.setdefault(q, []).append(info)
    out = {}
    for q, infos in by_quantizer.items():
        aq = qmodel.graph_module.get_submodule(q)
        if not isinstance(aq, ActQuantizer) or aq.dynamic or not aq.enabled or aq.qparams is None \
                or aq.qparams.scale.numel() != 1:
            continue
        ok = all(i.kind == "linear" and not i.kept_float and i.weight_quantizer and fnmatch.fnmatchcase(i.name, layers)
                 and i.input_quantizers == (q,) and _reads_quantizer(qmodel, i, q) for i in infos)
        if ok and all(uses.get(str(_weight_attr(qmodel, i).target)) == 1 for i in infos):
            out[q] = infos
    return out


def _reads_quantizer(qmodel: QuantizedModel, info, q: str) -> bool:
    lin = next(n for n in qmodel.graph_module.graph.nodes if n.name == info.node)
    x = lin.args[0]
    return isinstance(x, torch.fx.Node) and x.op == "call_module" and x.target == q


def _weight_attr(qmodel: QuantizedModel, info):
    nodes = qmodel.graph_module.graph.nodes
    return next(n for n in nodes if n.op == "call_module" and n.target == info.weight_quantizer).args[0]


def _observe(qmodel: QuantizedModel, batches, fns: dict[str, callable]) -> None:
    """Run the float model on `batches`, calling fns[q](x) with the float input of each quantizer q."""
    gm = qmodel.graph_module
    handles = [gm.get_submodule(q).register_forward_pre_hook(lambda _m, args, f=f: f(args[0].detach()))
               for q, f in fns.items()]
    try:
        with torch.no_grad(), qmodel.float_mode():
            for batch in batches:
                qmodel(*batch)
    finally:
        for h in handles:
            h.remove()


def _float_source(gm, node):
    """The float tensor behind a quantizer call (its argument), else the node itself."""
    if isinstance(node, torch.fx.Node) and node.op == "call_module" and isinstance(
            gm.get_submodule(node.target), (ActQuantizer, WeightQuantizer, BiasQuantizer)):
        return node.args[0]
    return node


def _activation_of_linear(qmodel: QuantizedModel, x):
    """(activation node, float input h, float W1, float b1 or None) when x = act(linear(h, W1, b1)) with an
    element-wise activation; else None. Reading x itself for the side product would make torch.compile keep the
    activation's float output in memory (it otherwise fuses FFN-up + GELU + quantize into one int8 kernel)."""
    gm = qmodel.graph_module
    if not (isinstance(x, torch.fx.Node) and x.op == "call_function" and x.target in ACTIVATIONS):
        return None
    lin = x.args[0]
    if not (isinstance(lin, torch.fx.Node) and lin.target is aten.linear.default):
        return None
    w = _float_source(gm, lin.args[1])
    b = _float_source(gm, lin.args[2]) if len(lin.args) > 2 and lin.args[2] is not None else None
    if w.op != "get_attr" or (b is not None and b.op != "get_attr"):
        return None
    return (x, _float_source(gm, lin.args[0]), get_attr_tensor(gm, w).detach(),
            None if b is None else get_attr_tensor(gm, b).detach())


def _split(qmodel: QuantizedModel, info, idx: torch.Tensor) -> None:
    """Rewrite one linear: zero its weight columns `idx` (and refit its weight quantizer), add the float product of
    those input columns to its output."""
    gm, graph = qmodel.graph_module, qmodel.graph_module.graph
    lin = next(n for n in graph.nodes if n.name == info.node)
    qnode = lin.args[0]  # the input quantizer's call; its argument is the float input
    x = qnode.args[0]
    w_attr = _weight_attr(qmodel, info)
    w = get_attr_tensor(gm, w_attr).detach()
    tag = info.name.replace(".", "_")
    set_attr_tensor(gm, f"lowbit_outlier_w_{tag}", w[:, idx].T.contiguous())  # (k, out)
    kept = w.clone()
    kept[:, idx] = 0.0
    set_attr_tensor(gm, str(w_attr.target), kept)
    gm.get_submodule(info.weight_quantizer).set_qparams(kept)
    anchor = lin

    def add(make):
        nonlocal anchor
        with graph.inserting_after(anchor):
            anchor = make()
        anchor.meta.update({k: v for k, v in lin.meta.items() if k in ("nn_module_stack", "stack_trace")})
        return anchor

    w_node = add(lambda: graph.get_attr(f"lowbit_outlier_w_{tag}"))
    producer = _activation_of_linear(qmodel, x)
    if producer is None:
        set_attr_tensor(gm, f"lowbit_outlier_idx_{tag}", idx.clone())
        i_node = add(lambda: graph.get_attr(f"lowbit_outlier_idx_{tag}"))
        cols = add(lambda: graph.call_function(aten.index_select.default, (x, -1, i_node)))
    else:  # act(h W1^T + b1): recompute the k columns from h, leaving the fused linear + act + quantize alone
        act, h, w1, b1 = producer
        set_attr_tensor(gm, f"lowbit_outlier_w1_{tag}", w1[idx].contiguous())
        w1_node = add(lambda: graph.get_attr(f"lowbit_outlier_w1_{tag}"))
        b1_node = None
        if b1 is not None:
            set_attr_tensor(gm, f"lowbit_outlier_b1_{tag}", b1[idx].contiguous())
            b1_node = add(lambda: graph.get_attr(f"lowbit_outlier_b1_{tag}"))
        pre = add(lambda: graph.call_function(aten.linear.default, (h, w1_node, b1_node)))
        cols = add(lambda: graph.call_function(act.target, (pre, *act.args[1:]), dict(act.kwargs)))
    side = add(lambda: graph.call_function(aten.matmul.default, (cols, w_node)))
    total = add(lambda: graph.call_function(aten.add.Tensor, (lin, side)))
    lin.replace_all_uses_with(total, delete_user_cb=lambda user: user is not total)


@register_pass("outlier_channels", "quantized", paper="static variant of Dettmers et al. 2022, arXiv:2208.07339")
def split_outlier_channels(qmodel: QuantizedModel, batches, *, progress=None, ratio: float = DEFAULT_RATIO,
                           max_channels: int = DEFAULT_MAX_CHANNELS, layers: str = "*") -> dict[str, list[int]]:
    """Move the outlier input channels of static-range linear layers to a float side product (module docstring);
    returns {layer: channels moved}. Layers sharing one input quantizer (Q, K, V) share the channel set."""
    groups = _candidates(qmodel, layers)
    amax: dict[str, torch.Tensor] = {}

    def peak(q):
        def f(x):
            m = x.abs().reshape(-1, x.shape[-1]).amax(0)
            amax[q] = m if q not in amax else torch.maximum(amax[q], m)
        return f

    _observe(qmodel, batches, {q: peak(q) for q in groups})
    chosen = {q: outlier_channels(amax[q], ratio, max_channels) for q in groups if q in amax}
    chosen = {q: idx for q, idx in chosen.items() if len(idx)}
    if not chosen:
        return {}
    estimators = {q: make_estimator(qmodel.graph_module.get_submodule(q).spec) for q in chosen}
    _observe(qmodel, batches, {q: (lambda x, q=q: estimators[q].observe(x.index_fill(-1, chosen[q], 0.0)))
                               for q in chosen})
    moved: dict[str, list[int]] = {}
    for q, idx in chosen.items():
        aq = qmodel.graph_module.get_submodule(q)
        aq.qparams = estimators[q].qparams(aq.spec.qtype, symmetric=aq.spec.symmetric)
        median = float(amax[q].median())
        for info in groups[q]:
            _split(qmodel, info, idx)
            info.note = (f"{len(idx)} outlier input channels in float (peak |x| {float(amax[q][idx].max()):.3g}, "
                         f"median channel {median:.3g})")
            moved[info.name] = idx.tolist()
    qmodel.graph_module.graph.lint()
    qmodel.graph_module.recompile()
    log.info("outlier_channels: %d layers, %d channels in float", len(moved), sum(map(len, moved.values())))
    return moved


__all__ = ["outlier_channels", "split_outlier_channels"]
