"""bench/signedness.py's re-encodings mean the same integers: U8U8 weights (+128, zero point 128) and S8S8
activations (-128) give the U8S8 export's outputs in onnxruntime, on a small conv net with a depthwise conv."""

import numpy as np
import onnx
import pytest
import torch

import lowbit
from bench.signedness import activations_s8, sessions, weights_u8
from lowbit.export import to_onnx
from lowbit.export.layout import deployable
from tests.graph.models import images


class DwNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.dw = torch.nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.head = torch.nn.Conv2d(16, 32, 1)

    def forward(self, x):
        return self.head(torch.relu(self.dw(torch.relu(self.stem(x)))))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = DwNet().eval()
    qm = lowbit.quantize(model, images(3, batch=4), deployable(lowbit.preset("w8a8"), model, saturating=False)[0])
    path = to_onnx(qm, (images(1, batch=2)[0][0],), tmp_path_factory.mktemp("sig") / "dw.onnx")
    return onnx.load(str(path))


def _dtypes(model, op):
    init = {i.name: i.data_type for i in model.graph.initializer}
    return {init[n.input[2]] for n in model.graph.node if n.op_type == op and n.input[2] in init}


def test_reencodings_change_the_types_and_keep_the_values(exported):
    u8u8, s8s8 = weights_u8(exported), activations_s8(exported)
    assert onnx.TensorProto.INT8 in _dtypes(exported, "DequantizeLinear")
    assert onnx.TensorProto.INT8 not in _dtypes(u8u8, "DequantizeLinear")  # weights now uint8 (biases stay int32)
    assert _dtypes(s8s8, "QuantizeLinear") == {onnx.TensorProto.INT8}
    assert _dtypes(exported, "QuantizeLinear") == {onnx.TensorProto.UINT8}  # the original is left as it was
    x = images(1, batch=3, seed=5)[0][0].numpy()
    runs = sessions(exported)
    assert len(runs) == 3
    outs = {k: s.run(None, {s.get_inputs()[0].name: x})[0] for k, s in runs.items()}
    ref = outs.pop("U8S8 (lowbit)")
    step = float(np.ptp(ref)) / 255
    for label, out in outs.items():
        assert np.abs(out - ref).max() <= step + 1e-6, label  # same integers: at most one rounding step apart
