"""NF4 / FP4 weights per group of 64 with QLoRA double quantization, as a QuantSpec and a preset."""

import pytest
import torch

import lowbit
from lowbit.config import QuantConfig, QuantSpec
from lowbit.core.primitives import fake_quantize
from lowbit.core.qparams import DoubleQuantScales, bits_per_value
from lowbit.core.qtype import get_qtype


@pytest.mark.parametrize("qtype", ["nf4", "fp4_e2m1"])
def test_double_quantized_weights_and_their_bits(qtype):
    torch.manual_seed(0)
    base = lowbit.preset("nf4-dq")
    config = lowbit.preset("nf4-dq", weight=QuantSpec(get_qtype(qtype), base.weight.granularity,
                                                             double_quant=True))
    model = torch.nn.Sequential(torch.nn.Linear(256, 128)).eval()
    qmodel = lowbit.quantize(model, [torch.randn(4, 256)], config)
    wq = next(iter(qmodel.weight_quantizers().values()))
    assert isinstance(wq.qparams.scale_storage, DoubleQuantScales)
    assert torch.equal(fake_quantize(wq.w_hat, wq.qparams), wq.w_hat)  # on the grid of the decoded scales
    n_scales = 256 * 128 // 64
    # 4-bit codes + per group of 64: an 8-bit scale code, plus fp32 per 256 scales and one fp32 mean offset
    expected = 4 + (8 + 32 * (n_scales // 256 + 1) / n_scales) / 64
    assert bits_per_value(wq.qparams, (128, 256)) == pytest.approx(expected)
    assert qmodel.weight_bytes()["quantized"] == pytest.approx(256 * 128 * expected / 8)


def test_double_quant_json_round_trip():
    config = lowbit.preset("nf4-dq")
    again = QuantConfig.from_json(config.to_json())
    assert again == config and again.weight.double_quant
    plain = QuantConfig.from_json(lowbit.preset("w4a16").to_json())
    assert not plain.weight.double_quant


@pytest.mark.parametrize("qtype", ["nf4", "fp4_e2m1"])
def test_nearest_level_in_chunks_equals_one_pass(qtype):
    from lowbit.core.qtype import _nearest_level

    qt = get_qtype(qtype)
    levels = qt.levels() if qtype == "nf4" else qt._magnitudes
    u = torch.cat([torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 1.5, levels,
                   (levels[1:] + levels[:-1]) / 2])  # ties between levels too
    assert torch.equal(_nearest_level(u, levels, chunk=7), _nearest_level(u, levels, chunk=u.numel()))
