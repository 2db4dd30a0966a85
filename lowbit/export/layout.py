"""Which quantized layout runs as exact integer kernels in onnxruntime on this CPU.

onnxruntime's x86 kernels multiply uint8 activations by int8 weights (U8S8, its fast path). With AVX-512 VNNI
(or AVX-VNNI) the products accumulate in int32 directly. Without VNNI (AVX2, plain AVX-512) they go through
`vpmaddubsw`, which adds each pair of adjacent u8 x s8 products in int16 and saturates: 2 * 255 * 127 = 64,770 >
32,767, so results differ from exact integer arithmetic (measured here: EfficientNet-Lite0 top-1 agreement 0.62
in onnxruntime against 0.85 in the exact simulation). 7-bit weights (onnxruntime's `reduce_range`) keep every pair
below the limit (2 * 255 * 64 = 32,640), and the export is then exact. onnxruntime's depthwise convolution kernel
accumulates in int32 and does not saturate: depthwise/grouped convs keep 8-bit weights (on EfficientNet-Lite0 that
raised top-1 agreement from 0.65 to 0.77, identical in onnxruntime and in the simulation).
"""

from __future__ import annotations

import math
import platform
from dataclasses import replace
from pathlib import Path

import torch

from lowbit.config import LayerRule, Mode, QuantConfig
from lowbit.core.granularity import PerTensor
from lowbit.core.qtype import IntQType, get_qtype

UINT8 = get_qtype("uint8")
MIN_SQNR_DB = 3.0  # rounding noise with at least half the signal's power
BULK = 0.99  # share of the elements, smallest in magnitude, whose mean square is the signal

VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def u8s8_saturates(flags: set[str] | None = None) -> bool:
    """True on an x86 CPU without VNNI, where onnxruntime's U8S8 kernels saturate int16 pair sums."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i686"):
        return False
    flags = cpu_flags() if flags is None else flags
    return not any(f in flags for f in VNNI_FLAGS)


RUNTIMES = ("onnxruntime", "pt2e")
PT2E_FLOAT_MATMULS = LayerRule(
    module_type="matmul", keep_float=True, optional=True,
    reason="PT2E: torch.compile's x86 inductor lowers only conv and linear layers to int8 kernels; a quantized "
           "activation x activation matmul (attention) would run as quantize -> dequantize -> float matmul, "
           "rounding for no speed")


def deployable(config: QuantConfig, model: torch.nn.Module | None = None,
               saturating: bool | None = None, runtime: str = "onnxruntime") -> tuple[QuantConfig, list[str]]:
    """`config` made to run as exact integer kernels in `runtime` ("onnxruntime" or "pt2e", the
    `lowbit.export.pt2e` path), and the notes that say what changed and why:
    - a model with convolutions gets fully quantized static activations: onnxruntime fuses DQ -> Conv -> Q into
      QLinearConv only with a Q after the conv (matmuls and Gemm need none: DQ -> MatMul becomes
      MatMulIntegerToFloat, so transformers keep the more accurate inputs-only placement);
    - dynamic activations as one uint8 asymmetric range per tensor, computed on every call: onnxruntime's
      DynamicQuantizeLinear, fused with the matmul it feeds into DynamicQuantizeMatMul (`export/dynamic.py`);
    - 7-bit weights where U8S8 saturates (see the module docstring), for static and dynamic activations alike;
    - for "pt2e", attention's activation x activation matmuls kept float (`PT2E_FLOAT_MATMULS`); onnxruntime runs
      them as MatMulIntegerToFloat, an integer kernel, so there they stay quantized."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    notes: list[str] = []
    if config.activation is None or config.mode is Mode.WEIGHT_ONLY:
        return config, notes
    if runtime == "pt2e" and config.mode is Mode.STATIC:
        config = config.with_rules(PT2E_FLOAT_MATMULS)
        notes.append("attention matmuls float, where the model has them: torch.compile's int8 lowering covers conv "
                     "and linear only")
    if config.mode is Mode.DYNAMIC:
        a = config.activation
        if not (isinstance(a.granularity, PerTensor) and a.qtype == UINT8 and not a.symmetric):
            config = replace(config, activation=replace(a, qtype=UINT8, granularity=PerTensor(), symmetric=False))
            notes.append(f"dynamic activations uint8 asymmetric per tensor (were {a.qtype.name} {a.granularity}): "
                         "onnxruntime's DynamicQuantizeLinear takes one range per tensor and call")
        return _weights(config, model, saturating, notes)
    has_conv = model is None or any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())
    if has_conv and not config.fully_quantized:
        config = replace(config, fully_quantized=True)
        kernel = "onnxruntime runs QLinearConv" if runtime == "onnxruntime" else "inductor lowers each conv with " \
            "its requantization to one oneDNN int8 conv"
        notes.append(f"fully quantized: a quantizer after every conv so that {kernel}")
    return _weights(config, model, saturating, notes)


def _weights(config: QuantConfig, model, saturating: bool | None, notes: list[str]) -> tuple[QuantConfig, list[str]]:
    """7-bit weights where U8S8 saturates, depthwise/grouped convs excepted (module docstring)."""
    saturating = u8s8_saturates() if saturating is None else saturating
    w = config.weight
    if saturating and w is not None and isinstance(w.qtype, IntQType) and w.qtype.bits == 8:
        config = replace(config, weight=replace(w, qtype=get_qtype("int7")))
        notes.append("7-bit weights: this CPU has no VNNI, where onnxruntime's uint8 x int8 kernels saturate with "
                     "8-bit weights (reduce_range)")
        grouped = [name for name, m in (model.named_modules() if model is not None else ())
                   if isinstance(m, torch.nn.modules.conv._ConvNd) and m.groups > 1]
        if grouped:
            why = "depthwise/grouped conv: onnxruntime's depthwise kernel accumulates in int32, 8-bit weights are exact"
            config = config.with_rules(*(LayerRule(pattern=n, weight=w, reason=why) for n in grouped))
            notes.append(f"{len(grouped)} depthwise/grouped convs keep 8-bit weights (their onnxruntime kernel does "
                         "not saturate; measured exact on EfficientNet-Lite0: top-1 agreement 0.766 in both)")
    return config, notes


def massive_activation_rules(model: torch.nn.Module, batches, min_sqnr_db: float = MIN_SQNR_DB) -> list[LayerRule]:
    """Keep-float rules for the linear layers whose input one 8-bit range per tensor cannot carry: a dynamic
    per-tensor quantizer spends its 255 steps on the tensor's extremes, so a few massive activations (SmolLM2's
    down_proj inputs reach 3,300 at an RMS of 5) leave a step wider than the typical value. Runs the float model
    on `batches` and computes, per linear input and call, the signal-to-rounding-noise ratio of uint8 asymmetric
    per-tensor quantization for the bulk of the values, SQNR = mean(x^2 over the 99% of elements smallest in
    magnitude) / (step^2 / 12) with step = (max(0, max x) - min(0, min x)) / 255 (the outliers themselves would
    otherwise dominate the mean square and pass for signal);
    a layer whose worst call is below `min_sqnr_db` (3 dB: rounding noise with at least half the signal's power) is
    kept float, the figure in the rule's reason. On SmolLM2 (8 windows) five down_proj inputs measure -29 to 1.3 dB
    and every other linear input 6 dB or more; MiniLM's worst is 15 dB."""
    worst: dict[str, float] = {}

    def hook(name):
        def observe(_module, args):
            x = args[0].detach().float().flatten()
            step = (x.max().clamp(min=0) - x.min().clamp(max=0)) / 255
            bulk = x.abs().kthvalue(max(1, math.ceil(BULK * x.numel()))).values
            signal = x[x.abs() <= bulk].pow(2).mean()
            if step > 0 and signal > 0:
                db = float(10 * torch.log10(signal / (step * step / 12)))
                worst[name] = min(worst.get(name, db), db)
        return observe

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)]
    try:
        with torch.inference_mode():
            for batch in batches:
                model(*batch)
    finally:
        for h in handles:
            h.remove()
    return [LayerRule(pattern=name, keep_float=True,
                      reason=f"input SQNR {db:.1f} dB at 8 bits per tensor (below {min_sqnr_db:g} dB): massive "
                             "activations")
            for name, db in worst.items() if db < min_sqnr_db]
