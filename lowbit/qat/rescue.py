"""rescue: PTQ first, and fine-tune with quantization in the loop only when PTQ misses the tolerance.

    result = lowbit.qat.rescue(qmodel, train_batches, eval_fn, tolerance=0.01, max_steps=300, lr=1e-4)
    result.model, result.before, result.after, result.steps, result.seconds, result.met

The fine-tune runs on the QuantizedModel itself (a copy): its BatchNorms are already folded with running
statistics (the "folded, frozen" BN policy of Jacob et al. 2018, section 3.2), its quantizers are swapped for
trainable stand-ins initialised from the PTQ QParams (graph_quantizers.py: "lsq" learns the scales too, "ste"
keeps them), every float parameter trains with Adam, and the metric is measured every `eval_every` steps; it
stops as soon as the metric is within `tolerance` of the reference. The returned model is a QuantizedModel
holding the best measured state (the PTQ one when fine-tuning never beat it).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.api import check_batches, quantize
from lowbit.config import QuantConfig
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.qat.graph_quantizers import RESCUE_METHODS, install, materialize, set_training

log = logging.getLogger(__name__)
DEFAULT_EVAL_EVERY = 25
SCALE_LR_FACTOR = (
    0.1  # the learned scales move at a tenth of the weights' learning rate (Adam steps are absolute)
)
CALIB_BATCHES = 8  # batches of train_batches used to calibrate when rescue is given a float model


@dataclass(frozen=True)
class RescueResult:
    """before / after: the metric of the PTQ model and of the returned one; reference: the fp32 metric;
    steps: optimizer steps taken; seconds: wall time after PTQ (evaluations included);
    met: whether `after` is within tolerance; history: (step, metric) at every evaluation."""

    model: QuantizedModel
    before: float
    after: float
    reference: float
    steps: int
    seconds: float
    met: bool
    note: str
    history: tuple[tuple[int, float], ...] = ()


def rescue(
    model: QuantizedModel | nn.Module,
    train_batches: Iterable,
    eval_fn: Callable[[nn.Module], float],
    *,
    tolerance: float,
    reference_metric: float | None = None,
    max_steps: int = 300,
    lr: float = 1e-4,
    method: str = "lsq",
    config: QuantConfig | str | None = None,
    eval_every: int = DEFAULT_EVAL_EVERY,
    loss_fn: Callable[..., torch.Tensor] = nn.functional.cross_entropy,
    higher_is_better: bool = True,
    progress: bool | None = None,
) -> RescueResult:
    """`model`: a QuantizedModel from lowbit.api.quantize, or a float model with `config` (calibrated on the
    first batches of `train_batches`). `train_batches`: batches (inputs..., target), cycled. `eval_fn(model)`
    returns the metric. `reference_metric`: the fp32 metric (default: eval_fn with quantization off).
    Within tolerance: |reference - metric| counted in the bad direction only is <= `tolerance`."""
    _check(tolerance, max_steps, eval_every, lr, method)
    batches = check_batches(train_batches)
    if any(len(b) < 2 for b in batches):
        raise ValueError(
            "train_batches hold (inputs..., target) tuples; a batch with fewer than 2 items has no target"
        )
    qmodel = _quantized(model, config, batches)
    t0 = time.perf_counter()
    with torch.no_grad():
        if reference_metric is None:
            with qmodel.float_mode():
                reference_metric = float(eval_fn(qmodel))
        before = float(eval_fn(qmodel))

    def within(metric: float) -> bool:
        loss = reference_metric - metric if higher_is_better else metric - reference_metric
        return loss <= tolerance

    if within(before):
        note = (
            f"PTQ is within tolerance ({before:.4g} vs reference {reference_metric:.4g}): returned unchanged"
        )
        return RescueResult(qmodel, before, before, reference_metric, 0, time.perf_counter() - t0, True, note)
    plan = _Plan(max_steps, lr, method, eval_every, loss_fn, higher_is_better, progress)
    work, steps, history = _finetune(qmodel, batches, eval_fn, within, plan, before)
    with torch.no_grad():
        after = float(eval_fn(work))
    seconds = time.perf_counter() - t0
    met = within(after)
    note = f"fine-tuned {steps} steps with {method}: {before:.4g} -> {after:.4g}"
    note += f" (reference {reference_metric:.4g})"
    log.info("rescue: %s in %.1f s%s", note, seconds, "" if met else ", tolerance not met")
    return RescueResult(work, before, after, reference_metric, steps, seconds, met, note, tuple(history))


def _check(tolerance, max_steps, eval_every, lr, method) -> None:
    if not tolerance >= 0:
        raise ValueError(
            f"tolerance is the metric drop allowed versus fp32 and must be >= 0, got {tolerance}"
        )
    if not isinstance(max_steps, int) or max_steps <= 0:
        raise ValueError(f"max_steps bounds the fine-tune and must be a positive integer, got {max_steps!r}")
    if not isinstance(eval_every, int) or eval_every <= 0:
        raise ValueError(f"eval_every must be a positive integer, got {eval_every!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if method not in RESCUE_METHODS:
        raise ValueError(f"rescue method must be one of {RESCUE_METHODS}, not {method!r}")


def _quantized(model, config, batches) -> QuantizedModel:
    if isinstance(model, QuantizedModel):
        return model
    if config is None:
        raise ValueError(
            "rescue got a float model: pass config= (a QuantConfig or preset name) to quantize it, "
            "or pass the QuantizedModel that lowbit.api.quantize returned"
        )
    calib = [b[:-1] for b in batches[:CALIB_BATCHES]]
    return quantize(model, calib, config)


@dataclass(frozen=True)
class _Plan:
    max_steps: int
    lr: float
    method: str
    eval_every: int
    loss_fn: Callable[..., torch.Tensor]
    higher_is_better: bool
    progress: bool | None


def _finetune(qmodel, batches, eval_fn, within, plan: _Plan, before: float):
    """Train a copy of `qmodel` with trainable quantizers; returns (the QuantizedModel at its best measured
    state, steps taken, evaluation history)."""
    max_steps, lr, method, eval_every = plan.max_steps, plan.lr, plan.method, plan.eval_every
    higher_is_better, progress, loss_fn = plan.higher_is_better, plan.progress, plan.loss_fn
    work = copy.deepcopy(qmodel)
    gm = work.graph_module
    stand_ins = install(gm, method)
    scales = [s.step for s in stand_ins.values() if s.step is not None]
    scale_ids = {id(p) for p in scales}
    weights = [p for p in gm.parameters() if p.is_floating_point() and id(p) not in scale_ids]
    for p in weights:
        p.requires_grad_(True)
    groups = [{"params": weights, "lr": lr}] + (
        [{"params": scales, "lr": lr * SCALE_LR_FACTOR}] if scales else []
    )
    opt = torch.optim.Adam(groups)
    best, best_state, history, step = before, copy.deepcopy(gm.state_dict()), [(0, before)], 0
    bar = tqdm(
        total=max_steps, desc="rescue", disable=None if progress is None else not progress, leave=False
    )
    while step < max_steps:
        *inputs, target = batches[step % len(batches)]
        set_training(stand_ins, True)
        loss = loss_fn(work(*inputs), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        if step % eval_every and step != max_steps:
            continue
        set_training(stand_ins, False)
        with torch.no_grad():
            metric = float(eval_fn(work))
        history.append((step, metric))
        if (metric > best) if higher_is_better else (metric < best):
            best, best_state = metric, copy.deepcopy(gm.state_dict())
        if within(metric):
            break
    bar.close()
    set_training(stand_ins, False)
    gm.load_state_dict(best_state)
    for p in gm.parameters():
        p.requires_grad_(False)
    materialize(gm, stand_ins)
    return work, step, history
