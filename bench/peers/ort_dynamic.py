"""onnxruntime's `quantize_dynamic`: int8 per-channel weights, activations quantized at run time (uint8).

`ort-dynamic-rr` adds `reduce_range` (7-bit weights). On x86 without VNNI onnxruntime's U8S8 integer GEMM
adds pairs of uint8 x int8 products in saturating int16 (VPMADDUBSW); per-channel weights put a +-127 code in
every column, and on SmolLM2 the plain per-channel model's perplexity exploded (see BENCHMARKS.md).
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.common import Built, register_variant
from bench.onnx_io import export_fp32, ort_runner


def _quantize(task, workdir: Path, reduce_range: bool) -> Built:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = workdir / f"ort-dynamic{'-rr' if reduce_range else ''}.onnx"
    start = time.perf_counter()
    if not out.exists():
        src = export_fp32(task, workdir)
        start = time.perf_counter()
        quantize_dynamic(str(src), str(out), per_channel=True, reduce_range=reduce_range, weight_type=QuantType.QInt8)
    return Built(ort_runner(out, task.input_names), out, time.perf_counter() - start)


@register_variant(
    "ort-dynamic",
    family="peer",
    baseline="fp32-ort",
    in_quick=True,
    description="onnxruntime quantize_dynamic, int8 per-channel weights",
)
def build_dynamic(task, calib, workdir: Path) -> Built:
    return _quantize(task, workdir, reduce_range=False)


@register_variant(
    "ort-dynamic-rr",
    family="peer",
    baseline="fp32-ort",
    description="ort-dynamic with reduce_range (7-bit weights: no U8S8 overflow on AVX2 without VNNI)",
)
def build_dynamic_reduced(task, calib, workdir: Path) -> Built:
    return _quantize(task, workdir, reduce_range=True)
