"""Cross-layer equalization (Nagel et al. 2019): the float function is unchanged, per-channel ranges of each pair
become equal, per-tensor int8 error drops on a depthwise model, and high-bias absorption moves bias forward."""

from dataclasses import replace

import pytest
import torch
from torch import nn

import lowbit.api as api
from lowbit.config import PassSpec, preset
from lowbit.core.granularity import PerTensor
from lowbit.graph.bn_stats import bn_stats
from lowbit.graph.capture import capture
from lowbit.graph.fold_bn import fold_bn
from lowbit.graph.nodes import get_attr_tensor
from lowbit.metrics import sqnr_db
from lowbit.ptq.analytic_input import analytic_input_mean
from lowbit.ptq.equalize import _groups, _in_view, equalize, find_pairs
from lowbit.ptq.runner import GraphRunner
from lowbit.zoo.fashion import pretrained
from tests.graph.models import bn_from_data

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


# -- BatchNorm statistics follow the rescaled and shifted channels (lowbit.graph.bn_stats) ----------------------


def _fitted_model(batches):
    model = _model()
    with torch.no_grad():  # dw's pre-activations mostly positive: c = beta - 3 |gamma| > 0 on most channels
        model.bn2.weight.uniform_(0.3, 0.6)
        model.bn2.bias.uniform_(2.0, 4.0)
    for bn in (model.bn1, model.bn2):  # dw's weakest channel has a variance near BatchNorm's default eps, which
        bn.eps = 1e-12  # would make the output's std |gamma| sqrt(var / (var + eps)) instead of |gamma|
    return bn_from_data(model, batches)


def _measured(gm, node, batches):
    ys = [GraphRunner(gm, b).run_until([node])[node] for b in batches]
    y = torch.cat(ys).transpose(0, 1).reshape(ys[0].shape[1], -1).double()
    return y.mean(1).float(), y.std(1, unbiased=False).float()


def test_analytic_input_mean_after_equalization_is_the_scaled_one():
    model, batches = _model(), _batches()
    gm = capture(model, batches[0])
    fold_bn(gm)
    before = [analytic_input_mean(gm, p.second) for p in find_pairs(gm)]
    assert before[0] is not None and before[1] is not None and before[2] is None  # f1 had no BatchNorm
    pairs = equalize(gm, batches, absorb_bias=False)
    assert pairs[0].act.target is torch.ops.aten.clamp.Tensor  # ReLU6 became a per-channel clamp
    for p, ex in zip(pairs[:2], before[:2], strict=True):
        assert (p.scale.log().abs() > 0.1).any()
        torch.testing.assert_close(analytic_input_mean(gm, p.second), ex / p.scale.double(), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("stats", ["measured", "bn"])
def test_bn_statistics_track_the_layer_output_through_equalization_and_absorption(stats):
    batches = _batches()
    model = _fitted_model(batches)
    gm = capture(model, batches[0])
    fold_bn(gm)
    b_dw = get_attr_tensor(gm, find_pairs(gm)[1].first.args[2]).clone()
    pairs = equalize(gm, batches if stats == "measured" else None, stats=stats)
    assert (get_attr_tensor(gm, pairs[1].first.args[2]) < b_dw / pairs[1].scale - 0.5).any()  # bias absorbed
    for p in pairs[:2]:  # c1 and dw: the statistics fitted to the data stay the output's mean and std
        mean, std = _measured(gm, p.first, batches)
        torch.testing.assert_close(bn_stats(p.first).mean, mean, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(bn_stats(p.first).std, std, rtol=1e-3, atol=1e-4)
    with torch.no_grad():
        out, ref = torch.cat([gm(*b) for b in batches]), torch.cat([model(*b) for b in batches])
    assert sqnr_db(ref, out) > 40


def test_unknown_stats_source_is_refused():
    model, batches = _model(), _batches()
    with pytest.raises(ValueError, match="measured"):
        equalize(capture(model, batches[0]), batches, stats="kl")
