"""Bias correction (Nagel et al. 2019, section 4.2): the mean output error per channel on the calibration data
vanishes after correction, it was not zero before, and the weight-only form removes eps E[x] exactly. The
data-free form takes E[x] from BatchNorm statistics through a clipped normal, reads no data, and agrees with the
measured form where the statistics fit the data."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

import lowbit.api as api
from lowbit.config import preset
from lowbit.graph.bn_stats import bn_stats
from lowbit.ptq.analytic_input import clipped_normal_mean
from lowbit.ptq.bias_correction import bias_correction, channel_mean
from tests.graph.models import bn_from_data


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(x.mean((2, 3)))


def _setup(config):
    torch.manual_seed(0)
    model = Net().eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 3, 8, 8, generator=g) + 0.5,) for _ in range(4)]
    with torch.no_grad():
        ref = torch.cat([model(*b) for b in batches])
    return model, batches, ref, api.quantize(model, batches, config, progress=False)


def _mean_error(qm, batches, ref):
    with torch.no_grad():
        out = torch.cat([qm(*b) for b in batches])
    return (channel_mean(out, "linear") - channel_mean(ref, "linear")).abs()


def test_empirical_correction_removes_the_mean_output_error():
    config = preset("w4a8")
    config = replace(config, weight=config.weight.with_bits(3))
    model, batches, ref, qm = _setup(config)
    before = _mean_error(qm, batches, ref)
    result = bias_correction(qm, batches, progress=False)
    after = _mean_error(qm, batches, ref)
    assert [r.layer for r in result] == ["c1", "c2", "fc"]  # c2 had no bias: it got one
    assert before.max() > 3e-3
    assert after.max() < before.max() / 20  # what is left: the corrected bias rounded to its int32 grid


def test_weight_mode_removes_eps_times_mean_input_of_the_first_layer():
    config = replace(preset("w4a16"), weight=preset("w4a8").weight)  # weight-only, int4 per channel
    model, batches, _, qm = _setup(config)
    x = torch.cat([b[0] for b in batches])
    with torch.no_grad():
        y_f = model.c1(x)
        w_hat = qm.graph_module.get_submodule(qm.layers["c1"].weight_quantizer).w_hat
        y_q0 = nn.functional.conv2d(x, w_hat, model.c1.bias, padding=1)
    bias_correction(qm, batches, mode="weight", progress=False)
    b = dict(qm.graph_module.named_parameters())["c1.bias"]
    with torch.no_grad():
        y_q = nn.functional.conv2d(x, w_hat, b, padding=1)
    interior = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # eps E[x] holds away from zero padding
    err_before = channel_mean((y_q0 - y_f)[interior], "conv2d").abs().max()
    err_after = channel_mean((y_q - y_f)[interior], "conv2d").abs().max()
    assert err_before > 1e-3
    assert err_after < err_before / 5


def test_unknown_mode_is_refused():
    _, batches, _, qm = _setup(preset("w8a8"))
    with pytest.raises(ValueError, match="empirical"):
        bias_correction(qm, batches, mode="nope")


# -- mode "analytic": E[x] from BatchNorm statistics, no data (Nagel et al. 2019, eq. 12-13 and appendix) --------


def _reference_clipped_mean(mu: float, sigma: float, a: float, b: float) -> float:
    """E[clip(z, a, b)], z ~ N(mu, sigma^2), by the trapezoid rule over mu +- 12 sigma."""
    if sigma == 0:
        return min(max(mu, a), b)
    z = torch.linspace(mu - 12 * sigma, mu + 12 * sigma, 400_001, dtype=torch.float64)
    density = torch.exp(-0.5 * ((z - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return float(torch.trapezoid(z.clamp(a, b) * density, z))


CLIPPED_CASES = [  # (mu, sigma, a, b): ReLU, ReLU6 on both sides, no clip, hardtanh, sigma 0 inside/below/above
    (0.3, 1.2, 0.0, math.inf), (-2.0, 0.5, 0.0, 6.0), (5.5, 1.0, 0.0, 6.0), (1.0, 2.0, -math.inf, math.inf),
    (0.2, 0.7, -1.0, 1.0), (0.5, 0.0, 0.0, 6.0), (-1.0, 0.0, 0.0, 6.0), (7.0, 0.0, 0.0, 6.0),
    (-3.0, 1.0, -math.inf, -2.5),
]


@pytest.mark.parametrize(("mu", "sigma", "a", "b"), CLIPPED_CASES)
def test_clipped_normal_mean_matches_numerical_integration(mu, sigma, a, b):
    got = clipped_normal_mean(mu, sigma, a, b)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(_reference_clipped_mean(mu, sigma, a, b), abs=1e-7)


def test_clipped_normal_mean_is_elementwise_over_channels():
    mu, sigma = torch.tensor([0.3, -2.0, 5.5]), torch.tensor([1.2, 0.5, 1.0])
    got = clipped_normal_mean(mu, sigma, 0.0, torch.tensor([math.inf, 6.0, 6.0]))
    want = [_reference_clipped_mean(0.3, 1.2, 0, math.inf), _reference_clipped_mean(-2, 0.5, 0, 6),
            _reference_clipped_mean(5.5, 1.0, 0, 6)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), atol=1e-7, rtol=0)


class BNNet(nn.Module):
    """conv-BN-ReLU, conv-BN-ReLU6, 1x1 conv, pooled linear head; no padding, so every input position of c2 and c3
    follows the producing BatchNorm's statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        x = torch.relu(self.bn1(self.c1(x)))
        x = nn.functional.relu6(self.bn2(self.c2(x)))
        return self.fc(self.c3(x).mean((2, 3)))


def _bn_batches(seed=1, n=4):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(32, 3, 10, 10, generator=g),) for _ in range(n)]


def _bn_model(batches):
    torch.manual_seed(0)
    model = BNNet()
    with torch.no_grad():  # some channels mostly cut by ReLU, some by ReLU6's upper bound
        model.bn1.weight.uniform_(0.5, 2.0), model.bn1.bias.uniform_(-1.0, 1.0)
        model.bn2.weight.uniform_(0.5, 2.5), model.bn2.bias.uniform_(-1.0, 6.0)
    return bn_from_data(model, batches)


WEIGHT_ONLY_INT4 = replace(preset("w4a16"), weight=preset("w4a8").weight)


def _biases(qm):
    return {k: v.detach().clone() for k, v in qm.graph_module.named_parameters() if k.endswith("bias")}


def _analytic_setup():
    batches = _bn_batches()
    model = _bn_model(batches)
    return model, batches, api.quantize(model, batches, WEIGHT_ONLY_INT4, progress=False)


def test_bn_statistics_reach_the_quantized_graph():
    model, _, qm = _analytic_setup()
    nodes = {n.name: n for n in qm.graph_module.graph.nodes}
    for layer, bn in (("c1", model.bn1), ("c2", model.bn2)):
        stats = bn_stats(nodes[qm.layers[layer].node])
        torch.testing.assert_close(stats.mean, bn.bias.detach())
        torch.testing.assert_close(stats.std, bn.weight.detach().abs())
    assert bn_stats(nodes[qm.layers["c3"].node]) is None


def test_analytic_mode_reads_no_data_and_equals_the_hand_computed_shift():
    model, _, qm = _analytic_setup()
    before = _biases(qm)
    result = bias_correction(qm, None, mode="analytic")  # no calibration data at all
    assert [(r.layer, bool(r.skipped)) for r in result] == [("c1", True), ("c2", False), ("c3", False), ("fc", True)]
    info = qm.layers["c2"]
    eps = (qm.graph_module.get_submodule(info.weight_quantizer).w_hat - qm.weight_of(info)).double()
    beta, gamma = model.bn1.bias.detach().double(), model.bn1.weight.detach().double()
    ex = torch.tensor([_reference_clipped_mean(float(m), float(s), 0.0, math.inf)  # E[relu(z)], z ~ N(beta, gamma^2)
                       for m, s in zip(beta, gamma, strict=True)], dtype=torch.float64)
    want = -(eps.sum((2, 3)) @ ex)  # a 3x3 conv of a constant input: the kernel sums
    shift = _biases(qm)["c2.bias"] - before["c2.bias"]
    assert want.abs().max() > 1e-3
    torch.testing.assert_close(shift.double(), want, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(_biases(qm)["c1.folded_bias"], before["c1.folded_bias"], atol=0, rtol=0)


def test_analytic_mode_ignores_the_calibration_batches():
    _, _, qm_a = _analytic_setup()
    _, _, qm_b = _analytic_setup()
    bias_correction(qm_a, _bn_batches(seed=7, n=1), mode="analytic")
    bias_correction(qm_b, [(100 * torch.ones(2, 3, 10, 10),)], mode="analytic")  # would give another E[x]
    for k, v in _biases(qm_a).items():
        torch.testing.assert_close(v, _biases(qm_b)[k], atol=0, rtol=0)


def test_analytic_mode_approximates_weight_mode_when_bn_statistics_fit_the_data():
    _, batches, qm_a = _analytic_setup()
    _, _, qm_w = _analytic_setup()
    before = _biases(qm_a)
    bias_correction(qm_a, None, mode="analytic")
    bias_correction(qm_w, batches, mode="weight", samples=128, progress=False)
    for layer in ("c2.bias", "c3.bias"):
        analytic, weight = _biases(qm_a)[layer] - before[layer], _biases(qm_w)[layer] - before[layer]
        assert weight.abs().max() > 1e-3
        assert (analytic - weight).norm() < 0.02 * weight.norm(), layer  # measured 0.1-0.2 %


def test_analytic_mode_reduces_the_mean_output_error_of_the_layer():
    model, batches, qm = _analytic_setup()
    info = qm.layers["c2"]
    w_hat, w = qm.graph_module.get_submodule(info.weight_quantizer).w_hat, qm.weight_of(info).detach()
    b0 = _biases(qm)["c2.bias"]
    bias_correction(qm, None, mode="analytic")
    b1 = _biases(qm)["c2.bias"]
    with torch.no_grad():
        x = torch.relu(model.bn1(model.c1(torch.cat([b[0] for b in batches]))))
        y_f = nn.functional.conv2d(x, w, b0)
        err_before = channel_mean(nn.functional.conv2d(x, w_hat, b0) - y_f, "conv2d").abs().max()
        err_after = channel_mean(nn.functional.conv2d(x, w_hat, b1) - y_f, "conv2d").abs().max()
    assert err_before > 1e-3
    assert err_after < err_before / 5
