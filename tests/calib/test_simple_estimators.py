"""MinMax, EMA, percentile and the shared interface on small hand-checked data."""

import pytest
import torch

from lowbit.calib import ESTIMATORS, METHODS, make_estimator
from lowbit.core import PerChannel, PerGroup, PerTensor, QParams, fake_quantize, get_qtype

INT8 = get_qtype("int8")


def test_registry_holds_every_method():
    assert ESTIMATORS.names() == sorted(METHODS)
    with pytest.raises(KeyError, match="choose one of: aciq, admm, ema, kl, minmax, mse, percentile"):
        make_estimator("entropy")


def test_minmax_hand_checked(observe):
    est = observe("minmax", [torch.tensor([1.0, -2.0]), torch.tensor([[3.0], [0.5]])])
    lo, hi = est.compute_range(INT8)
    assert lo.tolist() == [-2.0] and hi.tolist() == [3.0]
    qp = est.qparams(INT8)
    assert qp.scale.tolist() == pytest.approx([3.0 / 127])
    assert torch.equal(qp.scale, QParams.from_range(lo, hi, INT8).scale)


def test_minmax_per_channel_and_group(observe):
    w = torch.tensor([[1.0, -4.0, 2.0, 0.0], [0.5, 0.25, -0.5, 8.0]])
    est = observe("minmax", [w, w / 2], granularity=PerChannel(0))
    lo, hi = est.compute_range(INT8)
    assert lo.tolist() == [-4.0, -0.5] and hi.tolist() == [2.0, 8.0]
    est = observe("minmax", [w], granularity=PerGroup(2))
    lo, hi = est.compute_range(INT8, symmetric=False)
    assert lo.tolist() == [-4.0, 0.0, 0.25, -0.5] and hi.tolist() == [1.0, 2.0, 0.5, 8.0]


def test_ema_momentum_one_is_minmax_of_last_batch(observe):
    batches = [torch.randn(100) * s for s in (5.0, 1.0, 3.0)]
    ema = observe("ema", batches, momentum=1.0)
    last = observe("minmax", batches[-1:])
    for a, b in zip(ema.compute_range(INT8), last.compute_range(INT8), strict=True):
        assert torch.equal(a, b)


def test_ema_formula_by_hand(observe):
    batches = [torch.tensor([-1.0, 2.0]), torch.tensor([-3.0, 4.0]), torch.tensor([0.0, 10.0])]
    est = observe("ema", batches, momentum=0.25)
    lo, hi = est.compute_range(INT8, symmetric=False)
    # r1 = (-1, 2); r2 = .25 * (-3, 4) + .75 * r1 = (-1.5, 2.5)
    # r3 = .25 * (0, 10) + .75 * r2 = (-1.125, 4.375)
    assert lo.item() == pytest.approx(-1.125) and hi.item() == pytest.approx(4.375)
    with pytest.raises(ValueError, match="momentum"):
        make_estimator("ema", momentum=0.0)


def test_percentile_hand_checked(observe):
    x = torch.arange(1, 1001, dtype=torch.float32)  # 1 .. 1000
    est = observe("percentile", [x, -x[:10]], percentile=99.0)
    lo, hi = est.compute_range(INT8)
    # 99% of the 1010 values of |x| lie below ~990: one bin (1000 / 2048) of interpolation error
    assert hi.item() == pytest.approx(990.0, abs=1.0) and lo.item() == -10.0
    lo, hi = est.compute_range(INT8, symmetric=False)
    assert lo.item() == pytest.approx(1.0, abs=0.5) and hi.item() == pytest.approx(990.0, abs=1.0)


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("value", [0.0, 3.7, -0.2])
def test_constant_tensor_round_trips(observe, name, value):
    x = torch.full((64,), value)
    est = observe(name, [x, x])
    for qtype, symmetric in ((INT8, True), (get_qtype("uint4"), False), (get_qtype("uint8"), True)):
        qp = est.qparams(qtype, symmetric)
        assert (qp.scale > 0).all()
        assert torch.equal(fake_quantize(x, qp), x), (qtype.name, symmetric)


@pytest.mark.parametrize("name", METHODS)
def test_every_estimator_returns_a_range_inside_the_data(observe, name):
    x = torch.randn(5000, generator=torch.Generator().manual_seed(3)) * 2 + 0.5
    est = observe(name, x.chunk(5))
    for symmetric in (True, False):
        lo, hi = est.compute_range(get_qtype("uint8"), symmetric)
        assert lo.shape == hi.shape == (1,)
        assert x.min() <= lo.item() <= hi.item() <= x.max() or name == "admm"
    assert isinstance(est.granularity, PerTensor)
