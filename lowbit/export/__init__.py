"""Deployable forms of a QuantizedModel: QDQ ONNX for onnxruntime's integer kernels, PT2E for torch.compile.

    from lowbit.export import to_onnx, integer_share
    to_onnx(qmodel, example_inputs, "model.onnx")
"""

from lowbit.export.onnx import to_onnx
from lowbit.export.profile import IntegerShare, integer_share
from lowbit.export.qdq import ExportError, to_qdq

__all__ = ["ExportError", "IntegerShare", "integer_share", "to_onnx", "to_qdq"]
