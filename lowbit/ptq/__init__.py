"""Model-level post-training passes, one per file, each registered by the name a QuantConfig uses.

    from lowbit.ptq import CALIBRATIONS, PASSES
    CALIBRATIONS.get("easyquant")(qmodel, batches)   # what config.calibration == "easyquant" runs
    config = lowbit.preset("w4a8", passes=(PassSpec("adaround"),))

A calibration strategy is a function `(qmodel, batches, *, progress=None, **options)` that runs after the
estimators' calibration and rewrites the quantizers' QParams in place.

A pass (`PASSES`) runs at one of two stages of `lowbit.quantize`:
- "float": on the captured float graph (BatchNorm folded, no quantizers yet), as
  `fn(gm, batches, *, config, progress=None, **options)`; it may rewrite weights (equalization, SmoothQuant).
- "quantized": on the calibrated QuantizedModel, as `fn(qmodel, batches, *, progress=None, **options)`; it may
  rewrite weights, cached quantized weights and QParams (bias correction, AdaRound, GPTQ).
Passes run in the order the config lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lowbit.registry import Registry

CALIBRATIONS: Registry[Callable] = Registry("calibration strategy")

STAGES = ("float", "quantized")


@dataclass(frozen=True)
class Pass:
    name: str
    stage: str
    fn: Callable
    paper: str = ""


PASSES: Registry[Pass] = Registry("post-training pass")


def register_pass(name: str, stage: str, paper: str = "") -> Callable[[Callable], Callable]:
    """Register `fn` as the pass `name` running at `stage` ("float" or "quantized")."""
    if stage not in STAGES:
        raise ValueError(f"pass stage must be one of {STAGES}, not {stage!r}")

    def deco(fn: Callable) -> Callable:
        PASSES.register(name)(Pass(name, stage, fn, paper))
        return fn

    return deco


def run_passes(stage: str, target, batches, config, progress=None) -> None:
    """Run the config's passes of one stage on `target` (the float graph or the QuantizedModel)."""
    for spec in config.passes:
        p = PASSES.get(spec.name)
        if p.stage != stage:
            continue
        options = dict(spec.options)
        if stage == "float":
            p.fn(target, batches, config=config, progress=progress, **options)
        else:
            p.fn(target, batches, progress=progress, **options)


# Registration imports; they need the registries defined above.
from lowbit.ptq import (  # noqa: E402,F401
    bias_correction,
    easyquant,
    equalize,
    outliers,  # outlier_channels
    reconstruction,  # adaround, brecq, qdrop
)

__all__ = ["CALIBRATIONS", "PASSES", "Pass", "register_pass", "run_passes"]

from lowbit import llm  # noqa: E402,F401  (last: LLM passes: smoothquant, gptq, awq, llm_int8)
