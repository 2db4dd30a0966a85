"""Every range estimator on one layer's real float input: what each would clip to, vs the model's range.

The input is captured with a forward pre-hook on the layer's ActQuantizer while the model runs in float mode,
so it is exactly what calibration saw; each estimator then observes it batch by batch, as calibration would.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from lowbit.api import Batch, run_batch
from lowbit.calib import METHODS, make_estimator
from lowbit.core.granularity import PerTensor
from lowbit.core.qtype import IntQType
from lowbit.graph.quantized_model import QuantizedModel

log = logging.getLogger(__name__)
MAX_KEPT_VALUES = 2_000_000  # values kept per layer for the histogram (a strided sample beyond that)


@dataclass(frozen=True)
class LayerRanges:
    layer: str
    quantizer: str
    values: torch.Tensor  # 1-D sample of the float input, for the histogram
    ranges: dict[str, tuple[float, float]]  # estimator -> (lo, hi)
    errors: dict[str, str]  # estimator -> why it gave no range
    used: tuple[float, float] | None  # the frozen range of the model's own quantizer (None when dynamic)


def capture_inputs(qmodel: QuantizedModel, quantizer: str, batches: Sequence[Batch]) -> list[torch.Tensor]:
    """The float tensors reaching ActQuantizer `quantizer`, one per call, with every quantizer off."""
    seen: list[torch.Tensor] = []
    module = qmodel.graph_module.get_submodule(quantizer)
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().float().clone()))
    try:
        with qmodel.float_mode(), torch.inference_mode():
            for batch in batches:
                run_batch(qmodel, batch)
    finally:
        handle.remove()
    return seen


def used_range(quantizer) -> tuple[float, float] | None:
    qp = quantizer.qparams
    if qp is None or not isinstance(qp.qtype, IntQType):
        return None
    lo = (qp.qtype.qmin - qp.zero_point.float()) * qp.scale
    hi = (qp.qtype.qmax - qp.zero_point.float()) * qp.scale
    return float(lo.min()), float(hi.max())


def layer_ranges(
    qmodel: QuantizedModel, layer: str, batches: Sequence[Batch], methods: Sequence[str] = METHODS
) -> LayerRanges | None:
    """Ranges of every estimator in `methods` on the first input of `layer` (None without an input
    quantizer). Estimators run per tensor, with the quantizer's qtype and symmetry."""
    info = qmodel.layers[layer]
    if not info.input_quantizers:
        return None
    name = info.input_quantizers[0]
    quantizer = qmodel.graph_module.get_submodule(name)
    tensors = capture_inputs(qmodel, name, batches)
    if not tensors:
        return None
    spec = quantizer.spec
    ranges, errors = {}, {}
    for method in methods:
        try:
            est = make_estimator(method, granularity=PerTensor())
            for t in tensors:
                est.observe(t)
            lo, hi = est.compute_range(spec.qtype, symmetric=spec.symmetric)
            ranges[method] = (float(lo.min()), float(hi.max()))
        except (ValueError, RuntimeError, KeyError) as err:  # e.g. an estimator that rejects this qtype
            errors[method] = str(err).splitlines()[0]
            log.info("estimator %s on %s: %s", method, layer, errors[method])
    flat = torch.cat([t.reshape(-1) for t in tensors])
    step = max(1, flat.numel() // MAX_KEPT_VALUES)
    return LayerRanges(layer, name, flat[::step].clone(), ranges, errors, used_range(quantizer))
