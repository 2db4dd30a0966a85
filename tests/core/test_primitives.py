import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.core import (
    IntQType,
    MXBlock,
    PerChannel,
    PerGroup,
    PerTensor,
    PerVector,
    QParams,
    Rounding,
    dequantize,
    dynamic_qparams,
    fake_quantize,
    get_qtype,
    quantize,
)


def test_quantize_by_hand_asymmetric_uint8():
    # range [-1, 3] -> scale 4/255, zero point 0 - round(-1 / (4/255)) = 64
    qp = QParams.from_range(-1.0, 3.0, IntQType(8, signed=False), symmetric=False)
    assert qp.scale.item() == pytest.approx(4 / 255)
    assert qp.zero_point.item() == 64
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0, 10.0])
    q = quantize(x, qp)
    assert q.tolist() == [0, 64, 128, 255, 255]
    assert dequantize(q, qp)[1].item() == 0.0  # zero is exact


def test_quantize_by_hand_symmetric_int8_per_channel():
    w = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
    qp = QParams.from_range(torch.tensor([-1.0, 0.25]), torch.tensor([0.5, 2.0]), IntQType(8), PerChannel(0))
    assert torch.allclose(qp.scale, torch.tensor([1 / 127, 2 / 127]))
    assert quantize(w, qp).tolist() == [[64, -127], [127, 16]]  # 63.5 -> 64 (half to even), 15.875 -> 16


def _finite_floats(lo, hi):
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    data=st.lists(_finite_floats(-1e3, 1e3), min_size=2, max_size=64),
    bits=st.sampled_from([2, 3, 4, 8]),
    symmetric=st.booleans(),
)
def test_error_at_most_half_step_inside_range(data, bits, symmetric):
    x = torch.tensor(data)
    qt = IntQType(bits)
    qp = dynamic_qparams(x, qt, PerTensor(), symmetric=symmetric)
    err = (fake_quantize(x, qp) - x).abs()
    lo = (qt.qmin - qp.zero_point) * qp.scale
    hi = (qt.qmax - qp.zero_point) * qp.scale
    inside = (x >= lo) & (x <= hi)
    assert torch.all(err[inside] <= qp.scale * 0.5 * (1 + 1e-5) + 1e-30)


@settings(max_examples=40, deadline=None)
@given(
    data=st.lists(_finite_floats(-100, 100), min_size=1, max_size=64),
    name=st.sampled_from(["int4", "uint8", "int8", "nf4", "fp4_e2m1", "fp8_e4m3", "ternary", "binary", "pow2_4"]),
)
def test_fake_quantize_is_idempotent(data, name):
    x = torch.tensor(data)
    qp = dynamic_qparams(x, get_qtype(name))
    once = fake_quantize(x, qp)
    assert torch.equal(fake_quantize(once, qp), once)


def test_stochastic_rounding_is_unbiased():
    qp = QParams.from_range(-8.0, 8.0, IntQType(4), symmetric=True)  # scale 8/7
    x = torch.full((200_000,), 0.3)
    g = torch.Generator().manual_seed(0)
    mean = fake_quantize(x, qp, Rounding.STOCHASTIC, g).mean().item()
    assert mean == pytest.approx(0.3, abs=0.01)
    codes = quantize(x, qp, Rounding.STOCHASTIC, g)
    assert set(codes.unique().tolist()) == {0, 1}  # only the two neighbours


def test_stochastic_rounding_unbiased_on_codebook():
    qt = get_qtype("nf4")
    qp = QParams.from_range(-1.0, 1.0, qt)
    x = torch.full((200_000,), 0.123)
    y = fake_quantize(x, qp, Rounding.STOCHASTIC, torch.Generator().manual_seed(1))
    assert y.mean().item() == pytest.approx(0.123, abs=0.005)


@pytest.mark.parametrize("name", ["int8", "uint8", "int4", "nf4", "fp8_e4m3", "fp4_e2m1", "binary", "ternary"])
@pytest.mark.parametrize("value", [0.0, 3.7, -2.5, 1e-20])
def test_constant_tensor_round_trips_exactly(name, value):
    x = torch.full((4, 8), value)
    if name == "binary" and value == 0.0:
        # binary {-1, +1} has no zero level: zeros encode as +1 (sign(0) = +1) times a valid non-zero scale
        qp = dynamic_qparams(x, get_qtype(name))
        assert qp.scale.item() > 0 and torch.equal(fake_quantize(x, qp), torch.full_like(x, qp.scale.item()))
        return
    for sym in ([True, False] if get_qtype(name).is_integer else [True]):
        qp = dynamic_qparams(x, get_qtype(name), PerTensor(), symmetric=sym)
        assert qp.scale.item() > 0
        assert torch.equal(fake_quantize(x, qp), x)


def test_sqnr_budgets_per_qtype():
    x = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))

    def sqnr(name, g=PerChannel(0)):
        y = fake_quantize(x, dynamic_qparams(x, get_qtype(name), g))
        return 10 * torch.log10(x.pow(2).mean() / (x - y).pow(2).mean()).item()

    assert sqnr("int8") > 38
    assert sqnr("fp8_e4m3") > 30
    assert sqnr("int4") > 14
    assert sqnr("nf4", PerGroup(64)) > sqnr("int4", PerGroup(64))  # NF4 suits normal weights better
    assert sqnr("int4", PerGroup(32)) > sqnr("int4", PerChannel(0))


def test_mismatched_qparams_error():
    qp = dynamic_qparams(torch.randn(4, 8), IntQType(8), PerChannel(0))
    with pytest.raises(ValueError, match="4 scales but the tensor has 3 blocks"):
        quantize(torch.randn(3, 8), qp)


def test_nan_in_dynamic_quantization_is_reported():
    x = torch.tensor([1.0, float("nan"), float("inf")])
    with pytest.raises(ValueError, match="2 NaN/Inf"):
        dynamic_qparams(x, IntQType(8))


def test_impossible_pairings():
    with pytest.raises(ValueError, match="need an integer qtype"):
        QParams.from_range(-1.0, 1.0, get_qtype("nf4"), symmetric=False)
    with pytest.raises(ValueError, match="PerVector"):
        QParams.from_range(torch.zeros(2), torch.ones(2), get_qtype("nf4"), PerVector(16))
    with pytest.raises(ValueError, match="MX blocks"):
        QParams.from_range(torch.zeros(2), torch.ones(2), get_qtype("ternary"), MXBlock(32))
