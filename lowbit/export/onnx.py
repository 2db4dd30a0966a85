"""ONNX export of a QuantizedModel: standard QDQ (QuantizeLinear/DequantizeLinear) that onnxruntime fuses into its
integer kernels.

    lowbit.export.to_onnx(qmodel, example_inputs, "model.onnx")

The model is first rewritten to its QDQ form (`lowbit.export.qdq.to_qdq`), then exported with torch.onnx's dynamo
exporter (torch.export + onnxscript's translation of `quantized_decomposed` ops into QuantizeLinear /
DequantizeLinear, opset 21). Layout choices, for onnxruntime's CPU provider on x86:
- activations uint8 asymmetric, weights int8 symmetric per output channel (the w8a8 preset): onnxruntime's U8S8
  kernels (QLinearConv, QLinearMatMul, MatMulIntegerToFloat, QGemm) are its fast path on AVX2 and AVX-512 VNNI;
- weights stored as int8 initializers feeding DequantizeLinear (a quarter of the float bytes on disk) and biases as
  int32 at s_x * s_w, because onnxruntime fuses DQ -> Conv -> Q only when every input comes from a DQ;
- per-group weight-only linear layers (w4a16) become onnxruntime's MatMulNBits (`lowbit.export.nbits`);
- quantized embedding tables stay integer initializers: Gather -> Cast -> Mul by the gathered row scales, or
  GatherBlockQuantized for per-group int4 tables (`lowbit.export.gather`), so only the gathered rows are float.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import torch

from lowbit.export.dynamic import onnx_translation as dynamic_translation
from lowbit.export.gather_nbits import onnx_translation as gather_translation
from lowbit.export.nbits import onnx_translation as nbits_translation
from lowbit.export.qdq import ExportError, to_qdq
from lowbit.graph.quantized_model import QuantizedModel

log = logging.getLogger(__name__)
OPSET = 21


def _dynamic_shapes(example_inputs: tuple, dynamic: bool):
    if not dynamic:
        return None
    return tuple({i: torch.export.Dim.AUTO for i in range(t.dim())} if isinstance(t, torch.Tensor) else None
                 for t in example_inputs)


def to_onnx(
    qmodel: QuantizedModel,
    example_inputs: tuple,
    path: str | os.PathLike,
    *,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_shapes=None,
    dynamic: bool = True,
    nbits: bool = True,
    nbits_compute: str = "float",
) -> Path:
    """Write the QDQ ONNX model to `path` (atomically) and return the path.

    `dynamic_shapes` (torch.export's format) names dynamic axes; by default every axis of every input is left
    dynamic (`dynamic=False` fixes them to the example's shapes). Sizes 0 and 1 cannot be dynamic in torch.export:
    give examples with at least 2 rows. `nbits`: turn per-group weight-only matmuls into MatMulNBits;
    `nbits_compute`: how onnxruntime multiplies with them, "float" (the input stays float: W4A16) or "int8" (it
    quantizes the input per block on the fly: dynamic W4A8, faster on VNNI CPUs; `lowbit.export.nbits.COMPUTE`)."""
    import onnx

    example_inputs = tuple(example_inputs)
    gm = to_qdq(qmodel, nbits=nbits).eval()
    shapes = dynamic_shapes if dynamic_shapes is not None else _dynamic_shapes(example_inputs, dynamic)
    translations = {**nbits_translation(nbits_compute), **gather_translation(), **dynamic_translation()}
    try:
        program = torch.onnx.export(
            gm, example_inputs, dynamo=True, opset_version=OPSET, dynamic_shapes=shapes,
            input_names=input_names, output_names=output_names, verbose=False, optimize=True,
            custom_translation_table=translations,
        )
    except Exception as exc:  # the exporter raises many types; name the step that failed
        raise ExportError(f"torch.onnx could not export the QDQ graph: {str(exc).splitlines()[0]}") from exc
    model = program.model_proto
    _raw_initializers(model)
    strip_debug_info(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save_model(model, tmp)
        onnx.checker.check_model(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    log.info("wrote %s (%.2f MB)", path, path.stat().st_size / 1e6)
    return path


def _raw_initializers(model) -> None:
    """Store every initializer as raw little-endian bytes: the exporter may write int8 codes into protobuf's
    repeated int32 field, where each takes a varint of 1 to 10 bytes instead of one byte."""
    from onnx import numpy_helper

    for i, init in enumerate(model.graph.initializer):
        if not init.raw_data:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init), init.name))


def strip_debug_info(model) -> None:
    """Drop the exporter's per-node stack traces and intermediate shape annotations: the runtime needs neither,
    and on a small CNN they were as large as the int8 weights."""
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.value_info[:]


def float_initializer_bytes(path: str | os.PathLike) -> dict[str, int]:
    """Bytes of the ONNX file's initializers by element type name (int8, int32, float, ...)."""
    import onnx

    model = onnx.load(str(path))
    out: dict[str, int] = {}
    for init in model.graph.initializer:
        name = onnx.TensorProto.DataType.Name(init.data_type).lower()
        out[name] = out.get(name, 0) + len(onnx.numpy_helper.to_array(init).tobytes())
    return out
