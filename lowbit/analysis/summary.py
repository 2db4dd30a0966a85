"""Before/after facts of a quantized model: size, latency of the torch simulation, fidelity to fp32."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence

import torch

from lowbit.api import Batch, run_batch
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.metrics import cosine_similarity, sqnr_db, top1_agreement

LATENCY_NOTE = (
    "torch fake-quantization simulation on CPU (float kernels plus quantize/dequantize), "
    "not an int8 runtime: expect it slower than fp32; --export measures the int8 model in onnxruntime"
)
LATENCY_REPEATS = 3
LATENCY_ROWS = 8  # rows of the timed batch: enough to show the trend, short enough for the demo


def fp32_bytes(model: torch.nn.Module) -> int:
    """Bytes of the float model's parameters and buffers (its state_dict), shared tensors counted once."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def size_summary(qmodel: QuantizedModel, float_model: torch.nn.Module | None = None) -> dict:
    """fp32_bytes (None without the float model), quantized_bytes (weights at their bits, scales included,
    other tensors at their dtype) and the compression ratio."""
    quantized = float(qmodel.weight_bytes()["total"])
    fp32 = fp32_bytes(float_model) if float_model is not None else None
    return {
        "fp32_bytes": fp32,
        "quantized_bytes": quantized,
        "compression": (fp32 / quantized) if fp32 and quantized else None,
    }


def _time_once(model: Callable, batch: Batch) -> float:
    t0 = time.perf_counter()
    run_batch(model, batch)
    return time.perf_counter() - t0


def measure_latency(
    float_model: torch.nn.Module,
    qmodel: QuantizedModel,
    batch: Batch,
    repeats: int = LATENCY_REPEATS,
    max_rows: int = LATENCY_ROWS,
) -> dict:
    """Median ms per batch (its first `max_rows` rows) of the fp32 model and of the quantized simulation,
    timed alternately (A B A B) after one warm-up run of each, at the current torch thread count."""
    batch = tuple(t[:max_rows] for t in batch)
    fp32, quant = [], []
    with torch.inference_mode():
        _time_once(float_model, batch), _time_once(qmodel, batch)
        for _ in range(repeats):
            fp32.append(_time_once(float_model, batch))
            quant.append(_time_once(qmodel, batch))
    return {
        "fp32_ms": 1e3 * statistics.median(fp32),
        "quantized_ms": 1e3 * statistics.median(quant),
        "batch_size": len(batch[0]),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "note": LATENCY_NOTE,
    }


def _first_tensor(out) -> torch.Tensor:
    """A model's main output: the tensor itself, or the first tensor of a tuple, list, dict or ModelOutput."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out
    for v in values:
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(
        f"the model returned {type(out).__name__} without a tensor; lowbit compares tensor outputs"
    )


def fidelity(float_model: Callable, qmodel: Callable, batches: Sequence[Batch]) -> dict[str, float]:
    """cosine and sqnr_db of the quantized outputs against fp32 on `batches` (rows = leading axis), plus
    top1_agreement when the outputs are [N, C] logits-like."""
    with torch.inference_mode():
        ref = [_first_tensor(run_batch(float_model, b)).float() for b in batches]
        test = [_first_tensor(run_batch(qmodel, b)).float() for b in batches]
    metrics = {
        "cosine": cosine_similarity(
            torch.cat([r.reshape(len(r), -1) for r in ref]), torch.cat([t.reshape(len(t), -1) for t in test])
        ),
        "sqnr_db": sqnr_db(torch.cat([r.reshape(-1) for r in ref]), torch.cat([t.reshape(-1) for t in test])),
    }
    if all(r.dim() == 2 and r.shape[1] > 1 for r in ref):
        metrics["top1_agreement"] = top1_agreement(torch.cat(ref), torch.cat(test))
    return metrics


def finite_json(obj):
    """The summary with non-finite floats as null (strict JSON has no inf/nan)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def _size(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2**20:.2f} MB" if n >= 2**20 else f"{n / 2**10:.1f} kB"


def format_summary(s: dict) -> str:
    """Human-readable lines: size, latency (with its caveat), metrics before/after, kept-float layers."""
    lat = s["latency"]
    ratio = f" ({s['compression']:.2f}x smaller)" if s.get("compression") else ""
    lines = [
        f"model {s['model']}: preset {s['preset']}, estimator {s['estimator']}, "
        f"{s['quantized_layers']}/{s['layers']} layers quantized",
        f"size:    fp32 {_size(s['fp32_bytes'])} -> quantized {_size(s['quantized_bytes'])}{ratio}",
        f"latency: fp32 {lat['fp32_ms']:.1f} ms -> quantized {lat['quantized_ms']:.1f} ms per batch of "
        f"{lat['batch_size']}, {lat['threads']} threads",
        f"         ({lat['note']})",
    ]
    for k, after in s["metrics"].items():
        before = s["metrics_fp32"].get(k)
        lines.append(f"{k}: fp32 {_fmt(before)} -> quantized {_fmt(after)}")
    lines.append(f"evaluated on {s['evaluation_data']}; calibrated on {s['calibration_data']}")
    if "onnx" in s:
        lines += _onnx_lines(s["onnx"], s["metrics_fp32"])
    if s["kept_float"]:
        lines.append(f"kept in float: {', '.join(f'{k} ({v})' for k, v in s['kept_float'].items())}")
    if "report" in s:
        lines.append(f"report: {s['report']}")
    return "\n".join(lines)


def _onnx_lines(o: dict, fp32_metrics: dict) -> list[str]:
    lat, share = o["latency"], o["integer_share"]
    lines = [
        f"onnxruntime: {o['path']} {_size(o['onnx_bytes'])} (fp32 ONNX {_size(o['fp32_onnx_bytes'])}); "
        f"latency fp32 {lat['fp32_ms']:.1f} ms -> int8 {lat['int8_ms']:.1f} ms per batch of {lat['batch_size']}, "
        f"{lat['threads']} thread ({lat['speedup']:.2f}x)",
        f"         integer kernels {share['integer_fraction']:.0%} of kernel time; "
        f"{o['parity_within_one_step']:.2%} of outputs within one step of the simulation",
    ]
    if "parity_emulated" in o:
        lines.append(f"         {o['parity_emulated']:.2%} within one step of onnxruntime's integer arithmetic "
                     f"emulated in torch (lowbit.export.emulate), {o['emulated_equal']:.2%} bit for bit equal")
    if o.get("parity_one_ulp") is not None:
        lines.append(f"         {o['parity_one_ulp']:.2%} for the simulation against itself with one ulp moved at each "
                     f"quantizer's input (what float rounding alone moves)")
    choice = o.get("nbits_compute")
    if choice:
        timed = ", ".join(f"{k} {v:.1f} ms" for k, v in choice["ms"].items()) or choice.get("reason", "")
        lines.append(f"         MatMulNBits compute: {choice['chosen']} ({timed})")
    layers = o.get("layer_parity")
    if layers and layers["quantizers"]:
        lines.append(f"         layer by layer (each fed onnxruntime's own inputs): {layers['median_equal']:.3%} of "
                     f"codes equal at the median quantizer of {layers['quantizers']}, {layers['worst_equal']:.3%} "
                     f"at the worst ({layers['worst_quantizer']})")
    for k, v in o.get("metrics", {}).items():
        lines.append(f"{k} in onnxruntime: fp32 {_fmt(fp32_metrics.get(k))} -> int8 {_fmt(v)}")
    if o.get("warning"):
        lines.append(f"WARNING: {o['warning']}")
    return lines


def _fmt(v) -> str:
    return "n/a" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
