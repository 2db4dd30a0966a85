import pytest
import torch

from lowbit.core import (
    MXBlock,
    PerGroup,
    PerVector,
    bits_per_value,
    double_quantize,
    dynamic_qparams,
    fake_quantize,
    get_qtype,
)


def _w(shape=(128, 512), seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_vs_quant_two_level_bits_and_no_clipping():
    w = _w()
    qp = dynamic_qparams(w, get_qtype("int4"), PerVector(16, scale_bits=4))
    codes = qp.scale_storage.codes
    assert codes.dtype == torch.uint8 and int(codes.min()) >= 1 and int(codes.max()) <= 15
    # effective scale = code * outer, rounded up: each vector's amax still fits in qmax
    amax = w.reshape(-1, 16).abs().amax(1)
    assert torch.all(qp.scale * 7 >= amax * (1 - 1e-6))
    assert bits_per_value(qp, w.shape) == pytest.approx(4 + 4 / 16, abs=1e-3)


def test_mx_scales_are_powers_of_two_and_fit():
    w = _w()
    for name in ["fp4_e2m1", "int8", "fp8_e4m3"]:
        qt = get_qtype(name)
        qp = dynamic_qparams(w, qt, MXBlock(32))
        e = qp.scale_storage.exponent.to(torch.float32)
        assert torch.equal(qp.scale, torch.exp2(e))
        amax = w.reshape(-1, 32).abs().amax(1)
        # OCP MX: amax / scale lies in [2^emax, 2^(emax+1)), the top of the element range
        ratio = amax / qp.scale
        emax = torch.floor(torch.log2(torch.tensor(qt.max_level)))
        assert torch.all(ratio >= 2**emax) and torch.all(ratio < 2 ** (emax + 1))
        assert bits_per_value(qp, w.shape) == pytest.approx(qt.bits + 8 / 32)


def test_double_quantization_bits_and_error():
    w = _w((256, 1024))
    qp = dynamic_qparams(w, get_qtype("nf4"), PerGroup(64))
    dq = double_quantize(qp, bits=8, block=256)
    # QLoRA: 4 + 8/64 + 32/(64*256) bits per parameter (plus one fp32 offset, negligible)
    assert bits_per_value(dq, w.shape) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256), abs=1e-3)
    assert bits_per_value(qp, w.shape) == pytest.approx(4.5)
    rel = ((dq.scale - qp.scale).abs() / qp.scale).max().item()
    assert rel < 0.02
    e1 = (fake_quantize(w, qp) - w).pow(2).mean()
    e2 = (fake_quantize(w, dq) - w).pow(2).mean()
    assert e2 < e1 * 1.05


def test_double_quantization_needs_groups():
    qp = dynamic_qparams(_w(), get_qtype("int8"))
    with pytest.raises(ValueError, match="per-group"):
        double_quantize(qp)
