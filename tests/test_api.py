import pytest
import torch

from lowbit.api import quantize
from lowbit.config import Mode, QuantConfig, preset
from lowbit.core import PerChannel, PerTensor, dequantize, fake_quantize, get_qtype
from lowbit.core import quantize as q_codes
from lowbit.metrics import sqnr_db
from tests.graph.models import TinyAttention, TinyCNN, images, tokens, trained_bn


def _out(model, batches):
    with torch.inference_mode():
        return torch.cat([model(*b) for b in batches])


def test_linear_matches_float_module_with_dequantized_weights():
    """STYLE kind 4: the quantized layer equals the float layer fed dequantized weights and fake-quant inputs."""
    lin = torch.nn.Linear(8, 4).eval()
    batches = [(torch.randn(5, 8),) for _ in range(3)]
    qm = quantize(lin, batches, "w8a8")
    info = qm.layers[next(iter(qm.layers))]
    wq = qm.graph_module.get_submodule(info.weight_quantizer)
    aq = qm.graph_module.get_submodule(info.input_quantizers[0])
    w_deq = dequantize(q_codes(lin.weight.detach(), wq.qparams), wq.qparams)
    # weight scales are per output channel, int8 symmetric, from the weight's own min/max
    amax = lin.weight.detach().abs().amax(1)
    assert torch.allclose(wq.qparams.scale, amax / 127)
    # activation range: uint8 asymmetric from the min/max over all calibration batches
    allx = torch.cat([b[0] for b in batches])
    assert aq.qparams.scale.item() == pytest.approx((allx.max() - allx.min()).item() / 255, rel=1e-5)
    x = torch.randn(6, 8)
    # the bias is rounded to int32 codes at s_x * s_w, as an integer kernel adds it to its accumulator
    s_b = aq.qparams.scale.double() * wq.qparams.scale.double()
    b_q = (torch.round(lin.bias.detach().double() / s_b) * s_b).float()
    assert (b_q - lin.bias).abs().max() <= s_b.max() / 2 + 1e-9
    ref = torch.nn.functional.linear(fake_quantize(x, aq.qparams), w_deq, b_q)
    assert torch.allclose(qm(x), ref, atol=1e-6)


def test_w8a8_close_to_float_and_model_untouched():
    model = trained_bn(TinyCNN())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qm = quantize(model, images(4), "w8a8")
    test = images(2, seed=9)
    assert sqnr_db(_out(model, test), _out(qm, test)) > 25
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training is False and any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_float_mode_equals_float_model():
    model = trained_bn(TinyCNN())
    qm = quantize(model, images(), "w4a8")
    test = images(2, seed=5)
    with qm.float_mode():
        assert torch.allclose(_out(qm, test), _out(model, test), atol=1e-5)


def test_dynamic_per_token_and_weight_only_modes():
    model = TinyAttention().eval()
    data = tokens()
    dyn = quantize(model, data, "w8a8-dynamic")
    assert all(q.dynamic and q.qparams is None for q in dyn.act_quantizers().values())
    wo = quantize(model, data, "w4a16")
    assert not wo.act_quantizers()
    assert sqnr_db(_out(model, data), _out(dyn, data)) > 25
    assert sqnr_db(_out(model, data), _out(wo, data)) > 10
    assert wo.weight_bytes()["quantized"] < dyn.weight_bytes()["quantized"]


def test_weight_bytes_are_about_a_quarter_at_int8():
    lin = torch.nn.Linear(256, 256, bias=False).eval()
    qm = quantize(lin, [(torch.randn(2, 256),)], "w8a16")
    fp32 = 256 * 256 * 4
    assert qm.weight_bytes()["total"] == pytest.approx(fp32 / 4 + 256 * 4)


def test_config_json_round_trip():
    from lowbit.config import LayerRule, QuantSpec

    cfg = preset("w4a16").with_rules(
        LayerRule(pattern="head*", keep_float=True, reason="x"),
        LayerRule(module_type="matmul", keep_float=True, optional=True),
        LayerRule(module_type="Conv2d", weight=QuantSpec(get_qtype("int8"), PerChannel(0), estimator="mse")),
    )
    back = QuantConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.mode is Mode.WEIGHT_ONLY
    with pytest.raises(ValueError, match="version 99"):
        QuantConfig.from_json(cfg.to_json().replace('"version": 1', '"version": 99'))


@pytest.mark.parametrize(
    "data,match",
    [
        ([], "calibration data is empty"),
        ([(torch.tensor([[float("nan")] * 8]),)], "8 NaN/Inf"),
        ([(torch.randn(2, 8),), (torch.randn(2, 8, 1),)], "same number of dimensions"),
    ],
)
def test_bad_calibration_data(data, match):
    with pytest.raises(ValueError, match=match):
        quantize(torch.nn.Linear(8, 2), data, "w8a8")


def test_wrong_input_shape_is_explained():
    with pytest.raises(ValueError, match=r"failed on a batch of shapes \[\(2, 5\)\]"):
        quantize(torch.nn.Linear(8, 2), [(torch.randn(2, 8),), (torch.randn(2, 5),)], "w8a8")


def test_unknown_preset():
    with pytest.raises(KeyError, match="w8a8-dynamic"):
        quantize(torch.nn.Linear(8, 2), [(torch.randn(2, 8),)], "w3a3")


def test_estimator_is_used_for_activations():
    cfg = preset("w8a8")
    from dataclasses import replace

    x = torch.cat([torch.randn(40000, 8), torch.full((1, 8), 50.0)])
    data = [(x,)]
    mm = quantize(torch.nn.Linear(8, 2), data, cfg)
    pc = quantize(torch.nn.Linear(8, 2), data, replace(cfg, activation=replace(cfg.activation, estimator="percentile")))
    s_mm = next(iter(mm.act_quantizers().values())).qparams.scale.item()
    s_pc = next(iter(pc.act_quantizers().values())).qparams.scale.item()
    assert s_pc < s_mm / 3  # the outlier is clipped by the percentile estimator, not by minmax
    assert PerTensor() == cfg.activation.granularity
