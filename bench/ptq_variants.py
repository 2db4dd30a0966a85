"""lowbit's post-training variants for the benchmark registry (the PTQ table of issue 4).

They run as the torch simulation (fake quantization on float kernels), so bench/ptq.py scores them for the
task metric, size and calibration time, not latency: int8 speed comes from the exported model.
Imported by bench/ptq.py only, so that the runtime comparison (bench/run.py) keeps to deployable runtimes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from bench.common import Built, register_variant, torch_runner
from lowbit.calib import METHODS
from lowbit.config import PassSpec, QuantConfig, preset

ESTIMATORS = METHODS + ("easyquant",)


def w8a8(estimator: str, **changes) -> QuantConfig:
    cfg = preset("w8a8", **changes)
    if estimator == "easyquant":
        return replace(cfg, calibration="easyquant")
    return replace(cfg, activation=replace(cfg.activation, estimator=estimator))


CONFIGS: dict[str, tuple[Callable[[], QuantConfig], str]] = {
    **{f"lowbit-w8a8-{e}": (lambda e=e: w8a8(e), f"W8A8 static, activation ranges by {e}") for e in ESTIMATORS},
    "lowbit-w8a8-full": (lambda: w8a8("mse", fully_quantized=True),
                         "W8A8 static (mse), fully quantized: add/concat/pool/activation/norm outputs too"),
    "lowbit-w8a8-mse-smoothquant": (
        lambda: w8a8("mse", passes=(PassSpec("smoothquant", (("alpha", 0.8), ("explicit", True))),)),
        "W8A8 static (mse) + SmoothQuant alpha 0.8 with explicit multiplies (BERT's norms feed the residual)"),
    "lowbit-w8a8-mse-smoothquant-gelu": (
        lambda: w8a8("mse", passes=(PassSpec("smoothquant", (("alpha", 0.8), ("explicit", True),
                                                              ("after_activations", True))),)),
        "as lowbit-w8a8-mse-smoothquant, and multiplies after the GELUs too (before FFN-down)"),
    "lowbit-w8a8-mse-smoothquant-outliers": (
        lambda: w8a8("mse", passes=(PassSpec("smoothquant", (("alpha", 0.8), ("explicit", True))),
                                    PassSpec("outlier_channels"))),
        "as lowbit-w8a8-mse-smoothquant, then outlier input channels in float (pass outlier_channels)"),
    "lowbit-w8a8-mse-bias-correction": (lambda: w8a8("mse", passes=(PassSpec("bias_correction"),)),
                                        "W8A8 static (mse) + empirical bias correction"),
    "lowbit-w8a8-dynamic": (lambda: preset("w8a8-dynamic"), "W8A8, per-token dynamic activations"),
    "lowbit-w4a16": (lambda: preset("w4a16"), "W4A16, per-group 128 asymmetric weights"),
}


def build(task, calib, config: QuantConfig, note: str = ""):
    """Quantize the task's model; returns (Built, weight bytes, QuantizedModel)."""
    import lowbit

    start = time.perf_counter()
    qmodel = lowbit.quantize(task.model, calib, config, progress=False)
    seconds = time.perf_counter() - start
    kept = qmodel.summary()["kept_float"]
    extra = f"kept float: {', '.join(kept)}" if kept else ""
    built = Built(torch_runner(qmodel), None, seconds, "; ".join(filter(None, [note, extra])))
    return built, qmodel.weight_bytes()["total"], qmodel


def _register(name: str, make: Callable[[], QuantConfig], description: str) -> None:
    @register_variant(name, family="lowbit", description=f"lowbit {description} (torch simulation)")
    def _build(task, calib, workdir: Path) -> Built:
        return build(task, calib, make())[0]


for _name, (_make, _desc) in CONFIGS.items():
    _register(_name, _make, _desc)


def mixed_precision(task, calib, target: float, estimator: str = "mse"):
    """W8A8 plus automatic mixed precision: the fewest most sensitive layers kept float until the task's primary
    metric on its evaluation data meets `target`. Returns (Built, weight bytes, result)."""
    from lowbit.analysis.mixed_precision import auto_mixed_precision

    built, _, qmodel = build(task, calib, w8a8(estimator))
    start = time.perf_counter()
    result = auto_mixed_precision(
        qmodel, calib, target, metric=lambda m: task.evaluate(m)[task.primary_metric],
        higher_is_better=task.higher_is_better, progress=False,
    )
    kept = ", ".join(c.layer for c in result.layers) or "none"
    note = f"kept float to reach {task.primary_metric} {target:g}: {kept}"
    seconds = built.calib_s + time.perf_counter() - start
    return Built(built.make_runner, None, seconds, note), qmodel.weight_bytes()["total"], result
