"""The few calls most users need: quantize() and calibrate()."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

import torch
from tqdm.auto import tqdm

from lowbit.config import Mode, QuantConfig, preset
from lowbit.graph.bias import fit_int32_biases
from lowbit.graph.capture import capture
from lowbit.graph.fold_bn import fold_bn
from lowbit.graph.placement import place_quantizers
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.ptq import CALIBRATIONS, PASSES, run_passes

log = logging.getLogger(__name__)
Batch = tuple[torch.Tensor, ...]


def quantize(
    model: torch.nn.Module,
    calib_data: Iterable,
    config: QuantConfig | str = "w8a8",
    *,
    submodules: Sequence[str] | None = None,
    progress: bool | None = None,
) -> QuantizedModel:
    """Capture `model`, fold BatchNorm, place quantizers as `config` says, compute weight ranges, calibrate
    activation ranges on `calib_data` (an iterable of batches: tensors or tuples of positional tensors)
    and return the QuantizedModel. The user's model is never modified.

    `submodules`: for a model that cannot be captured whole, quantize only these named submodules (each fed
    the inputs it receives when the model runs on `calib_data`) and return a copy of the model in which they
    are replaced by QuantizedModels."""
    config = preset(config) if isinstance(config, str) else config
    batches = check_batches(calib_data)
    if submodules:
        return _quantize_submodules(model, batches, config, submodules, progress)
    t0 = time.perf_counter()
    gm = capture(model, batches[0])
    folded = fold_bn(gm) if config.fold_bn else []
    for spec in config.passes:
        PASSES.get(spec.name)  # an unknown pass fails before any work is done
    run_passes("float", gm, batches, config, progress)
    placement = place_quantizers(gm, config)
    qmodel = QuantizedModel(gm, config, placement, folded)
    qmodel.prepare_weights()
    if config.mode is Mode.STATIC and config.activation is not None:
        calibrate(qmodel, batches, progress=progress)
    if config.calibration != "estimator":
        CALIBRATIONS.get(config.calibration)(qmodel, batches, progress=progress)
    run_passes("quantized", qmodel, batches, config, progress)
    refit = fit_int32_biases(qmodel)
    if refit:
        log.info("weight scales raised so that int32 biases fit (nearly zero channels): %s", ", ".join(refit))
    qmodel.calibration_seconds = time.perf_counter() - t0
    log.info("quantized %d of %d layers in %.1f s", len(qmodel.quantized_layers()), len(qmodel.layers),
             qmodel.calibration_seconds)
    return qmodel


def _quantize_submodules(model, batches, config, names, progress) -> torch.nn.Module:
    import copy

    copied = copy.deepcopy(model).eval()
    for name in names:
        try:
            sub = copied.get_submodule(name)
        except AttributeError:
            children = [n for n, _ in copied.named_children()]
            raise ValueError(f"no submodule {name!r}; children of the model: {children}") from None
        inputs: list[Batch] = []

        def record(_module, args, kwargs, inputs=inputs, name=name):
            if kwargs or not all(isinstance(a, torch.Tensor) for a in args):
                raise TypeError(f"submodule {name!r} is called with keyword or non-tensor arguments; "
                                "choose a submodule called with positional tensors only")
            inputs.append(tuple(a.detach() for a in args))

        handle = sub.register_forward_pre_hook(record, with_kwargs=True)
        try:
            with torch.inference_mode():
                for batch in batches:
                    copied(*batch)
        finally:
            handle.remove()
        owner, _, attr = name.rpartition(".")
        parent = copied.get_submodule(owner) if owner else copied
        setattr(parent, attr, quantize(sub, inputs, config, progress=progress))
    return copied


def calibrate(qmodel: QuantizedModel, batches: Sequence[Batch], progress: bool | None = None) -> None:
    """Stream `batches` once through the model with static quantizers observing, then freeze their ranges."""
    with qmodel.calibrating(), torch.inference_mode():
        for batch in tqdm(batches, desc="calibrating", disable=_hide(progress), leave=False):
            run_batch(qmodel, batch)


def run_batch(model: torch.nn.Module, batch: Batch):
    try:
        return model(*batch)
    except (RuntimeError, ValueError, AssertionError) as exc:
        if "NaN/Inf" in str(exc) or "calibrat" in str(exc):
            raise
        shapes = [tuple(t.shape) for t in batch]
        raise ValueError(
            f"the model failed on a batch of shapes {shapes}: {str(exc).splitlines()[0]}. "
            "Give batches shaped like the example the model was captured with."
        ) from exc


def check_batches(data: Iterable) -> list[Batch]:
    """Normalise calibration data to a list of tuples of tensors and reject empty or non-finite data."""
    batches = [b if isinstance(b, (tuple, list)) else (b,) for b in data]
    if not batches:
        raise ValueError("calibration data is empty: pass at least one batch of representative inputs")
    first = batches[0]
    for i, b in enumerate(batches, 1):
        if len(b) != len(first):
            raise ValueError(
                f"batch {i} has {len(b)} inputs but batch 1 has {len(first)}; every batch needs the same inputs"
            )
        for j, t in enumerate(b):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"batch {i}, input {j} is {type(t).__name__}; calibration batches hold tensors")
            if t.dim() != first[j].dim():
                raise ValueError(
                    f"batch {i}, input {j} has shape {tuple(t.shape)} but batch 1 has {tuple(first[j].shape)}; "
                    "inputs must have the same number of dimensions"
                )
            if t.is_floating_point() and not torch.isfinite(t).all():
                bad = int((~torch.isfinite(t)).sum())
                raise ValueError(f"batch {i}, input {j} holds {bad} NaN/Inf values; remove or clean that batch")
    return [tuple(b) for b in batches]


def _hide(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
