import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.core import IntQType, QParams, fake_quantize_ste, pack, unpack


@settings(max_examples=60, deadline=None)
@given(bits=st.sampled_from([1, 2, 4, 8]), n=st.integers(1, 100), signed=st.booleans(), seed=st.integers(0, 999))
def test_pack_round_trip(bits, n, signed, seed):
    g = torch.Generator().manual_seed(seed)
    lo = -(2 ** (bits - 1)) if signed else 0
    codes = torch.randint(lo, lo + 2**bits, (n,), generator=g)
    packed = pack(codes, bits, signed=signed)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n * bits // 8)
    assert torch.equal(unpack(packed, bits, n, signed=signed), codes.to(torch.int32))


def test_pack_layout_by_hand():
    assert pack(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    assert pack(torch.tensor([0xA, 0x5]), 4).tolist() == [0x5A]
    assert pack(torch.tensor([1, 0, 1, 1, 0, 0, 0, 0, 1]), 1).tolist() == [0b1101, 1]


def test_pack_errors():
    with pytest.raises(ValueError, match="out of range"):
        pack(torch.tensor([4]), 2)
    with pytest.raises(ValueError, match="not 3"):
        pack(torch.tensor([1]), 3)


def test_ste_gradient_inside_range_only():
    qp = QParams.from_range(-1.0, 1.0, IntQType(8))
    x = torch.tensor([-2.0, -0.5, 0.0, 0.7, 1.0, 1.5], requires_grad=True)
    y = fake_quantize_ste(x, qp)
    y.sum().backward()
    # representable range is [-128/127, 1]: -2.0 and 1.5 are clipped
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert torch.equal(y.detach(), torch.round(x.detach().clamp(-128 / 127, 1) * 127) / 127)
