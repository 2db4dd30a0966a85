"""Bias correction: remove the mean shift quantization puts on each layer's output.

Nagel, van Baalen, Blankevoort, Welling, "Data-Free Quantization Through Weight Equalization and Bias
Correction" (ICCV 2019), section 4.2. Quantizing W to W_tilde = W + eps shifts a layer's expected output by
E[y_tilde] - E[y] = eps E[x] (eq. 12); subtracting it from the bias makes the quantized layer unbiased.

- mode "weight": the paper's correction b -= eps E[x] with E[x] the per-channel mean of the layer's float input
  on the calibration rows.
- mode "analytic": the paper's *data-free* variant, b -= eps E[x] with E[x] the mean of the clipped normal that
  the BatchNorm folded into the producing layer assumes (`lowbit.ptq.analytic_input`; eq. 12-13 and the
  appendix). It reads no calibration data. Layers whose input has no BatchNorm statistics (the stem reading
  the image, layers after add, concat or pooling) are left as they are; their `Correction` says so and the
  pass logs them.
- mode "empirical" (default; the paper's empirical bias correction): layer by layer in graph order, the mean
  output of the float model minus that of the quantized model (earlier layers quantized and already
  corrected) per output channel, added to the bias. It removes the mean error of the activation quantization
  too, and leaves each corrected layer's mean output error on the calibration rows at zero.

"empirical" and "weight" run in one sweep of the graph (lowbit.ptq.runner), on the first `samples` calibration
rows. The corrected bias is the layer's own bias, so `qmodel.float_mode()` afterwards runs with corrected biases
too (the float reference of later passes moves by the correction); layers without a bias get one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lowbit.graph.nodes import get_attr_tensor, set_attr_tensor
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.ptq import register_pass
from lowbit.ptq.analytic_input import analytic_input_mean
from lowbit.ptq.equalize import bias_node, ensure_bias
from lowbit.ptq.recording import record
from lowbit.ptq.runner import GraphRunner, first_rows, runners

KINDS = ("conv1d", "conv2d", "linear")
MODES = ("empirical", "weight", "analytic")
DEFAULT_SAMPLES = 128
NO_STATS = "input has no BatchNorm statistics"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Correction:
    """The shift added to one layer's bias (mean absolute value over its output channels); `skipped` says why a
    layer was left uncorrected (mode "analytic")."""

    layer: str
    mean_abs_shift: float
    skipped: str = ""


def channel_mean(y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-channel mean of a layer output (channels on axis 1 for convolutions, last for linear)."""
    axis = -1 if kind == "linear" else 1
    return y.movedim(axis, -1).reshape(-1, y.shape[axis]).double().mean(0)


def _pooled_mean(values: list[torch.Tensor], kind: str) -> torch.Tensor:
    """Channel mean over several batches' outputs, weighted by their element counts."""
    means = [channel_mean(v, kind) for v in values]
    counts = torch.tensor([v.numel() / v.shape[-1 if kind == "linear" else 1] for v in values], dtype=torch.float64)
    return (torch.stack(means) * counts[:, None]).sum(0) / counts.sum()


def _weight_shift(qmodel: QuantizedModel, info, ex: torch.Tensor) -> torch.Tensor:
    """eps E[x]: the layer applied to its constant mean input with the weight error as weight (no bias)."""
    wq = qmodel.graph_module.get_submodule(info.weight_quantizer)
    eps = (wq.w_hat - qmodel.weight_of(info)).double()
    if info.kind == "linear":
        return eps @ ex
    node = next(n for n in qmodel.graph_module.graph.nodes if n.name == info.node)
    groups = int(node.args[6]) if len(node.args) > 6 else 1
    x = ex.reshape(1, -1, *([1] * (eps.dim() - 2))).expand(1, -1, *eps.shape[2:])
    conv = torch.nn.functional.conv2d if info.kind == "conv2d" else torch.nn.functional.conv1d
    return conv(x, eps, groups=groups).reshape(-1)


def _in_channels(qmodel: QuantizedModel, info) -> int:
    w = qmodel.weight_of(info)
    node = next(n for n in qmodel.graph_module.graph.nodes if n.name == info.node)
    groups = int(node.args[6]) if info.kind != "linear" and len(node.args) > 6 else 1
    return w.shape[1] * groups


def _analytic(qmodel: QuantizedModel, info, node) -> torch.Tensor | None:
    """-eps E[x] with E[x] from BatchNorm statistics, or None where the input has none."""
    ex = analytic_input_mean(qmodel.graph_module, node)
    if ex is None or ex.numel() != _in_channels(qmodel, info):
        return None
    return -_weight_shift(qmodel, info, ex)


def _layers(qmodel: QuantizedModel):
    return [i for i in qmodel.quantized_layers() if i.kind in KINDS and i.weight_quantizer]


def _correct(qmodel, info, node, float_runs, quant_runs, mode: str) -> torch.Tensor:
    x_node = node.args[0]
    ref = record(float_runs, [x_node, node], qmodel.float_mode())
    if mode == "weight":
        xs = [ref[0].value] if ref[0].kind == "rows" else []
        return -_weight_shift(qmodel, info, _pooled_mean(xs, "linear" if info.kind == "linear" else "conv"))
    outs = [r.run_until([node])[node] for r in quant_runs]
    delta = channel_mean(ref[1].value, info.kind) - _pooled_mean(outs, info.kind)
    axis_shape = (-1,) if info.kind == "linear" else (-1,) + (1,) * (outs[0].dim() - 2)
    for r, y in zip(quant_runs, outs, strict=True):
        r.set_value(node, y + delta.to(y.dtype).reshape(axis_shape))
    return delta


@register_pass("bias_correction", "quantized", paper="Nagel et al. 2019, Data-Free Quantization (section 4.2)")
def bias_correction(qmodel: QuantizedModel, batches, *, progress=None, mode: str = "empirical",
                    samples: int = DEFAULT_SAMPLES) -> list[Correction]:
    """Correct the bias of every quantized conv/linear layer in place (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"bias_correction mode must be one of {MODES}, not {mode!r}")
    if mode == "analytic":
        return _correct_analytic(qmodel)
    gm = qmodel.graph_module
    nodes = {n.name: n for n in gm.graph.nodes}
    layers = _layers(qmodel)
    paths = {i.name: ensure_bias(gm, nodes[i.node]) for i in layers}  # before the runners list the nodes
    gm.recompile()
    rows = first_rows(batches, samples)
    float_runs = runners(gm, rows)
    quant_runs: list[GraphRunner] = runners(gm, rows) if mode == "empirical" else []
    out = []
    with torch.no_grad():
        for info in tqdm(layers, desc="bias correction", disable=None if progress is None else not progress,
                         leave=False):
            node = nodes[info.node]
            delta = _correct(qmodel, info, node, float_runs, quant_runs, mode)
            b = get_attr_tensor(gm, bias_node(node))
            set_attr_tensor(gm, paths[info.name], (b + delta.to(b.dtype)).detach())
            out.append(Correction(info.name, float(delta.abs().mean())))
    return out


def _correct_analytic(qmodel: QuantizedModel) -> list[Correction]:
    gm = qmodel.graph_module
    nodes = {n.name: n for n in gm.graph.nodes}
    out = []
    with torch.no_grad():
        for info in _layers(qmodel):
            node = nodes[info.node]
            delta = _analytic(qmodel, info, node)
            if delta is None:
                out.append(Correction(info.name, 0.0, NO_STATS))
                continue
            path = ensure_bias(gm, node)
            b = get_attr_tensor(gm, bias_node(node))
            set_attr_tensor(gm, path, (b + delta.to(b.dtype)).detach())
            out.append(Correction(info.name, float(delta.abs().mean())))
    gm.recompile()
    skipped = [c.layer for c in out if c.skipped]
    log.info("analytic bias correction: %d layers corrected, %d without BatchNorm statistics: %s",
             len(out) - len(skipped), len(skipped), ", ".join(skipped))
    return out


__all__ = ["Correction", "bias_correction", "channel_mean"]
