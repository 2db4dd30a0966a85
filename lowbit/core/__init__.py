"""Numerics with no knowledge of models: qtypes, granularities, quantization parameters, primitives."""

from lowbit.core.granularity import (
    MXBlock,
    PerChannel,
    PerGroup,
    PerTensor,
    PerToken,
    PerVector,
    from_blocks,
    to_blocks,
)
from lowbit.core.packing import pack, unpack
from lowbit.core.primitives import Rounding, dequantize, dynamic_qparams, fake_quantize, quantize
from lowbit.core.qparams import QParams, bits_per_value, double_quantize
from lowbit.core.qtype import (
    BinaryQType,
    CodebookQType,
    FloatQType,
    IntQType,
    Pow2QType,
    QType,
    TernaryQType,
    get_qtype,
    qtype_names,
)
from lowbit.core.ste import fake_quantize_ste

__all__ = [
    "BinaryQType", "CodebookQType", "FloatQType", "IntQType", "MXBlock", "PerChannel", "PerGroup",
    "PerTensor", "PerToken", "PerVector", "Pow2QType", "QParams", "QType", "Rounding", "TernaryQType",
    "bits_per_value", "dequantize", "double_quantize", "dynamic_qparams", "fake_quantize",
    "fake_quantize_ste", "from_blocks", "get_qtype", "pack", "qtype_names", "quantize", "to_blocks", "unpack",
]
