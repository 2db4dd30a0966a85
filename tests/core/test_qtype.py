import pytest
import torch

from lowbit.core import BinaryQType, FloatQType, IntQType, Pow2QType, TernaryQType, get_qtype, qtype_names


def test_int_ranges_by_hand():
    assert (IntQType(8).qmin, IntQType(8).qmax) == (-128, 127)
    assert (IntQType(8, narrow=True).qmin, IntQType(8, narrow=True).qmax) == (-127, 127)
    assert (IntQType(4, signed=False).qmin, IntQType(4, signed=False).qmax) == (0, 15)
    assert (IntQType(2).qmin, IntQType(2).qmax) == (-2, 1)
    assert (IntQType(16).qmin, IntQType(16).qmax) == (-32768, 32767)


@pytest.mark.parametrize("bits", [0, 1, 9, 12, 32])
def test_impossible_int_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        IntQType(bits)


def test_round_half_to_even():
    q = IntQType(8).encode(torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, 200.0, -200.0]))
    assert q.tolist() == [0, 2, 2, 0, -2, 127, -128]


def test_binary_ternary_pow2_levels():
    assert BinaryQType().encode(torch.tensor([-0.1, 0.0, 3.0])).tolist() == [0, 1, 1]
    t = TernaryQType()
    assert t.decode(t.encode(torch.tensor([-0.6, -0.4, 0.49, 0.51]))).tolist() == [-1, 0, 0, 1]
    p = Pow2QType(3)  # {0, ±1/4, ±1/2, ±1}
    assert p.levels().tolist() == [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    assert p.decode(p.encode(torch.tensor([0.3, -0.8, 0.1, 5.0]))).tolist() == [0.25, -1.0, 0.0, 1.0]


def test_fp4_e2m1_values_and_ties_to_even():
    fp4 = get_qtype("fp4_e2m1")
    assert fp4.levels().tolist() == [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]
    # ties go to the even mantissa: 0.25->0, 0.75->1, 1.25->1, 1.75->2, 2.5->2, 3.5->4, 5->4
    u = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0, 7.0])
    assert fp4.decode(fp4.encode(u)).tolist() == [0, 1, 1, 2, 2, 4, 4, -4, 6]


@pytest.mark.parametrize("name,dtype", [("fp8_e4m3", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)])
def test_fp8_matches_torch_cast(name, dtype):
    qt: FloatQType = get_qtype(name)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(50_000, generator=g) * torch.logspace(-6, 4, 50_000)
    u = u.clamp(-qt.finite_max, qt.finite_max)
    ours = qt.decode(qt.encode(u))
    ref = u.to(dtype).to(torch.float32)
    assert torch.equal(ours, ref)


def test_registry_names_and_errors():
    names = qtype_names()
    for n in ["int2", "int4", "int8", "int16", "uint8", "binary", "ternary", "pow2_4", "fp8_e4m3", "fp8_e5m2",
              "fp4_e2m1", "nf4", "dynamic_tree"]:
        assert n in names
    with pytest.raises(KeyError, match="choose one of"):
        get_qtype("int9")


def test_codebook_qtypes_sorted_in_unit_range():
    for n in ["nf4", "dynamic_tree", "fp4_e2m1", "pow2_5"]:
        lv = get_qtype(n).levels()
        assert torch.all(lv[1:] > lv[:-1])
        assert lv.abs().max() <= get_qtype(n).max_level
