"""onnxruntime's `quantize_dynamic`: int8 per-channel weights, activations quantized at run time."""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import Built, register_variant
from bench.onnx_io import export_fp32, ort_runner


@register_variant(
    "ort-dynamic",
    family="peer",
    baseline="fp32-ort",
    in_quick=True,
    description="onnxruntime quantize_dynamic, int8 per-channel weights",
)
def build_dynamic(task, calib, workdir: Path) -> Built:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = workdir / "ort-dynamic.onnx"
    start = time.perf_counter()
    if not out.exists():
        src = export_fp32(task, workdir)
        start = time.perf_counter()
        quantize_dynamic(str(src), str(out), per_channel=True, weight_type=QuantType.QInt8)
    return Built(ort_runner(out, task.input_names), out, time.perf_counter() - start)
