"""EasyQuant: post-training quantization by scale optimisation.

Wu, Wang, Zhang, Huang, Gong, Liu, "EasyQuant: Post-training Quantization via Scale Optimization" (2020,
arXiv:2006.16669). Layer by layer, with the layer's *float* inputs X and float weight W, the float output is
O = op(X, W) and the quantized one O_hat = op(Q(X; S_a), Q(W; S_w)). Starting from any estimator's scales
(S_a0, S_w0), alternately
  1. fix S_w, search S_a = alpha * S_a0 (one alpha per activation tensor) maximising cos(O, O_hat);
  2. fix S_a, search S_w = alpha_c * S_w0 per output channel c (output channel c depends on S_w[c] only, so
     every channel takes the alpha that maximises the cosine of its own output slice),
for `rounds` rounds, alpha on the grid ALPHAS, and write the chosen QParams into the quantizers. cos(O, O_hat)
is the paper's objective: the mean over samples of the cosine of the flattened outputs. Zero points are kept,
so an asymmetric range scales about its zero point.

Layers that share one input quantizer (Q, K and V projections) are searched together: their activation
scale maximises the mean of their cosines. Float inputs are captured for at most `max_samples` calibration
rows (16 by default), one layer group at a time, so memory is one group's inputs for 16 rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import fx
from torch.utils._pytree import tree_leaves
from tqdm.auto import tqdm

from lowbit.config import Mode
from lowbit.core.granularity import PerChannel
from lowbit.core.primitives import fake_quantize
from lowbit.core.qparams import MIN_SCALE, QParams
from lowbit.core.qtype import IntQType
from lowbit.graph.placement import PASS_THROUGH
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.ptq import CALIBRATIONS
from lowbit.ptq.analytic_input import clip_bounds

log = logging.getLogger(__name__)

ALPHA_LO, ALPHA_HI, ALPHA_STEPS_PER_UNIT = 0.5, 1.2, 40  # grid step 1/40; 1.0 is on the grid exactly
ALPHAS = torch.tensor(
    [
        i / ALPHA_STEPS_PER_UNIT
        for i in range(round(ALPHA_LO * ALPHA_STEPS_PER_UNIT), round(ALPHA_HI * ALPHA_STEPS_PER_UNIT) + 1)
    ]
)
DEFAULT_SAMPLES = 16
DEFAULT_ROUNDS = 2
CHANNEL_AXIS = {"linear": -1, "conv1d": 1, "conv2d": 1}  # output-channel axis of each layer kind's output


@dataclass(frozen=True)
class LayerCosine:
    """A layer's cosine of quantized to float outputs on its float inputs, before and after the search."""

    layer: str
    before: float
    after: float


@dataclass
class _Layer:
    """One layer's op with its captured float arguments (one call per sample batch) and reference outputs."""

    name: str
    kind: str
    op: Callable
    calls: list[tuple[tuple, dict]]
    act: dict[int, str]  # argument index -> activation quantizer name
    weight: torch.Tensor | None
    refs: list[torch.Tensor]
    _quantized: dict = field(default_factory=dict)  # sample -> (the act QParams used, quantized args)

    def output(self, i: int, act_qp: dict[str, QParams], w_hat: torch.Tensor | None) -> torch.Tensor:
        used = tuple(act_qp[q] for q in self.act.values())
        hit = self._quantized.get(i)
        if hit is None or any(a is not b for a, b in zip(hit[0], used, strict=True)):
            args = list(self.calls[i][0])  # the weight search re-uses one quantized input for every alpha
            for idx, qname in self.act.items():
                args[idx] = fake_quantize(args[idx], act_qp[qname])
            hit = self._quantized[i] = (used, args)
        args, kwargs = list(hit[1]), self.calls[i][1]
        if w_hat is not None:
            args[1] = w_hat
        return self.op(*args, **kwargs)

    def cosine(self, act_qp: dict[str, QParams], w_hat: torch.Tensor | None) -> float:
        """Mean over samples of cos(flat O, flat O_hat)."""
        cos = [
            torch.nn.functional.cosine_similarity(
                ref.flatten(1).double(), self.output(i, act_qp, w_hat).flatten(1).double(), dim=1
            )
            for i, ref in enumerate(self.refs)
        ]
        return float(torch.cat(cos).mean())

    def channel_cosine(self, act_qp: dict[str, QParams], w_hat: torch.Tensor) -> torch.Tensor:
        """(C,) cosine of each output channel's slice over all samples and positions."""
        axis = CHANNEL_AXIS[self.kind]
        dot = nr = no = 0.0
        for i, ref in enumerate(self.refs):
            out = self.output(i, act_qp, w_hat).movedim(axis, 0).flatten(1).double()  # (C, rest)
            r = ref.movedim(axis, 0).flatten(1).double()  # (C, rest)
            dot, nr, no = dot + (r * out).sum(1), nr + r.pow(2).sum(1), no + out.pow(2).sum(1)
        return dot / (nr.sqrt() * no.sqrt()).clamp_min(torch.finfo(torch.float64).tiny)


@CALIBRATIONS.register("easyquant")
def easyquant(
    qmodel: QuantizedModel,
    batches: Sequence[tuple[torch.Tensor, ...]],
    *,
    rounds: int = DEFAULT_ROUNDS,
    max_samples: int = DEFAULT_SAMPLES,
    progress: bool | None = None,
) -> list[LayerCosine]:
    """Optimise the weight and activation scales of every quantized layer in place (see the module docstring).
    Needs a statically calibrated model. Returns each layer's cosine before and after, in graph order."""
    _check_static(qmodel)
    samples = _first_rows(batches, max_samples)
    result: list[LayerCosine] = []
    groups = _groups(qmodel)
    for group in tqdm(
        groups, desc="easyquant", disable=None if progress is None else not progress, leave=False
    ):
        result += _optimise_group(qmodel, group, samples, rounds)
    log.info(
        "easyquant: %d layers, mean cosine %.5f -> %.5f",
        len(result),
        sum(r.before for r in result) / max(len(result), 1),
        sum(r.after for r in result) / max(len(result), 1),
    )
    return result


def _check_static(qmodel: QuantizedModel) -> None:
    mode = qmodel.config.mode
    if mode is not Mode.STATIC or qmodel.config.activation is None:
        why = (
            "dynamic activation ranges are computed from each batch at run time, so there is no activation "
            "scale to search"
            if mode is Mode.DYNAMIC
            else "weight-only models keep activations float, so there is no activation scale to search"
        )
        raise ValueError(
            f"EasyQuant optimises weight and activation scales together and needs a static "
            f"config (e.g. preset 'w8a8'); this model is {mode.value}: {why}. "
            "Use calibration='estimator' for this mode."
        )
    missing = [n for n, q in qmodel.act_quantizers().items() if not q.dynamic and q.qparams is None]
    if missing:
        raise ValueError(
            f"EasyQuant starts from calibrated ranges but {missing[:3]} have none; "
            "run lowbit.api.calibrate(qmodel, batches) first"
        )


def _first_rows(batches: Sequence[tuple], max_samples: int) -> list[tuple]:
    out, n = [], 0
    for b in batches:
        if n >= max_samples:
            break
        take = min(len(b[0]), max_samples - n)
        out.append(tuple(t[:take] for t in b))
        n += take
    return out


def _input_quantizers(qmodel: QuantizedModel, node: fx.Node, kind: str) -> dict[int, str]:
    """Argument index -> the activation quantizer whose value (through pass-through ops) it carries."""
    acts = qmodel.act_quantizers()
    found = {}
    for idx, arg in enumerate(node.args[: 2 if kind == "matmul" else 1]):
        while isinstance(arg, fx.Node) and arg.op == "call_function" and arg.target in PASS_THROUGH:
            arg = arg.args[0]
        if isinstance(arg, fx.Node) and arg.op == "call_module" and arg.target in acts:
            found[idx] = str(arg.target)
    return found


def _groups(qmodel: QuantizedModel) -> list[list[str]]:
    """Quantized layers in graph order, joined into groups where they share an input quantizer."""
    groups: list[list[str]] = []
    group_of: dict[str, list[str]] = {}  # input quantizer -> the group holding its readers
    for info in qmodel.quantized_layers():
        joined = [group_of[q] for q in info.input_quantizers if q in group_of]
        group = joined[0] if joined else []
        if not joined:
            groups.append(group)
        for other in joined[1:]:
            if other is not group:  # this layer joins two groups: merge them
                group += other
                other.clear()
        group.append(info.name)
        for name in group:
            group_of.update({q: group for q in qmodel.layers[name].input_quantizers})
    return [g for g in groups if g]


class _Stop(Exception):
    """Raised by _ArgRecorder once it has what it came for: the rest of the forward is not needed."""


class _ArgRecorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, wanted: set[str]) -> None:
        super().__init__(gm)
        self.wanted, self.seen = wanted, {}

    def run_node(self, n: fx.Node):
        if n.name in self.wanted:
            self.seen[n.name] = self.fetch_args_kwargs_from_env(n)
            if len(self.seen) == len(self.wanted):
                raise _Stop
        return super().run_node(n)


def _capture(qmodel: QuantizedModel, names: list[str], samples: list[tuple]) -> list[_Layer]:
    """Each layer's float arguments (quantization off) on every sample batch, and its float outputs."""
    nodes = {n.name: n for n in qmodel.graph_module.graph.nodes}
    wanted = {qmodel.layers[name].node for name in names}
    calls: dict[str, list] = {w: [] for w in wanted}
    with qmodel.float_mode(), torch.inference_mode():
        for batch in samples:
            rec = _ArgRecorder(qmodel.graph_module, wanted)
            try:
                rec.run(*tree_leaves(list(batch)))
            except _Stop:
                pass
            for w in wanted:
                calls[w].append(rec.seen[w])
        layers = []
        for name in names:
            info = qmodel.layers[name]
            node = nodes[info.node]
            weight = qmodel.weight_of(info) if info.weight_quantizer else None
            refs = [node.target(*a, **k) for a, k in calls[info.node]]
            layers.append(
                _Layer(
                    name,
                    info.kind,
                    node.target,
                    calls[info.node],
                    _input_quantizers(qmodel, node, info.kind),
                    weight,
                    refs,
                )
            )
    return layers


def _scaled(qp: QParams, alpha: torch.Tensor | float) -> QParams:
    return replace(qp, scale=(qp.scale * alpha).clamp_min(MIN_SCALE))


def _clamp_bounds(gm: fx.GraphModule, qname: str) -> tuple[float, float] | None:
    """(min, max) of the clipping activation (ReLU, ReLU6, hardtanh, clamp) a quantizer reads, None when it reads
    something else; per-channel bounds give their widest."""
    node = next(n for n in gm.graph.nodes if n.op == "call_module" and n.target == qname)
    src = node.args[0]
    found = clip_bounds(gm, src) if isinstance(src, fx.Node) else None
    return None if found is None else (float(found[0].min()), float(found[1].max()))


def _alphas_within(qp: QParams, bounds: tuple[float, float] | None) -> list[float]:
    """The alphas whose scaled range stays inside the clamp the quantizer reads. A range past the clamp wastes
    codes on values that cannot occur, and it stops onnxruntime from folding the clamp into the quantize (a ReLU6
    conv would then run as a float kernel)."""
    alphas = ALPHAS.tolist()
    if bounds is None or not isinstance(qp.qtype, IntQType) or qp.scale.numel() != 1:
        return alphas
    zp, s = float(qp.zero_point.reshape(-1)[0]), float(qp.scale.reshape(-1)[0])
    lo, hi = (qp.qtype.qmin - zp) * s, (qp.qtype.qmax - zp) * s  # the range at alpha 1
    ok = [a for a in alphas if a * hi <= bounds[1] * (1 + 1e-6) and a * lo >= bounds[0] * (1 + 1e-6)]
    return ok or [1.0]


def _searchable(qp: QParams | None) -> bool:
    return qp is not None and qp.scale_storage is None  # two-level (VS-Quant, MX) scales keep their encoding


def _optimise_group(
    qmodel: QuantizedModel, names: list[str], samples: list[tuple], rounds: int
) -> list[LayerCosine]:
    gm = qmodel.graph_module
    with torch.inference_mode():
        layers = _capture(qmodel, names, samples)
        acts = {q for layer in layers for q in layer.act.values()}
        act0 = {q: gm.get_submodule(q).qparams for q in acts}
        act = dict(act0)
        bounds = {q: _clamp_bounds(gm, q) for q in acts}
        wq = {
            L.name: gm.get_submodule(qmodel.layers[L.name].weight_quantizer)
            for L in layers
            if L.weight is not None
        }
        w0 = {n: q.qparams for n, q in wq.items()}
        w = dict(w0)
        w_hat = {n: q.w_hat for n, q in wq.items()}
        before = [L.cosine(act, w_hat.get(L.name)) for L in layers]
        for _ in range(rounds):
            for q in sorted(acts):
                if _searchable(act0[q]):
                    readers = [L for L in layers if q in L.act.values()]
                    alphas = _alphas_within(act0[q], bounds[q])
                    score = [
                        sum(L.cosine({**act, q: _scaled(act0[q], a)}, w_hat.get(L.name)) for L in readers)
                        for a in alphas
                    ]
                    act[q] = _scaled(act0[q], alphas[int(torch.tensor(score).argmax())])
            for L in layers:
                if L.name in wq and _searchable(w0[L.name]):
                    w[L.name], w_hat[L.name] = _search_weight(L, act, w0[L.name], w[L.name], w_hat[L.name])
        after = [L.cosine(act, w_hat.get(L.name)) for L in layers]
    for q in acts:  # clone: scales made under inference_mode could not be saved for backward (QAT)
        gm.get_submodule(q).qparams = replace(act[q], scale=act[q].scale.clone())
    for n, q in wq.items():
        if w[n] is not w0[n]:
            q.set_qparams(
                next(L.weight for L in layers if L.name == n), replace(w[n], scale=w[n].scale.clone())
            )
    return [LayerCosine(L.name, b, a) for L, b, a in zip(layers, before, after, strict=True)]


def _search_weight(
    layer: _Layer, act: dict[str, QParams], qp0: QParams, qp_cur: QParams, w_hat_cur: torch.Tensor
):
    """Best S_w = alpha * S_w0 (per output channel when the weight is per-channel on axis 0); kept only if the
    layer's cosine does not drop (per-channel optima need not raise the per-sample cosine)."""
    c = layer.weight.shape[0]
    per_channel = (
        isinstance(qp0.granularity, PerChannel) and qp0.granularity.axis == 0 and qp0.scale.numel() == c
    )
    if per_channel and layer.kind in CHANNEL_AXIS:
        score = torch.stack(
            [layer.channel_cosine(act, fake_quantize(layer.weight, _scaled(qp0, a))) for a in ALPHAS.tolist()]
        )  # (n_alpha, C)
        qp = _scaled(qp0, ALPHAS[score.argmax(0)])  # alpha per channel, shape (C,)
    else:
        score = torch.tensor(
            [layer.cosine(act, fake_quantize(layer.weight, _scaled(qp0, a))) for a in ALPHAS.tolist()]
        )
        qp = _scaled(qp0, ALPHAS[int(score.argmax())].item())
    w_hat = fake_quantize(layer.weight, qp)
    if layer.cosine(act, w_hat) >= layer.cosine(act, w_hat_cur):
        return qp, w_hat
    return qp_cur, w_hat_cur


__all__ = ["ALPHAS", "LayerCosine", "easyquant"]
