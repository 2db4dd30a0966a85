"""PT2E form of zero padding before a conv: applied to the integer codes (the form inductor lowers to int8)."""

import torch
import torch.nn.functional as F

import lowbit
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
    assert any(c.args[0].target is PAD for c in plain.graph.nodes if c.target is torch.ops.aten.conv2d.default)
    with torch.no_grad():
        assert torch.equal(padded(x), plain(x))
        assert torch.allclose(to_exported_program(qm, (x,)).module()(x), qm(x), atol=1e-5)
