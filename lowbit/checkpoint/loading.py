"""lowbit.load: rebuild a QuantizedModel from the float architecture (code) and a checkpoint folder (weights)."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch

from lowbit.checkpoint.codes import decode_codes, decode_qparams
from lowbit.checkpoint.files import CheckpointError, read_folder
from lowbit.checkpoint.saving import FORMAT_NAME, FORMAT_VERSION
from lowbit.checkpoint.state import graph_tensors, set_tensor
from lowbit.config import QuantConfig
from lowbit.core.primitives import dequantize
from lowbit.graph.capture import CaptureError, capture
from lowbit.graph.fold_bn import fold_bn
from lowbit.graph.placement import place_quantizers
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.graph.quantizers import ActQuantizer, WeightQuantizer


def load(folder: str | Path, model: torch.nn.Module) -> QuantizedModel:
    """The QuantizedModel saved in `folder`. `model` is the float architecture it was quantized from (its
    weights may be anything): it is captured again on inputs shaped like the saved example, BN is folded and
    quantizers are placed from the saved config (no calibration, no passes), then every tensor and QParams is
    filled from the file, so the result computes what the saved model computed, bit for bit."""
    folder = Path(folder)
    meta, tensors = read_folder(folder)
    check_version(meta, folder)
    config = QuantConfig.from_json(json.dumps(meta["config"]))
    try:
        gm = capture(model, example_inputs(meta["inputs"]))
        folded = fold_bn(gm) if config.fold_bn else []
        qmodel = QuantizedModel(gm, config, place_quantizers(gm, config), folded)
    except (ValueError, CaptureError) as err:  # another architecture: no capture, or a rule matching no layer
        raise CheckpointError(f"the model given to load does not match the checkpoint in {folder}: {err}") from err
    check_match(qmodel, meta, tensors, folder)
    fill(qmodel, meta, tensors)
    if hashlib.sha256(gm.code.encode("utf-8")).hexdigest() != meta.get("graph_sha256"):
        warnings.warn(
            f"the graph captured from this model differs from the one saved in {folder} (another torch version or "
            "another architecture with the same layers?); outputs may differ from the saved model's",
            stacklevel=2,
        )
    return qmodel


def check_version(meta: dict, folder: Path) -> None:
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{folder} does not hold a lowbit checkpoint (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder} was written in checkpoint format {version} by lowbit {meta.get('lowbit_version')}; this "
            f"lowbit reads formats up to {FORMAT_VERSION}: upgrade lowbit to load it"
        )


def example_inputs(specs: list[dict]) -> tuple[torch.Tensor, ...]:
    """Inputs shaped like the captured example: zeros for floats, ones for integers (valid token ids, masks)."""
    made = []
    for s in specs:
        dtype = getattr(torch, s["dtype"])
        fill_value = 0 if dtype.is_floating_point else 1
        made.append(torch.full(s["shape"], fill_value, dtype=dtype))
    return tuple(made)


def check_match(qmodel: QuantizedModel, meta: dict, tensors: dict, folder: Path) -> None:
    """The rebuilt graph must have the saved quantizers and tensors, with the same shapes and dtypes."""
    gm = qmodel.graph_module
    have_q = {n for n, m in gm.named_children() if isinstance(m, (WeightQuantizer, ActQuantizer))}
    have_t = graph_tensors(gm)
    problems = _diff("quantizers", have_q, set(meta["quantizers"]))
    problems += _diff("tensors", set(have_t), set(meta["float_tensors"]) | set(meta["quantized_weights"]))
    for path in sorted(set(meta["float_tensors"]) & set(have_t)):
        saved, here = tensors[f"state.{path}"], have_t[path]
        if saved.shape != here.shape or saved.dtype != here.dtype:
            problems.append(f"{path} is {tuple(saved.shape)} {saved.dtype} in the file, "
                            f"{tuple(here.shape)} {here.dtype} in the model")
    for path, qname in sorted(meta["quantized_weights"].items()):
        q = meta["quantizers"][qname]
        if path in have_t and tuple(have_t[path].shape) != tuple(q["shape"]):
            problems.append(f"{path} is {tuple(q['shape'])} in the file, {tuple(have_t[path].shape)} in the model")
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        passes = [p.name for p in qmodel.config.passes]
        hint = (f" If it is the same architecture, the passes {passes} changed the graph when quantizing and load "
                "does not re-run passes: such a model cannot be saved as a lowbit checkpoint yet") if passes else ""
        raise CheckpointError(
            f"the model given to load does not match the checkpoint in {folder}: {shown}. Pass the same architecture "
            f"(same layer names and shapes) that was quantized, e.g. lowbit.zoo.load(name).model for a zoo model.{hint}"
        )


def _diff(what: str, here: set, saved: set) -> list[str]:
    out = []
    if saved - here:
        out.append(f"{what} in the file but not in the model: {sorted(saved - here)[:5]}")
    if here - saved:
        out.append(f"{what} in the model but not in the file: {sorted(here - saved)[:5]}")
    return out


def fill(qmodel: QuantizedModel, meta: dict, tensors: dict) -> None:
    gm = qmodel.graph_module
    for path in meta["float_tensors"]:
        set_tensor(gm, path, tensors[f"state.{path}"])
    for name, entry in meta["quantizers"].items():
        module = gm.get_submodule(name)
        module.enabled = entry["enabled"]
        qp = decode_qparams(entry["qparams"], tensors, f"quantizer.{name}") if entry["qparams"] else None
        if isinstance(module, WeightQuantizer):
            if qp is not None:
                codes = decode_codes(tensors[f"quantizer.{name}.codes"], qp.qtype, tuple(entry["shape"]))
                module.qparams, module.w_hat = qp, dequantize(codes, qp, dtype=getattr(torch, entry["dtype"]))
        else:
            module.qparams, module.kept_float, module.observing = qp, entry["kept_float"], False
    for path, qname in meta["quantized_weights"].items():
        set_tensor(gm, path, gm.get_submodule(qname).w_hat)
    for name, info in meta["layers"].items():
        if name in qmodel.layers:
            qmodel.layers[name].kept_float, qmodel.layers[name].note = info["kept_float"], info["note"]
    qmodel.calibration_seconds = meta.get("calibration_seconds")
