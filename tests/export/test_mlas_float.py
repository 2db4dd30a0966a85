"""lowbit.export.mlas_float against onnxruntime's own kernels (STYLE kind 5): each op alone in a one-node ONNX
graph, compared element by element, beside torch's kernel, which differs (so each comparison can fail)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from lowbit.export import mlas_float

AVX512 = torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX512_BF16", "AMX")  # MLAS's Softmax kernel family


def _ort(node, inputs: dict, initializers: dict | None = None, opset: int = 17) -> np.ndarray:
    """onnxruntime's output for one node, optimizations off, one thread."""
    ins = [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()]
    inits = [onnx.numpy_helper.from_array(v.numpy(), k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph([node], "one", ins, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return sess.run(None, {k: v.numpy() for k, v in inputs.items()})[0]


def _differing(a: torch.Tensor, b: np.ndarray) -> int:
    return int((a.numpy() != b).sum())


@pytest.mark.parametrize("n", [8, 13, 20, 384, 391])  # the 8-lane loop alone, and each kind of scalar tail
def test_layer_norm_equals_onnxruntime(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(300, n, generator=g) * 2 + 1
    w, b = torch.rand(n, generator=g) + 0.5, torch.randn(n, generator=g) * 0.1
    ref = _ort(helper.make_node("LayerNormalization", ["x", "w", "b"], ["y"], axis=-1, epsilon=1e-12),
               {"x": x}, {"w": w, "b": b})
    assert _differing(mlas_float.layer_norm(x, w, b, 1e-12), ref) == 0
    assert _differing(torch.nn.functional.layer_norm(x, (n,), w, b, 1e-12), ref) > 0


def test_erf_and_bias_gelu_equal_onnxruntime():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=g) * 3
    x[:8] = torch.tensor([0.0, -0.0, 0.921875, -0.921875, 3.925, 3.93, 50.0, -1e-30])  # branch and clamp edges
    ref = _ort(helper.make_node("Erf", ["x"], ["y"]), {"x": x})
    assert _differing(mlas_float.erf(x), ref) == 0
    assert _differing(torch.erf(x), ref) > 0
    h, bias = torch.randn(64, 1536, generator=g) * 2, torch.randn(1536, generator=g)
    ref = _ort(helper.make_node("BiasGelu", ["x", "b"], ["y"], domain="com.microsoft"), {"x": h}, {"b": bias})
    assert _differing(mlas_float.gelu(h + bias), ref) == 0
    assert _differing(torch.nn.functional.gelu(h + bias), ref) > 0


@pytest.mark.skipif(not AVX512, reason="MLAS sums Softmax in another order on CPUs without AVX512F")
@pytest.mark.parametrize("d", [1, 7, 16, 50, 128])  # masked tail, one vector, several, 48-element blocks
def test_softmax_equals_onnxruntime(d):
    x = torch.randn(2, 12, 9, d, generator=torch.Generator().manual_seed(d)) * 4
    ref = _ort(helper.make_node("Softmax", ["x"], ["y"], axis=-1), {"x": x}, opset=13)
    assert _differing(mlas_float.softmax(x), ref) == 0
    if d >= 16:
        assert _differing(torch.softmax(x, -1), ref) > 0


def test_fma_rounds_once():
    a = torch.tensor([1.0 + 2.0 ** -12], dtype=torch.float32)
    c = torch.tensor([-1.0], dtype=torch.float32)
    # a * a = 1 + 2^-11 + 2^-24: unfused, the product rounds 2^-24 away first
    assert mlas_float.fma(a, a, c).item() == 2.0 ** -11 + 2.0 ** -24
    assert (a * a + c).item() == 2.0 ** -11
