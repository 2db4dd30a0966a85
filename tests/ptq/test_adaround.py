"""AdaRound (Nagel et al. 2020): the rectified sigmoid and its schedule, the learned rounding never leaves
{floor, ceil} of W / s, and it beats round-to-nearest on the layer's output error."""

from dataclasses import replace

import pytest
import torch
from torch import nn

import lowbit.api as api
from lowbit.config import PassSpec, preset
from lowbit.core.granularity import PerChannel
from lowbit.core.primitives import fake_quantize
from lowbit.core.qparams import QParams
from lowbit.core.qtype import get_qtype
from lowbit.ptq.adaround import AdaRoundWeight, BetaSchedule, inverse_rectified_sigmoid, rectified_sigmoid
from lowbit.ptq.reconstruction import adaround


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_rectified_sigmoid_inverts_and_saturates():
    h = torch.linspace(0.01, 0.99, 50)
    torch.testing.assert_close(rectified_sigmoid(inverse_rectified_sigmoid(h)), h)
    assert rectified_sigmoid(torch.tensor([-20.0, 20.0])).tolist() == [0.0, 1.0]


def test_beta_schedule_warms_up_then_anneals_20_to_2():
    s = BetaSchedule(100, warmup=0.2)
    assert not s.active(19) and s.active(20)
    assert s.beta(20) == pytest.approx(20.0) and s.beta(100) == pytest.approx(2.0)
    assert s.beta(60) == pytest.approx(11.0)


def test_soft_weight_starts_at_w_and_hard_codes_are_floor_or_ceil():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 10, generator=g)
    qp = QParams.from_range(w.amin(1), w.amax(1), get_qtype("int4"), PerChannel(0), symmetric=True)
    m = AdaRoundWeight(w, qp)
    torch.testing.assert_close(m(), w, atol=1e-3 * float(qp.scale.max()), rtol=0)
    with torch.no_grad():
        m.v.copy_(torch.randn(m.v.shape, generator=g) * 5)
    codes = m.codes(hard=True)
    u = w / qp.scale[:, None]
    lo, hi = torch.floor(u).clamp(-8, 7), torch.ceil(u).clamp(-8, 7)
    assert ((codes == lo) | (codes == hi)).all()


class OneLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 16)

    def forward(self, x):
        return self.fc(x)


def test_adaround_beats_nearest_and_stays_on_floor_or_ceil():
    torch.manual_seed(0)
    model = OneLayer().eval()
    g = torch.Generator().manual_seed(1)
    mix = torch.randn(8, 32, generator=g)  # correlated inputs: nearest rounding is not optimal (it is when diagonal)
    batches = [(torch.randn(64, 8, generator=g) @ mix,) for _ in range(4)]
    config = replace(preset("w4a8"), weight=preset("w4a8").weight.with_bits(3))
    qm = api.quantize(model, batches, config, progress=False)
    wq = qm.graph_module.get_submodule(qm.layers["fc"].weight_quantizer)
    w_nearest = wq.w_hat.clone()
    (result,) = adaround(qm, batches, iters=300, progress=False)
    assert result.error_learned < 0.8 * result.error_nearest  # measured 0.68 / 1.14
    assert not torch.equal(wq.w_hat, w_nearest)
    w, s, z = model.fc.weight, wq.qparams.scale[:, None], wq.qparams.zero_point[:, None]
    codes = wq.w_hat / s + z
    torch.testing.assert_close(codes, torch.round(codes), atol=1e-4, rtol=0)
    u = w / s + z
    assert ((torch.round(codes) == torch.floor(u)) | (torch.round(codes) == torch.ceil(u))).all()
    torch.testing.assert_close(fake_quantize(wq.w_hat, wq.qparams), wq.w_hat)  # on the grid: exports keep it


def test_adaround_runs_from_the_config_and_improves_the_model_output():
    from tests.graph.models import TinyCNN, images, trained_bn

    model, batches = trained_bn(TinyCNN()), images(4, batch=8)
    with torch.no_grad():
        ref = torch.cat([model(*b) for b in batches])
    errors = []
    for passes in ((), (PassSpec.parse("adaround:iters=100,batch=16"),)):
        config = replace(preset("w4a8"), weight=preset("w4a8").weight.with_bits(3), passes=passes)
        qm = api.quantize(model, batches, config, progress=False)
        with torch.no_grad():
            errors.append(float((torch.cat([qm(*b) for b in batches]) - ref).pow(2).mean()))
    assert errors[1] < errors[0]
    with pytest.raises(ValueError, match="no option"):
        adaround(qm, batches, nosuch=1)
