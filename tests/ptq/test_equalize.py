"""Cross-layer equalization (Nagel et al. 2019): the float function is unchanged, per-channel ranges of each pair
become equal, per-tensor int8 error drops on a depthwise model, and high-bias absorption moves bias forward."""

from dataclasses import replace

import pytest
import torch
from torch import nn

import lowbit.api as api
from lowbit.config import PassSpec, preset
from lowbit.core.granularity import PerTensor
from lowbit.graph.capture import capture
from lowbit.graph.fold_bn import fold_bn
from lowbit.graph.nodes import get_attr_tensor
from lowbit.metrics import sqnr_db
from lowbit.ptq.equalize import _groups, _in_view, equalize, find_pairs
from lowbit.zoo.fashion import pretrained

SQNR_GAIN_DB = 3.0  # measured about +15 dB on DepthwiseNet at W8A8 per-tensor


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class DepthwiseNet(nn.Module):
    """conv-BN-ReLU6, depthwise conv-BN-ReLU6 (channel ranges over four decades), 1x1 conv, linear-ReLU-linear."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.pw = nn.Conv2d(8, 6, 1)
        self.f1, self.f2 = nn.Linear(6, 12), nn.Linear(12, 4)
        with torch.no_grad():
            self.dw.weight.mul_(torch.logspace(-2, 2, 8).reshape(8, 1, 1, 1))
            self.f1.weight.mul_(torch.logspace(-1, 1, 12).reshape(12, 1))

    def forward(self, x):
        x = nn.functional.relu6(self.bn1(self.c1(x)))
        x = nn.functional.relu6(self.bn2(self.dw(x)))
        x = self.pw(x).mean((2, 3))
        return self.f2(torch.relu(self.f1(x)))


def _model():
    torch.manual_seed(0)
    m = DepthwiseNet()
    for bn in (m.bn1, m.bn2):
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return m.eval()


def _batches(n=3):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 10, 10, generator=g),) for _ in range(n)]


def _ranges(gm, pair):
    w1, w2 = get_attr_tensor(gm, pair.first.args[1]), get_attr_tensor(gm, pair.second.args[1])
    r1 = w1.abs().reshape(w1.shape[0], -1).amax(1)
    return r1, _in_view(w2, _groups(pair.second)).abs().amax(dim=(1, 3)).reshape(-1)


def test_equalization_keeps_the_function_and_equalizes_ranges():
    model, batches = _model(), _batches()
    gm = capture(model, batches[0])
    fold_bn(gm)
    pairs = find_pairs(gm)
    assert len(pairs) == 3  # c1->dw (through ReLU6), dw->pw (through ReLU6), f1->f2 (through ReLU)
    before = [(r1 / r2).max() / (r1 / r2).min() for r1, r2 in (_ranges(gm, p) for p in pairs)]
    assert max(before) > 10
    equalize(gm, batches, absorb_bias=False)
    for p in pairs:
        r1, r2 = _ranges(gm, p)
        torch.testing.assert_close(r1, r2, rtol=1e-3, atol=1e-6)
    with torch.no_grad():
        for (x,) in batches:
            torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-5)


def test_equalization_helps_per_tensor_int8():
    model, batches = _model(), _batches()
    config = preset("w8a8")
    config = replace(config, weight=replace(config.weight, granularity=PerTensor()))
    with torch.no_grad():
        ref = torch.cat([model(*b) for b in batches])
    scores = []
    for passes in ((), (PassSpec("equalize", (("absorb_bias", False),)),)):
        qm = api.quantize(model, batches, replace(config, passes=passes), progress=False)
        with torch.no_grad():
            scores.append(sqnr_db(ref, torch.cat([qm(*b) for b in batches])))
    assert scores[1] > scores[0] + SQNR_GAIN_DB


def test_high_bias_absorption_moves_bias_and_keeps_outputs_close():
    model, batches = _model(), _batches()
    with torch.no_grad():
        model.f1.bias.fill_(3.0)  # pre-activations of f1 mostly positive: c = mean - 3 std > 0
    gm = capture(model, batches[0])
    fold_bn(gm)
    f1 = next(p for p in find_pairs(gm) if p.first.target is torch.ops.aten.linear.default)
    equalize(gm, batches, absorb_bias=False)
    b_plain = get_attr_tensor(gm, f1.first.args[2]).clone()
    gm2 = capture(model, batches[0])
    fold_bn(gm2)
    f1b = next(p for p in find_pairs(gm2) if p.first.target is torch.ops.aten.linear.default)
    equalize(gm2, batches, absorb_bias=True)
    assert (get_attr_tensor(gm2, f1b.first.args[2]) < b_plain - 1e-3).any()
    with torch.no_grad():
        out, ref = torch.cat([gm2(*b) for b in batches]), torch.cat([model(*b) for b in batches])
    assert sqnr_db(ref, out) > 40


def test_fashion_cnn_pairs_equalize_without_changing_outputs():
    model = pretrained()
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    gm = capture(model, (x,))
    fold_bn(gm)
    pairs = equalize(gm, [(x,)], absorb_bias=False)
    assert len(pairs) == 3  # conv1 -> ReLU -> conv2 in each residual block
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=1e-4, atol=1e-4)
