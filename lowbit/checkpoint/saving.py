"""lowbit.save: a QuantizedModel as packed integer codes, QParams and the remaining float state."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from lowbit.checkpoint.codes import encode_codes, encode_qparams, qtype_key
from lowbit.checkpoint.files import META_FILE, TENSORS_FILE, CheckpointError, sha256, tensor_bytes, write_folder
from lowbit.checkpoint.state import graph_tensors, quantized_weights
from lowbit.core.primitives import dequantize, quantize
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.graph.quantizers import ActQuantizer, WeightQuantizer

FORMAT_VERSION = 1
FORMAT_NAME = "lowbit-checkpoint"


def save(qmodel: QuantizedModel, folder: str | Path) -> Path:
    """Write `qmodel` to `folder` (model.safetensors + lowbit.json), replacing any checkpoint there atomically.
    Returns the folder. Load it back with `lowbit.load(folder, model)` and the same float architecture."""
    if not isinstance(qmodel, QuantizedModel):
        raise CheckpointError(
            f"lowbit.save takes a QuantizedModel, not {type(qmodel).__name__}; a model quantized with "
            "submodules=[...] holds one QuantizedModel per submodule: save each of those"
        )
    meta, tensors = checkpoint_content(qmodel)
    data = tensor_bytes(tensors)
    meta["safetensors_sha256"] = sha256(data)
    folder = Path(folder)
    write_folder(folder, {TENSORS_FILE: data, META_FILE: json.dumps(meta, indent=2).encode("utf-8")})
    return folder


def checkpoint_content(qmodel: QuantizedModel) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the lowbit.json content without the file hash, the tensors to store by name)."""
    from lowbit import __version__

    gm = qmodel.graph_module
    dropped = quantized_weights(gm)
    tensors = {f"state.{p}": t for p, t in graph_tensors(gm).items() if p not in dropped}
    quantizers = {}
    for name, module in gm.named_children():
        if isinstance(module, (WeightQuantizer, ActQuantizer)):
            quantizers[name], qt = QUANTIZER_WRITERS[type(module)](name, module)
            tensors.update(qt)
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "lowbit_version": __version__,
        "torch_version": torch.__version__,
        "config": json.loads(qmodel.config.to_json()),
        "inputs": input_specs(gm),
        "layers": {n: {"kept_float": i.kept_float, "note": i.note} for n, i in qmodel.layers.items()},
        "quantizers": quantizers,
        "quantized_weights": dropped,
        "float_tensors": sorted(p for p in graph_tensors(gm) if p not in dropped),
        "folded_bn": list(qmodel.folded_bn),
        "calibration_seconds": getattr(qmodel, "calibration_seconds", None),
        "graph_sha256": hashlib.sha256(gm.code.encode("utf-8")).hexdigest(),
    }
    return meta, tensors


def _weight_entry(name: str, wq: WeightQuantizer) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = {"kind": "weight", "layer": wq.layer, "enabled": wq.enabled, "qparams": None}
    if wq.qparams is None or wq.w_hat is None:
        return meta, {}
    qp, w_hat = wq.qparams, wq.w_hat
    codes = quantize(w_hat, qp)  # w_hat lies on the grid: these are its codes exactly
    if not torch.equal(dequantize(codes, qp, dtype=w_hat.dtype), w_hat):
        raise CheckpointError(
            f"the cached quantized weight of {name} is not on its QParams' grid, so integer codes cannot hold it; "
            "a pass that edits w_hat must keep it equal to dequantize(quantize(w_hat))"
        )
    meta["qparams"], tensors = encode_qparams(qp, f"quantizer.{name}")
    tensors[f"quantizer.{name}.codes"] = encode_codes(codes, qp.qtype)
    meta.update(shape=list(w_hat.shape), dtype=str(w_hat.dtype).removeprefix("torch."), qtype_bits=qp.qtype.bits)
    return meta, tensors


def _act_entry(name: str, aq: ActQuantizer) -> tuple[dict, dict[str, torch.Tensor]]:
    meta = {
        "kind": "activation",
        "qtype": qtype_key(aq.spec.qtype),
        "dynamic": aq.dynamic,
        "enabled": aq.enabled,
        "kept_float": aq.kept_float,
        "consumers": list(aq.consumers),
        "qparams": None,
    }
    if aq.qparams is None:
        return meta, {}
    meta["qparams"], tensors = encode_qparams(aq.qparams, f"quantizer.{name}")
    return meta, tensors


QUANTIZER_WRITERS = {WeightQuantizer: _weight_entry, ActQuantizer: _act_entry}


def input_specs(gm) -> list[dict]:
    """Shape and dtype of each graph input as captured (symbolic sizes by the example's size)."""
    specs = []
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise CheckpointError(f"graph input {node.name} is not a tensor; lowbit checkpoints need tensor inputs")
        shape = [int(s.node.hint) if isinstance(s, torch.SymInt) else int(s) for s in val.shape]
        specs.append({"name": node.name, "shape": shape, "dtype": str(val.dtype).removeprefix("torch.")})
    return specs
