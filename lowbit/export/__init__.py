"""Deployable forms of a QuantizedModel: QDQ ONNX for onnxruntime's integer kernels, PT2E for torch.compile.

    from lowbit.export import to_onnx, integer_share
    to_onnx(qmodel, example_inputs, "model.onnx")
    emulate_onnxruntime(qmodel)(x)   # what onnxruntime computes for that file, in torch
"""

from lowbit.export.emulate import emulate_onnxruntime
from lowbit.export.onnx import to_onnx
from lowbit.export.profile import IntegerShare, integer_share
from lowbit.export.qdq import ExportError, to_qdq

__all__ = ["ExportError", "IntegerShare", "emulate_onnxruntime", "integer_share", "to_onnx", "to_qdq"]
