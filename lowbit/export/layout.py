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

import platform
from dataclasses import replace
from pathlib import Path

import torch

from lowbit.config import LayerRule, Mode, QuantConfig
from lowbit.core.qtype import IntQType, get_qtype

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


def deployable(config: QuantConfig, model: torch.nn.Module | None = None,
               saturating: bool | None = None) -> tuple[QuantConfig, list[str]]:
    """`config` made to run as exact integer kernels in onnxruntime, and the notes that say what changed and why:
    - a model with convolutions gets fully quantized static activations: onnxruntime fuses DQ -> Conv -> Q into
      QLinearConv only with a Q after the conv (matmuls and Gemm need none: DQ -> MatMul becomes
      MatMulIntegerToFloat, so transformers keep the more accurate inputs-only placement);
    - 7-bit weights where U8S8 saturates (see the module docstring)."""
    notes: list[str] = []
    if config.mode is not Mode.STATIC or config.activation is None:
        return config, notes
    has_conv = model is None or any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules())
    if has_conv and not config.fully_quantized:
        config = replace(config, fully_quantized=True)
        notes.append("fully quantized: a quantizer after every conv so that onnxruntime runs QLinearConv")
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
