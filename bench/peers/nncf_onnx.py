"""NNCF (OpenVINO's compression framework) on the exported ONNX model, run by onnxruntime.

`nncf.quantize` is NNCF's static post-training quantization (MinMax + FastBiasCorrection defaults, with the
TRANSFORMER model type for text models); `nncf.compress_weights` is its weight-only int8 path for LLMs.
NNCF 3.4.0 installs beside torch 2.13.0 (it does not depend on torch); see the Makefile's `bench-setup`.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import Built, NotApplicable, register_variant
from bench.onnx_io import export_fp32, feeds, ort_runner
from bench.peers.ort_static import STATIC_REFUSED

TEXT_TASKS = ("minilm", "smollm2")
WEIGHT_ONLY_CNN = (
    "weight-only int8 is NNCF's LLM path; on Conv weights NNCF 3.4's ONNX output has per-axis scales that "
    "onnxruntime 1.32 rejects (DequantizeLinear scale shape), seen on efficientnet-lite0"
)


def _nncf():
    try:
        import nncf
    except ImportError as exc:
        raise NotApplicable(f"nncf is not installed ({exc}); run `make bench-setup`") from None
    return nncf


def fold_weight_transposes(model) -> int:
    """Replace each Transpose of an initializer by a transposed copy of it; returns how many were folded.

    A tied weight (SmolLM2's lm_head shares the embedding table) stays one initializer in the export, read by
    Gather and, through a Transpose, by the head's MatMul; NNCF 3.4's weight compression looks the MatMul's
    weight up as an initializer and fails ("There is no tensor with the name ..."). The copy unties them.
    """
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    folded = [node for node in graph.node if node.op_type == "Transpose" and node.input[0] in weights]
    for node in folded:
        perm = next((list(attr.ints) for attr in node.attribute if attr.name == "perm"), None)
        array = np.transpose(numpy_helper.to_array(weights[node.input[0]]), perm)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), node.output[0]))
        graph.node.remove(node)
    return len(folded)


def _save(model, out: Path) -> None:
    import onnx

    tmp = out.with_suffix(".tmp")
    onnx.save(model, str(tmp))
    tmp.replace(out)


@register_variant(
    "nncf-static",
    family="peer",
    baseline="fp32-ort",
    description="NNCF 3.4 quantize (ONNX backend, defaults; TRANSFORMER type for text), onnxruntime",
)
def build_static(task, calib, workdir: Path) -> Built:
    nncf = _nncf()
    if task.name in STATIC_REFUSED:
        raise NotApplicable(STATIC_REFUSED[task.name])
    import onnx

    out = workdir / "nncf-static.onnx"
    start = time.perf_counter()
    if not out.exists():
        src = export_fp32(task, workdir)
        model = onnx.load(str(src))
        names = [i.name for i in model.graph.input]
        dataset = nncf.Dataset(calib, lambda batch: feeds(names, task.input_names, batch))
        kind = nncf.ModelType.TRANSFORMER if task.name in TEXT_TASKS else None
        start = time.perf_counter()
        quantized = nncf.quantize(model, dataset, model_type=kind, subset_size=len(calib))  # items = batches
        _save(quantized, out)
    return Built(ort_runner(out, task.input_names), out, time.perf_counter() - start)


@register_variant(
    "nncf-weight-int8",
    family="peer",
    baseline="fp32-ort",
    description="NNCF 3.4 compress_weights (int8 weight-only, ONNX backend), onnxruntime",
)
def build_weights(task, calib, workdir: Path) -> Built:
    nncf = _nncf()
    if task.name not in TEXT_TASKS:
        raise NotApplicable(WEIGHT_ONLY_CNN)
    import onnx

    out = workdir / "nncf-weight-int8.onnx"
    start, note = time.perf_counter(), ""
    if not out.exists():
        model = onnx.load(str(export_fp32(task, workdir)))
        start = time.perf_counter()
        if folded := fold_weight_transposes(model):
            note = f"{folded} Transpose(s) of a tied weight folded into a copy before compression"
        _save(nncf.compress_weights(model), out)
    return Built(ort_runner(out, task.input_names), out, time.perf_counter() - start, note)
