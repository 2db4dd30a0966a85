"""rescue: PTQ first, fine-tune with quantization in the loop only when the metric misses the tolerance."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.api import quantize
from lowbit.config import QuantConfig, QuantSpec
from lowbit.core.granularity import PerChannel
from lowbit.core.qtype import get_qtype
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.graph.quantizers import ActQuantizer, WeightQuantizer
from lowbit.qat import RescueResult, rescue
from lowbit.zoo.data import fashion_mnist
from lowbit.zoo.fashion import normalize

N_TRAIN, BATCH, EPOCHS = 1536, 64, 3


class SmallNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 16, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.flatten(1))


def config(wbits: int, abits: int) -> QuantConfig:
    return QuantConfig(
        QuantSpec(get_qtype(f"int{wbits}"), PerChannel(0)),
        QuantSpec(get_qtype(f"uint{abits}"), symmetric=False),
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def task():
    """A SmallNet trained for 3 short epochs on 1536 real Fashion-MNIST images (14x14), 512 held out."""
    x, y = fashion_mnist("train")
    x, y = nn.functional.avg_pool2d(normalize(x[: N_TRAIN + 512]), 2), y[: N_TRAIN + 512]
    torch.manual_seed(0)
    model = SmallNet()
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, N_TRAIN, BATCH)]
    for _ in range(EPOCHS):
        for xb, yb in batches:
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
    held_x, held_y = x[N_TRAIN:], y[N_TRAIN:]

    def accuracy(m) -> float:
        return (m(held_x).argmax(1) == held_y).float().mean().item()

    return model.eval(), batches, accuracy


def test_within_tolerance_returns_ptq_unchanged(task):
    model, batches, accuracy = task
    qmodel = quantize(model, [b[0] for b in batches[:4]], "w8a8")
    result = rescue(qmodel, batches, accuracy, tolerance=0.02, max_steps=50)
    assert isinstance(result, RescueResult) and result.model is qmodel
    assert result.steps == 0 and result.met and result.after == result.before == accuracy(qmodel)
    assert "unchanged" in result.note
    with torch.no_grad():
        assert abs(result.reference - accuracy(model)) < 0.01  # fp32 (BN folded) through float_mode


def test_rescue_recovers_low_bit_ptq(task):
    model, batches, accuracy = task
    qmodel = quantize(model, [b[0] for b in batches[:4]], config(2, 4))
    with torch.no_grad():
        ptq, x0 = accuracy(qmodel), qmodel(batches[0][0])
    result = rescue(qmodel, batches, accuracy, tolerance=0.05, max_steps=60, lr=1e-3, eval_every=10)
    assert result.before == ptq and result.reference - ptq > 0.1  # W2A4 PTQ loses over 10 points
    assert result.after >= ptq + 0.1 and result.met and result.reference - result.after <= 0.05
    assert 0 < result.steps < 60  # stopped early, at the first evaluation within tolerance
    assert result.history[0] == (0, ptq) and result.history[-1] == (result.steps, result.after)
    out = result.model
    assert isinstance(out, QuantizedModel) and out is not qmodel
    gm = out.graph_module
    assert all(
        isinstance(gm.get_submodule(i.weight_quantizer), WeightQuantizer) for i in out.quantized_layers()
    )
    assert all(isinstance(q, ActQuantizer) and q.qparams is not None for q in out.act_quantizers().values())
    with torch.no_grad():
        assert accuracy(out) == result.after
        assert torch.equal(qmodel(batches[0][0]), x0)  # the PTQ model is left alone


def test_ste_keeps_the_ptq_ranges_and_trains_the_weights(task):
    model, batches, accuracy = task
    qmodel = quantize(model, [b[0] for b in batches[:4]], config(2, 4))
    result = rescue(
        qmodel, batches, accuracy, tolerance=0.0, max_steps=10, lr=1e-3, method="ste", eval_every=5
    )
    before_q, after_q = qmodel.act_quantizers(), result.model.act_quantizers()
    for name, q in before_q.items():
        assert torch.equal(q.qparams.scale, after_q[name].qparams.scale)
    assert result.steps == 10 and result.after > result.before
    wq = result.model.weight_quantizers()
    assert any(not torch.equal(q.w_hat, wq[n].w_hat) for n, q in qmodel.weight_quantizers().items())


def test_float_model_with_config(task):
    model, batches, accuracy = task
    result = rescue(model, batches, accuracy, tolerance=1.0, max_steps=5, config="w8a8")
    assert isinstance(result.model, QuantizedModel) and result.steps == 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"tolerance": -0.01}, "tolerance"),
        ({"tolerance": 0.01, "max_steps": 0}, "max_steps"),
        ({"tolerance": 0.01, "max_steps": 2.5}, "max_steps"),
        ({"tolerance": 0.01, "method": "adam"}, "method"),
        ({"tolerance": 0.01, "lr": 0.0}, "lr"),
        ({"tolerance": 0.01}, "config="),
    ],
)
def test_bad_arguments_are_refused(kwargs, match, task):
    model, batches, accuracy = task
    with pytest.raises(ValueError, match=match):
        rescue(model, batches, accuracy, **kwargs)


def test_batches_need_a_target(task):
    model, batches, accuracy = task
    with pytest.raises(ValueError, match="target"):
        rescue(model, [b[0] for b in batches], accuracy, tolerance=0.01, config="w8a8")
