"""Zero padding beside an activation quantizer, placed where each runtime fuses it: on the integer codes for PT2E
(the form inductor lowers to int8), after the dequantize for onnxruntime (folded into QLinearConv)."""

import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

import lowbit
from lowbit.export import to_onnx
from lowbit.export.layout import deployable
from lowbit.export.pt2e import to_exported_program
from lowbit.export.qdq import PAD, QDQ, to_qdq
from tests.graph.models import images


class SamePadNet(torch.nn.Module):
    """EfficientNet's static "same" padding: an asymmetric F.pad before a stride-2 conv, and before a depthwise one."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.dw = torch.nn.Conv2d(8, 8, 3, groups=8)
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        x = F.relu6(self.stem(F.pad(x, [0, 1, 0, 1])))
        x = F.relu6(self.dw(F.pad(x, [1, 1, 1, 1])))
        return self.head(x)


def test_pads_move_to_the_codes_for_pt2e_and_change_no_value():
    torch.manual_seed(0)
    model = SamePadNet().eval()
    qm = lowbit.quantize(model, images(3, batch=4), deployable(lowbit.preset("w8a8"), model, runtime="pt2e")[0])
    x = images(1, batch=5, seed=3)[0][0]
    plain, padded = to_qdq(qm, int_bias=False), to_qdq(qm, int_bias=False, pad_codes=True)
    pads = [n for n in padded.graph.nodes if n.target is PAD]
    assert len(pads) == 2
    for pad in pads:  # the stem's pad follows the input's quantize, the depthwise one precedes a dequantize
        assert pad.args[0].target == QDQ[0] and [u.target for u in pad.users] == [QDQ[1]]
        assert pad.args[3] == float(pad.args[0].args[2])  # padded with the zero point: code for 0.0
    convs = [n for n in padded.graph.nodes if n.target is torch.ops.aten.conv2d.default]
    assert all(c.args[0].target == QDQ[1] for c in convs)  # every conv reads a dequantize
    # onnxruntime's form: each pad reads a dequantize (the input's pad moved after its quantize -> dequantize)
    assert [n.args[0].target for n in plain.graph.nodes if n.target is PAD] == [QDQ[1], QDQ[1]]
    # the input quantizer's value (padded, as in the simulation) is now the pad's: bench/parity.py reads it there
    tagged = [n.target for n in plain.graph.nodes if "lowbit_quantizer" in n.meta and n.target in (PAD, QDQ[1])]
    assert tagged[0] is PAD and PAD not in tagged[1:]
    with torch.no_grad():
        assert torch.equal(padded(x), plain(x))
        assert torch.allclose(to_exported_program(qm, (x,)).module()(x), qm(x), atol=1e-5)


def test_onnxruntime_folds_every_pad_into_its_int8_conv(tmp_path):
    torch.manual_seed(0)
    model = SamePadNet().eval()
    qm = lowbit.quantize(model, images(3, batch=4), deployable(lowbit.preset("w8a8"), model, saturating=True)[0])
    x = images(1, batch=5, seed=3)[0][0]
    path = to_onnx(qm, (x,), tmp_path / "pad.onnx")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert "Pad" not in ops and ops.count("QLinearConv") == 2, ops  # the head conv (model output) stays float
    out = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    sim = qm(x).detach().numpy()
    assert abs(out - sim).max() <= (sim.max() - sim.min()) / 255
