"""Bias correction (Nagel et al. 2019, section 4.2): the mean output error per channel on the calibration data
vanishes after correction, it was not zero before, and the weight-only form removes eps E[x] exactly."""

from dataclasses import replace

import pytest
import torch
from torch import nn

import lowbit.api as api
from lowbit.config import preset
from lowbit.ptq.bias_correction import bias_correction, channel_mean


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
