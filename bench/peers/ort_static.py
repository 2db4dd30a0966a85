"""onnxruntime's `quantize_static`: QDQ, per-channel int8 weights, uint8 activations (U8S8), 3 calibrators.

Traps (see shared/BENCHMARKING.md): onnxruntime's default activation type is int8 (S8S8), which on x86 leaves
many Conv/MatMul nodes in fp32 and can run slower than fp32; U8S8 is the fast path and is what we use.
The Entropy calibrator with its default 128 bins has one candidate threshold and equals MinMax, and
`quantize_static` does not pass a bin count through: we run onnxruntime's own calibrator with more bins and
hand its ranges to `quantize_static` through its calibration cache (onnxruntime >= 1.32).
Static int8 of a causal LM's activations is not run (see `_refuse`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from bench.common import Built, NotApplicable, register_variant
from bench.onnx_io import CalibReader, export_fp32, ort_runner

log = logging.getLogger(__name__)
ENTROPY_BINS = 512  # histogram bins; KL search tries (ENTROPY_BINS - ENTROPY_QUANTIZED_BINS) / 2 + 1 thresholds
ENTROPY_QUANTIZED_BINS = 128
PERCENTILE = 99.999
# BERT-style masks add float32-min to attention scores: observers on that path ruin the ranges (cosine ~0.3 on
# MiniLM). For text encoders we quantize only the matmul inputs, as onnxruntime's transformer examples do.
OP_TYPES = {"minilm": ["MatMul", "Gemm"]}
STATIC_REFUSED = {
    "smollm2": "static int8 activations of a 135M causal LM not run: onnxruntime keeps every calibration "
    "activation of 30 layers in memory (several GB here) and LLM activation outliers make per-tensor static "
    "int8 a poor fit; dynamic int8 and weight-only are the LLM paths"
}


def _refuse(task) -> None:
    if task.name in STATIC_REFUSED:
        raise NotApplicable(STATIC_REFUSED[task.name])


def preprocess(fp32: Path, workdir: Path) -> Path:
    """onnxruntime's recommended pre-processing (shape inference, graph optimisation) before quantization."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = workdir / "fp32-pre.onnx"
    if not out.exists():
        try:
            quant_pre_process(str(fp32), str(out), skip_symbolic_shape=True)
        except Exception as exc:  # the peer still runs on the plain export
            log.warning("quant_pre_process failed (%s); quantizing the plain export", exc)
            return fp32
    return out


def entropy_cache(src: Path, calib, input_names, workdir: Path, task_name: str) -> Path:
    """Ranges from onnxruntime's Entropy calibrator with ENTROPY_BINS bins, saved as a calibration cache."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator, save_tensors_data

    options = {"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS}
    calibrator = create_calibrator(
        src,
        OP_TYPES.get(task_name),
        augmented_model_path=str(workdir / "entropy-augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options=options,
    )
    calibrator.collect_data(CalibReader(src, input_names, calib, equal=True))
    cache = workdir / "entropy-ranges.json"
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def _quantize(task, calib, workdir: Path, method_name: str, extra: dict, reduce_range: bool = False) -> Built:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    _refuse(task)
    out = workdir / f"ort-static-{method_name.lower()}{'-rr' if reduce_range else ''}.onnx"
    start = time.perf_counter()
    if not out.exists():
        src = preprocess(export_fp32(task, workdir), workdir)
        start = time.perf_counter()
        if method_name == "Entropy":
            extra = {
                **extra,
                "calibration_cache_path": entropy_cache(src, calib, task.input_names, workdir, task.name),
            }
        cache = extra.pop("calibration_cache_path", None)
        quantize_static(
            str(src),
            str(out),
            CalibReader(src, task.input_names, calib, equal=method_name != "MinMax"),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, method_name),
            extra_options=extra,
            calibration_cache_path=cache,
            op_types_to_quantize=OP_TYPES.get(task.name),
            reduce_range=reduce_range,
        )
    return Built(ort_runner(out, task.input_names), out, time.perf_counter() - start)


@register_variant(
    "ort-static-minmax",
    family="peer",
    baseline="fp32-ort",
    in_quick=True,
    description="onnxruntime quantize_static, QDQ U8S8, per-channel, MinMax",
)
def build_minmax(task, calib, workdir: Path) -> Built:
    return _quantize(task, calib, workdir, "MinMax", {})


@register_variant(
    "ort-static-entropy",
    family="peer",
    baseline="fp32-ort",
    description=f"onnxruntime quantize_static, QDQ U8S8, per-channel, Entropy ({ENTROPY_BINS} bins)",
)
def build_entropy(task, calib, workdir: Path) -> Built:
    return _quantize(task, calib, workdir, "Entropy", {})


@register_variant(
    "ort-static-percentile",
    family="peer",
    baseline="fp32-ort",
    description=f"onnxruntime quantize_static, QDQ U8S8, per-channel, Percentile {PERCENTILE}",
)
def build_percentile(task, calib, workdir: Path) -> Built:
    return _quantize(task, calib, workdir, "Percentile", {"CalibPercentile": PERCENTILE})


@register_variant(
    "ort-static-minmax-rr",
    family="peer",
    baseline="fp32-ort",
    description="ort-static-minmax with reduce_range (7-bit weights: no U8S8 overflow on AVX2 without VNNI)",
)
def build_minmax_reduced(task, calib, workdir: Path) -> Built:
    return _quantize(task, calib, workdir, "MinMax", {}, reduce_range=True)


@register_variant(
    "ort-static-minmax-emulated",
    family="peer",
    baseline="fp32-ort",
    description="ort-static-minmax's QDQ file with onnxruntime graph optimizations off: quantization emulated "
    "in fp32, no int8 kernels (a diagnostic: kernel saturation vs quantization error)",
)
def build_minmax_emulated(task, calib, workdir: Path) -> Built:
    built = _quantize(task, calib, workdir, "MinMax", {})
    note = "diagnostic, same file as ort-static-minmax, run without int8 kernels"
    return Built(ort_runner(built.path, task.input_names, optimize=False), built.path, built.calib_s, note)
