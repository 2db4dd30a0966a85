"""GPTQ: layer-wise weight quantization with second-order error feedback.

Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
Transformers" (ICLR 2023, arXiv:2210.17323). For a linear layer with weight W (rows: outputs) and calibration
inputs X, minimise ||W X - Q X||^2 column by column: with H = 2 X X^T (damped by `percdamp` times its mean
diagonal), quantize column j, and spread its error over the not yet quantized columns through the upper
Cholesky factor of H^-1 (Algorithm 1):
    q_j = quant(w_j),  e = (w_j - q_j) / [H^-1]_jj,  W[:, j:] -= e [H^-1]_{j, j:}.
Updates are applied lazily per block of `blocksize` columns. `act_order` quantizes columns by decreasing
diag(H). Per-group scales are computed from the error-updated weights when their group starts, as in the
reference code; with `act_order` (or double-quantized scales) they are computed up front from W ("static
groups"), so that every group still covers consecutive input channels and the result is an ordinary PerGroup
QParams. Any qtype works (int3/int4, NF4): a column is rounded with the qtype's own encode/decode.

The pass "gptq" (stage "quantized") walks the QuantizedModel's graph over all calibration batches in lockstep
(`lowbit.llm.walk`): each linear layer is quantized from the inputs the already-quantized layers before it
produce, then runs with its GPTQ weight. It writes WeightQuantizer.w_hat (on the QParams' grid exactly) and
.qparams. Convolutions and matmuls without weights are left as the estimator quantized them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from lowbit.config import QuantSpec
from lowbit.core.granularity import PerChannel, PerGroup, PerTensor
from lowbit.core.qparams import QParams, double_quantize
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.graph.quantizers import make_estimator
from lowbit.llm.walk import flat_inputs, walk
from lowbit.ptq import register_pass

log = logging.getLogger(__name__)
BLOCKSIZE = 128
PERCDAMP = 0.01
ERROR_ROWS = 4096


def hessian(inputs: list[torch.Tensor]) -> torch.Tensor:
    """H = 2/n X X^T over the n input rows (tokens) of every calibration batch."""
    x = flat_inputs(inputs).to(torch.float32)  # (n, in)
    return 2 * (x.T @ x) / x.shape[0]


@dataclass
class _Grid:
    """Per-row scale and zero point of every group of columns: (out, n_groups)."""

    scale: torch.Tensor
    zero: torch.Tensor
    group: int  # columns per group
    storage: object = None  # DoubleQuantScales when the scales are double-quantized

    def fake_quant(self, w: torch.Tensor, col: int, qtype) -> torch.Tensor:
        s, z = self.scale[:, col // self.group], self.zero[:, col // self.group]
        return (qtype.decode(qtype.encode(w / s + z)) - z) * s


def _group_params(w: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) per row of `w` (out, cols) with the spec's estimator."""
    est = make_estimator(QuantSpec(spec.qtype, PerChannel(0), spec.symmetric, spec.estimator,
                                   spec.estimator_options))
    est.observe(w)
    qp = est.qparams(spec.qtype, symmetric=spec.symmetric)
    return qp.scale, qp.zero_point.to(torch.float32)


def _group_size(spec: QuantSpec, cols: int) -> int:
    g = spec.granularity
    if isinstance(g, PerGroup) and g.axis in (-1, 1):
        return g.size
    if isinstance(g, (PerChannel, PerTensor)) and getattr(g, "axis", 0) == 0:
        return cols
    raise ValueError(f"GPTQ quantizes linear weights per output channel or per group of input channels, "
                     f"not {g!r}")


def _static_grid(w: torch.Tensor, spec: QuantSpec, group: int) -> _Grid:
    if isinstance(spec.granularity, PerTensor):
        est = make_estimator(spec)
        est.observe(w)
        qp = est.qparams(spec.qtype, symmetric=spec.symmetric)
        return _Grid(qp.scale.expand(w.shape[0], 1), qp.zero_point.float().expand(w.shape[0], 1), group)
    params = [_group_params(w[:, i : i + group], spec) for i in range(0, w.shape[1], group)]
    scale, zero = torch.stack([p[0] for p in params], 1), torch.stack([p[1] for p in params], 1)
    if getattr(spec, "double_quant", False):
        qp = double_quantize(QParams(scale.reshape(-1), zero.reshape(-1).int(), spec.qtype, spec.granularity))
        return _Grid(qp.scale.reshape(scale.shape), zero, group, qp.scale_storage)
    return _Grid(scale, zero, group)


def gptq_quantize(w: torch.Tensor, h: torch.Tensor, spec: QuantSpec, *, blocksize: int = BLOCKSIZE,
                  percdamp: float = PERCDAMP, act_order: bool = False) -> tuple[torch.Tensor, QParams]:
    """(Q, QParams): W (out, in) quantized by GPTQ under `spec` with the Hessian `h` (in, in). Working memory is
    two copies of W (the error-updated W and Q) and one update temporary: an lm_head's is the largest."""
    W, H = w.detach().clone().to(torch.float32), h.clone().to(torch.float32)
    cols = W.shape[1]
    group = _group_size(spec, cols)
    dead = torch.diag(H) == 0
    H[dead, dead], W[:, dead] = 1.0, 0.0
    static = act_order or group == cols or getattr(spec, "double_quant", False)
    grid = _static_grid(W, spec, group) if static else _Grid(torch.empty(W.shape[0], cols // group),
                                                           torch.empty(W.shape[0], cols // group), group)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(cols)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Hinv1, Err1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2], torch.zeros(W.shape[0], i2 - i1)
        for i in range(i2 - i1):
            col = i1 + i if perm is None else int(perm[i1 + i])
            if not static and col % group == 0:  # a group starts: its scales from the updated weights
                grid.scale[:, col // group], grid.zero[:, col // group] = _group_params(
                    _next_columns(W1[:, i:], W[:, i2:], group), spec)
            q = grid.fake_quant(W1[:, i], col, spec.qtype)
            err = (W1[:, i] - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Q[:, i1 + i], Err1[:, i] = q, err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    Q = (Q if perm is None else Q[:, torch.argsort(perm)]).to(w.dtype)
    n = 1 if isinstance(spec.granularity, PerTensor) else None
    qp = QParams(grid.scale.reshape(-1)[:n], grid.zero.reshape(-1)[:n].round().to(torch.int32), spec.qtype,
                 spec.granularity, grid.storage)
    return Q, qp


def _next_columns(block_rest: torch.Tensor, after: torch.Tensor, n: int) -> torch.Tensor:
    """The first `n` columns of [block_rest | after], copying only those."""
    head = block_rest[:, :n]
    return head if head.shape[1] == n else torch.cat([head, after[:, : n - head.shape[1]]], 1)


def layer_error(w_hat: torch.Tensor, w: torch.Tensor, h: torch.Tensor) -> float:
    """tr((W_hat - W) H (W_hat - W)^T) / 2 = mean over rows of ||(W_hat - W) x||^2: the layer output error
    (summed over blocks of ERROR_ROWS output rows, so that an lm_head's difference is never copied whole)."""
    total = 0.0
    for r in range(0, w.shape[0], ERROR_ROWS):
        d = (w_hat[r : r + ERROR_ROWS] - w[r : r + ERROR_ROWS]).to(torch.float32)
        total += float(torch.einsum("oi,ij,oj->", d, h, d))
    return total / 2


@register_pass("gptq", "quantized", paper="Frantar et al. 2023, arXiv:2210.17323")
def gptq(qmodel: QuantizedModel, batches, *, progress=None, blocksize: int = BLOCKSIZE,
         percdamp: float = PERCDAMP, act_order: bool = False) -> dict[str, tuple[float, float]]:
    """Re-quantize every quantized linear layer's weight with GPTQ, in graph order, from the inputs the
    already-quantized layers produce. Returns {layer: (round-to-nearest error, GPTQ error)} (layer_error)."""
    gm = qmodel.graph_module
    targets = {i.node: i for i in qmodel.quantized_layers() if i.kind == "linear" and i.weight_quantizer}
    cache: dict = {}  # the last input node's Hessian (Q, K and V share one input)
    errors: dict[str, tuple[float, float]] = {}
    if not targets:
        return errors

    def before(node, calls):
        info = targets.get(node.name)
        if info is None:
            return None
        if node.args[0] not in cache:
            cache.clear()
            cache[node.args[0]] = hessian([args[0] for args, _ in calls])
        H = cache[node.args[0]]
        wq, w = gm.get_submodule(info.weight_quantizer), qmodel.weight_of(info).detach()
        rtn = layer_error(wq.w_hat, w, H)
        wq.w_hat = None  # the round-to-nearest weight is not needed while GPTQ works
        Q, qp = gptq_quantize(w, H, wq.spec, blocksize=blocksize, percdamp=percdamp, act_order=act_order)
        errors[info.name] = (rtn, layer_error(Q, w, H))
        wq.qparams, wq.w_hat = qp, Q
        return [((args[0], Q, *args[2:]), kwargs) for args, kwargs in calls]

    nodes = [n for n in gm.graph.nodes if n.name in targets]
    walk(gm, batches, before=before, last=nodes[-1] if nodes else None)
    if errors:
        rtn, ours = (sum(e[k] for e in errors.values()) for k in (0, 1))
        log.info("gptq: %d layers, summed layer error %.4g (round-to-nearest %.4g)", len(errors), ours, rtn)
    return errors


__all__ = ["gptq", "gptq_quantize", "hessian", "layer_error"]
