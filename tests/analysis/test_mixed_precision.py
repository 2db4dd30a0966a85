"""Automatic mixed precision: the deliberately sensitive layer is picked first, the fewest layers meet the
target, the rules reproduce the returned model exactly, and unreachable targets say so."""

import math

import pytest
import torch
from torch import nn

import lowbit.api as api
from lowbit.analysis.mixed_precision import TargetNotMet, auto_mixed_precision
from lowbit.analysis.sensitivity import sensitivity
from lowbit.config import preset

OUTLIER = 300.0  # fc2's channel 0 is this much larger: fc3's per-tensor input range is ruined by it


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class OutlierMLP(nn.Module):
    """fc2 writes one huge channel that fc3 reads (and scales back down): only fc3 suffers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3, self.fc4 = (
            nn.Linear(16, 32),
            nn.Linear(32, 32),
            nn.Linear(32, 32),
            nn.Linear(32, 8),
        )
        with torch.no_grad():
            self.fc2.weight[0] *= OUTLIER
            self.fc2.bias[0] *= OUTLIER
            self.fc3.weight[:, 0] /= OUTLIER

    def forward(self, x):
        x = self.fc2(torch.relu(self.fc1(x)))
        return self.fc4(torch.relu(self.fc3(x)))


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = OutlierMLP().eval()
    batches = [(torch.randn(32, 16),) for _ in range(4)]
    return model, batches


def _fresh(setup, config="w8a8"):
    model, batches = setup
    return api.quantize(model, batches, config, progress=False)


def _out(qm, batches):
    with torch.inference_mode():
        return torch.cat([qm(*b) for b in batches])


def test_sensitive_layer_is_ranked_and_picked_first(setup):
    _, batches = setup
    qm = _fresh(setup)
    ranking = sensitivity(qm, batches)
    assert ranking[0].layer == "fc3" and ranking[0].sqnr_db < ranking[1].sqnr_db - 20
    res = auto_mixed_precision(qm, batches, target=40.0)
    assert [c.layer for c in res.layers] == ["fc3"] and res.layers[0].rank == 1
    assert res.metric_before < 40.0 <= res.metric_after and res.met
    assert [(s.k, s.met) for s in res.steps] == [(0, False), (1, True)]
    assert qm.layers["fc3"].kept_float.startswith("mixed precision") and "fc3" in qm.summary()["kept_float"]
    assert qm.layers["fc3"].weight_quantizer is None and not res.all_layers_needed


def test_rules_reproduce_the_returned_model_exactly(setup):
    model, batches = setup
    qm = _fresh(setup)
    res = auto_mixed_precision(qm, batches, target=40.0)
    again = api.quantize(model, batches, preset("w8a8").with_rules(*res.rules), progress=False)
    assert {i.name for i in again.layers.values() if i.kept_float} == {"fc3"}
    assert torch.equal(_out(qm, batches), _out(again, batches))
    assert qm.config.rules == res.rules


def test_fewest_layers_for_a_target_between_steps(setup):
    """A target between the metric with k-1 and k layers float needs exactly k layers."""
    _, batches = setup
    probe = auto_mixed_precision(_fresh(setup), batches, target=math.inf, recalibrate=False)
    by_k = {s.k: s.metric for s in probe.steps}
    assert probe.all_layers_needed and len(probe.layers) == 4 and by_k[4] == math.inf
    k = 3
    target = (by_k[k - 1] + by_k[k]) / 2 if by_k[k] > by_k[k - 1] else by_k[k]
    res = auto_mixed_precision(_fresh(setup), batches, target=target, recalibrate=False)
    assert len(res.layers) == k and res.metric_after >= target
    assert [c.layer for c in res.layers] == [c.layer for c in probe.layers[:k]]


def test_target_already_met_changes_nothing(setup):
    _, batches = setup
    qm = _fresh(setup)
    before = _out(qm, batches)
    res = auto_mixed_precision(qm, batches, target=0.5, metric="cosine")
    assert res.layers == () and res.rules == () and [s.k for s in res.steps] == [0]
    assert torch.equal(before, _out(qm, batches))


def test_raising_bits_fixes_the_sensitive_layer_and_reproduces(setup):
    model, batches = setup
    qm = _fresh(setup)
    res = auto_mixed_precision(qm, batches, target=40.0, action="int16")
    assert [c.layer for c in res.layers] == ["fc3"] and res.metric_after >= 40.0
    info = qm.layers["fc3"]
    assert qm.graph_module.get_submodule(info.weight_quantizer).spec.qtype.bits == 16
    assert qm.graph_module.get_submodule(info.input_quantizers[0]).spec.qtype.bits == 16
    assert not info.kept_float
    again = api.quantize(model, batches, preset("w8a8").with_rules(*res.rules), progress=False)
    assert torch.equal(_out(qm, batches), _out(again, batches))


def test_user_metric_lower_is_better(setup):
    _, batches = setup
    qm = _fresh(setup)
    with qm.float_mode():
        ref = _out(qm, batches)

    def mse(m):
        return float((_out(m, batches) - ref).pow(2).mean())

    res = auto_mixed_precision(qm, batches, target=mse(qm) / 100, metric=mse, higher_is_better=False)
    assert (
        res.metric_name == "mse"
        and [c.layer for c in res.layers] == ["fc3"]
        and res.metric_after <= res.target
    )


def test_unreachable_target_is_a_clear_error_and_leaves_the_model(setup):
    _, batches = setup
    qm = _fresh(setup)
    before = _out(qm, batches)
    with pytest.raises(TargetNotMet, match="misses the target"):
        auto_mixed_precision(qm, batches, target=2.0, metric=lambda m: 1.0)
    with pytest.raises(TargetNotMet, match="raise max_layers"):
        auto_mixed_precision(qm, batches, target=math.inf, max_layers=2)
    assert torch.equal(before, _out(qm, batches)) and not any(i.kept_float for i in qm.layers.values())


def test_bad_action_and_metric_names(setup):
    _, batches = setup
    with pytest.raises(ValueError, match="int<bits>"):
        auto_mixed_precision(_fresh(setup), batches, 40.0, action="fp16")
    with pytest.raises(ValueError, match="raises nothing"):
        auto_mixed_precision(_fresh(setup), batches, 40.0, action="int8")
    with pytest.raises(ValueError, match="unknown metric"):
        auto_mixed_precision(_fresh(setup), batches, 40.0, metric="psnr")
