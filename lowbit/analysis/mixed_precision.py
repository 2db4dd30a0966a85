"""Automatic mixed precision: keep in float, or raise the bits of, the fewest most sensitive layers until a
target is met, and say which and why.

Layers are ranked by `sensitivity` (each layer quantized alone, model output SQNR against float). The top-k
are changed for growing k (1, 2, 4, ... until the target is met, then bisection between the last k that
failed and the first that met it), each evaluation toggling quantizers on the same QuantizedModel (no
re-capture). This finds the fewest layers when the metric improves with k, as it does when the ranking is
right (HAWQ, Dong et al. 2019, and most mixed-precision searches rest on the same assumption).

    result = auto_mixed_precision(qm, batches, target=30.0)                  # output SQNR >= 30 dB
    result = auto_mixed_precision(qm, batches, 0.999, metric="cosine", action="int16")
    result = auto_mixed_precision(qm, batches, 0.90, metric=lambda m: task.evaluate(m)["accuracy"])
    config = config.with_rules(*result.rules)                                 # the same choice next time
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from lowbit.analysis.mixed_precision_actions import make_action, rule_pattern
from lowbit.analysis.sensitivity import float_outputs, sensitivity
from lowbit.api import Batch, calibrate, check_batches, run_batch
from lowbit.config import LayerRule, Mode
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.metrics import cosine_similarity, sqnr_db

log = logging.getLogger(__name__)
BUILTIN_METRICS = {"sqnr": sqnr_db, "cosine": cosine_similarity}


@dataclass(frozen=True)
class LayerChoice:
    """A changed layer: its sensitivity rank (1 = most sensitive) and its error when quantized alone."""

    layer: str
    rank: int
    sensitivity_sqnr_db: float
    sensitivity_cosine: float
    reason: str


@dataclass(frozen=True)
class SearchStep:
    """The metric with the `k` most sensitive layers changed."""

    k: int
    metric: float
    met: bool


@dataclass(frozen=True, eq=False)
class MixedPrecisionResult:
    metric_name: str
    target: float
    higher_is_better: bool
    action: str
    metric_before: float  # every layer quantized as configured
    metric_after: float  # the returned model, measured after the change was made (and re-calibration)
    met: bool  # metric_after meets the target
    layers: tuple[LayerChoice, ...]
    steps: tuple[SearchStep, ...]
    rules: tuple[LayerRule, ...]
    all_layers_needed: bool
    qmodel: QuantizedModel = field(repr=False)

    def summary(self) -> str:
        op = ">=" if self.higher_is_better else "<="
        head = (
            f"{self.metric_name} {self.metric_before:.4g} -> {self.metric_after:.4g} (target {op} "
            f"{self.target:g}) with {len(self.layers)} layer(s) {self.action}"
        )
        rows = [f"  {c.rank:>3}. {c.layer}: alone SQNR {c.sensitivity_sqnr_db:.1f} dB" for c in self.layers]
        steps = ", ".join(f"k={s.k}: {s.metric:.4g}{' ok' if s.met else ''}" for s in self.steps)
        return "\n".join([head, *rows, f"  search: {steps}"])


class TargetNotMet(ValueError):
    """Even with every candidate layer changed, the metric misses the target."""


def auto_mixed_precision(
    qmodel: QuantizedModel,
    batches,
    target: float,
    *,
    metric: str | Callable[[QuantizedModel], float] | None = None,
    action: str = "float",
    max_layers: int | None = None,
    higher_is_better: bool = True,
    recalibrate: bool = True,
    progress: bool | None = None,
) -> MixedPrecisionResult:
    """Change the fewest most sensitive layers of `qmodel` (in place) until `metric` meets `target`.

    metric: "sqnr" (default; output SQNR in dB against the float model on `batches`), "cosine", or a callable
    `metric(qmodel) -> float` (e.g. accuracy on evaluation data) with `higher_is_better` saying which way is
    better. action: "float" keeps layers float; "int16" (any "intN") raises their weight and input bits and
    re-calibrates their input ranges on `batches`. max_layers caps how many layers may change.
    `batches` are calibration data: with `recalibrate` (default) the whole model is re-calibrated on them
    after the change, as quantize() with the returned rules would do; pass evaluation data to `metric`."""
    batches = check_batches(batches)
    name, evaluate = _metric(metric, qmodel, batches)
    ranking = sensitivity(qmodel, batches, progress=progress)
    order = [e.layer for e in ranking][: len(ranking) if max_layers is None else max_layers]
    change = make_action(action, qmodel, order, batches)
    met = (lambda v: v >= target) if higher_is_better else (lambda v: v <= target)
    cache: dict[int, float] = {}

    def at(k: int) -> float:
        if k not in cache:
            with change.applied(order[:k]):
                cache[k] = evaluate(qmodel)
            log.info("mixed precision: %d layer(s) %s -> %s %.5g", k, action, name, cache[k])
        return cache[k]

    k = _fewest(at, len(order), met)
    if k is None:
        raise TargetNotMet(
            f"{name} is {cache[len(order)]:.5g} with all {len(order)} candidate layer(s) {change.verb}, "
            f"which misses the target {target:g}; "
            + ("raise max_layers, " if len(order) < len(ranking) else "")
            + "relax the target"
            + (", or use action='float'" if action != "float" else "")
        )
    chosen = _choices(ranking, order[:k], change.verb, name, target, higher_is_better)
    rules = change.commit(chosen)
    qmodel.config = qmodel.config.with_rules(*rules)
    if recalibrate and chosen:
        _recalibrate(qmodel, batches, progress)
    after = evaluate(qmodel)
    if not met(after):
        log.warning(
            "mixed precision: after re-calibration %s is %.5g, short of the target %g that the search "
            "met with the earlier ranges",
            name,
            after,
            target,
        )
    return MixedPrecisionResult(
        name,
        target,
        higher_is_better,
        action,
        cache[0],
        after,
        met(after),
        chosen,
        tuple(SearchStep(i, v, met(v)) for i, v in sorted(cache.items())),
        rules,
        k == len(order) and k > 0,
        qmodel,
    )


def _recalibrate(qmodel: QuantizedModel, batches: Sequence[Batch], progress: bool | None) -> None:
    """Calibrate again as lowbit.quantize would with the new rules (activation ranges downstream of a changed
    layer depend on its weights), so that quantize(model, data, config.with_rules(*result.rules)) on the same
    data gives this very model."""
    if qmodel.config.mode is not Mode.STATIC or qmodel.config.activation is None:
        return
    calibrate(qmodel, batches, progress=progress)
    if qmodel.config.calibration != "estimator":
        from lowbit.ptq import CALIBRATIONS

        CALIBRATIONS.get(qmodel.config.calibration)(qmodel, batches, progress=progress)


def _metric(metric, qmodel: QuantizedModel, batches: Sequence[Batch]) -> tuple[str, Callable]:
    if callable(metric):
        return getattr(metric, "__name__", "metric"), metric
    name = metric or "sqnr"
    if name not in BUILTIN_METRICS:
        raise ValueError(
            f"unknown metric {name!r}; use one of {sorted(BUILTIN_METRICS)} or a callable(qmodel)"
        )
    ref = float_outputs(qmodel, batches)

    def evaluate(qm: QuantizedModel) -> float:
        with torch.inference_mode():
            out = torch.cat([run_batch(qm, b).reshape(len(b[0]), -1).float() for b in batches])
        return float(BUILTIN_METRICS[name](ref, out))

    return f"output_{name}", evaluate


def _fewest(at: Callable[[int], float], n: int, met: Callable[[float], bool]) -> int | None:
    """Smallest k in [0, n] with met(at(k)): doubling k until met, then bisection (assumes monotone at)."""
    if met(at(0)):
        return 0
    lo, k = 0, 1
    while not met(at(min(k, n))):
        if k >= n:
            return None
        lo, k = min(k, n), 2 * k
    hi = min(k, n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if met(at(mid)) else (mid, hi)
    return hi


def _choices(ranking, names, verb, metric, target, higher_is_better) -> tuple[LayerChoice, ...]:
    rank = {e.layer: (i + 1, e) for i, e in enumerate(ranking)}
    op = ">=" if higher_is_better else "<="
    out = []
    for name in names:
        r, e = rank[name]
        reason = (
            f"mixed precision: {verb}, sensitivity rank {r} (output SQNR {e.sqnr_db:.1f} dB when quantized "
            f"alone), needed for {metric} {op} {target:g}"
        )
        out.append(LayerChoice(name, r, e.sqnr_db, e.cosine, reason))
    return tuple(out)


__all__ = [
    "LayerChoice",
    "MixedPrecisionResult",
    "SearchStep",
    "TargetNotMet",
    "auto_mixed_precision",
    "rule_pattern",
]
