"""Output reconstruction with learned rounding: AdaRound layer by layer, BRECQ and QDrop block by block.

- "adaround": Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization" (ICML 2020). Per
  layer, learn the rounding (lowbit.ptq.adaround) minimising || W x - W_tilde x_tilde ||^2, with x the float
  model's input to the layer and x_tilde the quantized model's (earlier layers already rounded; the
  asymmetric form of eq. 25), activation ranges fixed.
- "brecq": Li et al., "BRECQ: Pushing the Limit of Post-Training Quantization by Block Reconstruction"
  (ICLR 2021). The same rounding learned for all layers of a block at once (lowbit.ptq.blocks) against the
  float block's output, with activation step sizes learned too (LSQ, lowbit.ptq.learned_act).
- "qdrop": Wei et al., "QDrop: Randomly Dropping Quantization for Extremely Low-bit Post-Training Quantization"
  (ICLR 2022). BRECQ with each activation quantizer of the block dropped element-wise with probability p.

Loss (BRECQ's and QDrop's code): the squared error summed over channels, averaged over rows and positions, plus
lam * f_reg with beta annealed 20 -> 2 after a 20% warm-up. Adam, lr for V, act_lr for step sizes (4e-5 as
both papers). The papers run 20,000 iterations per unit on a GPU; lowbit's default of 300 fits a CPU (see
BENCHMARKS.md, "Repairing accuracy at low bits"). `iters` counts per quantized layer: a block of k layers runs
k * iters steps, so BRECQ and QDrop give each layer's rounding as many steps as AdaRound does. With a fixed
count per block (the papers' convention, harmless at 20,000) a few hundred steps shared by up to eight layers
left blocks under-trained: fashion-cnn W2A4 at 300 went from BRECQ 0.661 / QDrop 0.730 (per block) to 0.812 /
0.795 (per layer; AdaRound 0.826), BENCHMARKS.md's repair table before and after.
Inputs and targets are recorded on the first `samples` calibration rows with `lowbit.ptq.runner` (one sweep of
the graph for all units). Each pass returns one `UnitResult` per unit with the output error under nearest
rounding and after reconstruction.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, fields, replace

import torch
from tqdm.auto import tqdm

from lowbit.graph.nodes import get_attr_tensor
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.graph.quantizers import ActQuantizer, WeightQuantizer
from lowbit.ptq import adaround as ar
from lowbit.ptq import learned_act, register_pass
from lowbit.ptq.blocks import MAX_LAYERS, Block, partition, subgraph
from lowbit.ptq.recording import Rows, record
from lowbit.ptq.runner import first_rows, runners

log = logging.getLogger(__name__)
EVAL_ROWS = 256  # rows on which the error before and after is reported


@dataclass(frozen=True)
class Settings:
    unit: str = "block"  # "layer" (AdaRound) or "block" (BRECQ, QDrop)
    iters: int = 300  # per quantized layer (a block of k layers: k * iters steps)
    batch: int = 32  # rows per iteration (the papers' 32)
    lr: float = 1e-2  # Adam on V; the papers' 1e-3 barely moves V in a few hundred iterations (3e-2 did better
    # still on a synthetic layer; not yet measured on the zoo models)
    act_lr: float = 4e-5  # Adam on activation step sizes (BRECQ, QDrop)
    lam: float = 0.01  # weight of the rounding regulariser
    warmup: float = ar.WARMUP
    samples: int = 256  # calibration rows recorded
    learn_act: bool = False
    drop: float = 0.0  # QDrop's p
    max_layers: int = MAX_LAYERS
    seed: int = 0


ADAROUND = Settings(unit="layer")
BRECQ = Settings(unit="block", learn_act=True)
QDROP = Settings(unit="block", learn_act=True, drop=0.5)


@dataclass(frozen=True)
class UnitResult:
    """Output error of one unit on the recorded rows under nearest rounding and after reconstruction."""

    name: str
    layers: tuple[str, ...]
    error_nearest: float
    error_learned: float


def output_error(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over the channel axis (1 for NCHW, last otherwise), averaged over the rest."""
    d = (out - target).pow(2)
    if d.dim() < 2:
        return d.mean()
    return d.sum(1 if d.dim() == 4 else -1).mean()


def reconstruct(qmodel: QuantizedModel, batches, settings: Settings, progress=None, desc="reconstruct"):
    """Reconstruct every unit of `qmodel` in graph order, in place; returns one UnitResult per unit."""
    gm = qmodel.graph_module
    samples = first_rows(batches, settings.samples)
    quant_runs, float_runs = runners(gm, samples), runners(gm, samples)
    grads = {p: p.requires_grad for p in gm.parameters()}
    for p in grads:
        p.requires_grad_(False)
    results = []
    try:
        units = [b for b in partition(qmodel, settings.unit, settings.max_layers) if _learnable(gm, b, settings)]
        for block in tqdm(units, desc=desc, disable=None if progress is None else not progress, leave=False):
            inputs = record(quant_runs, block.inputs, contextlib.nullcontext())
            targets = record(float_runs, block.outputs, qmodel.float_mode())
            results.append(_reconstruct_unit(gm, block, inputs, targets, settings))
            for r in quant_runs:
                if r.invalidates(block.nodes):
                    r.restart()
    finally:
        for p, g in grads.items():
            p.requires_grad_(g)
    if results:
        log.info("%s: %d units, output error %.4g -> %.4g", desc, len(results),
                 sum(r.error_nearest for r in results), sum(r.error_learned for r in results))
    return results


def _modules(gm, block: Block, settings: Settings):
    """The block's weight quantizers AdaRound can round and act quantizers a learned quantizer can replace."""
    weights, acts = {}, {}
    for n in block.nodes:
        if n.op != "call_module":
            continue
        m = gm.get_submodule(str(n.target))
        if isinstance(m, WeightQuantizer) and m.enabled and ar.supports(m.qparams):
            weights[str(n.target)] = (m, get_attr_tensor(gm, n.args[0]))
        elif isinstance(m, ActQuantizer) and m.enabled and not m.dynamic and learned_act.supports(m.qparams):
            acts[str(n.target)] = m
    return weights, acts


def _learnable(gm, block: Block, settings: Settings) -> bool:
    weights, acts = _modules(gm, block, settings)
    return bool(weights) or (settings.learn_act and bool(acts))


def _error(sub, inputs: list[Rows], targets: list[Rows], idx: torch.Tensor) -> torch.Tensor:
    out = sub(*[x.take(idx) for x in inputs])
    pairs = [(o, y.take(idx)) for o, y in zip(out, targets, strict=True)]
    return sum(output_error(o, y) for o, y in pairs if isinstance(o, torch.Tensor) and o.is_floating_point())


def unit_steps(block: Block, s: Settings) -> int:
    """Optimisation steps for `block`: `iters` per quantized layer it holds."""
    return s.iters * max(len(block.layers), 1)


def _reconstruct_unit(gm, block: Block, inputs, targets, s: Settings) -> UnitResult:
    n = targets[0].rows
    eval_idx = torch.arange(min(n, EVAL_ROWS))
    with torch.no_grad():
        before = float(_error(subgraph(gm, block), inputs, targets, eval_idx))
    sub = subgraph(gm, block)
    weights, acts = _modules(gm, block, s)
    rounding = {name: ar.AdaRoundWeight(w, m.qparams) for name, (m, w) in weights.items()}
    learned = {name: learned_act.LearnedActQuantizer(m.qparams, s.learn_act, s.drop) for name, m in acts.items()}
    for name, module in {**rounding, **learned}.items():
        setattr(sub, name, module)
    groups = [{"params": [r.v for r in rounding.values()], "lr": s.lr}]
    if s.learn_act and learned:
        groups.append({"params": [a.scale for a in learned.values()], "lr": s.act_lr})
    opt = torch.optim.Adam([g for g in groups if g["params"]])
    steps = unit_steps(block, s)
    schedule = ar.BetaSchedule(steps, s.warmup)
    gen = torch.Generator().manual_seed(s.seed)
    with torch.enable_grad():
        for t in range(steps):
            idx = torch.randint(n, (min(s.batch, n),), generator=gen)
            loss = _error(sub, inputs, targets, idx)
            if rounding and schedule.active(t):
                beta = schedule.beta(t)
                loss = loss + s.lam * sum(r.regularizer(beta) for r in rounding.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for name, r in rounding.items():
        gm.get_submodule(name).w_hat = r.hard_weight()
    if s.learn_act:
        for name, a in learned.items():
            gm.get_submodule(name).qparams = a.qparams()
    with torch.no_grad():
        after = float(_error(subgraph(gm, block), inputs, targets, eval_idx))
    return UnitResult(block.name, block.layers, before, after)


def _run(qmodel, batches, progress, desc: str, base: Settings, options: dict) -> list[UnitResult]:
    names = {f.name for f in fields(Settings)} - {"unit", "learn_act"}
    unknown = sorted(set(options) - names)
    if unknown:
        raise ValueError(f"{desc} has no option {unknown}; options: {sorted(names)}")
    for name, module in qmodel.act_quantizers().items():
        if module.qparams is None and not module.dynamic and module.enabled:
            raise ValueError(f"{desc} needs calibrated activation ranges; {name} has none")
    return reconstruct(qmodel, batches, replace(base, **options), progress, desc)


@register_pass("adaround", "quantized", paper="Nagel et al. 2020, Up or Down? Adaptive Rounding for PTQ")
def adaround(qmodel: QuantizedModel, batches, *, progress=None, **options) -> list[UnitResult]:
    """AdaRound, layer by layer (options: the fields of Settings, e.g. iters, lr, lam, batch, samples)."""
    return _run(qmodel, batches, progress, "adaround", ADAROUND, options)


@register_pass("brecq", "quantized", paper="Li et al. 2021, BRECQ: Block Reconstruction")
def brecq(qmodel: QuantizedModel, batches, *, progress=None, **options) -> list[UnitResult]:
    """BRECQ: AdaRound over blocks with learned activation step sizes (options: the fields of Settings)."""
    return _run(qmodel, batches, progress, "brecq", BRECQ, options)


@register_pass("qdrop", "quantized", paper="Wei et al. 2022, QDrop: Randomly Dropping Quantization")
def qdrop(qmodel: QuantizedModel, batches, *, progress=None, **options) -> list[UnitResult]:
    """QDrop: BRECQ with activation quantization dropped with probability `drop` (0.5) while learning."""
    return _run(qmodel, batches, progress, "qdrop", QDROP, options)


__all__ = ["ADAROUND", "BRECQ", "QDROP", "Settings", "UnitResult", "adaround", "brecq", "output_error", "qdrop",
           "reconstruct", "unit_steps"]
