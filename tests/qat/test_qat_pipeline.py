"""lowbit.qat.convert returns the pipeline's QuantizedModel and reproduces the QAT model's eval forward."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from lowbit.graph.quantized_model import QuantizedModel
from lowbit.graph.quantizers import WeightQuantizer
from lowbit.qat import QATConfig, convert, convert_eager, prepare
from lowbit.zoo.data import fashion_mnist
from lowbit.zoo.fashion import FashionCNN, normalize

MIN_SQNR_DB = 40.0  # activation codes may flip at exact rounding ties (float32 order of the bias add)
MIN_AGREEMENT = 0.99


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    """512 real Fashion-MNIST images pooled to 14x14 (FashionCNN pools globally, so any size runs)."""
    x, y = fashion_mnist("train")
    return nn.functional.avg_pool2d(normalize(x[:512]), 2), y[:512]


def trained(method, wbits, abits, x, y, steps=4, **config):
    torch.manual_seed(0)
    model = prepare(FashionCNN(), QATConfig(method, wbits, abits, **config))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for i in range(steps):
        loss = nn.functional.cross_entropy(model(x[i * 64 : i * 64 + 64]), y[i * 64 : i * 64 + 64])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    noise = (ref - out).pow(2).sum()
    return float("inf") if noise == 0 else float(10 * torch.log10(ref.pow(2).sum() / noise))


@pytest.mark.parametrize("method,wbits,abits", [("lsq", 4, 4), ("ttq", 2, 4)])
def test_convert_is_a_quantized_model_with_the_qat_forward(method, wbits, abits, data):
    x, y = data
    model = trained(method, wbits, abits, x, y)
    qmodel = convert(model)
    assert isinstance(qmodel, QuantizedModel)
    with torch.no_grad():
        ref, out = model(x[256:]), qmodel(x[256:])
    assert (ref.argmax(1) == out.argmax(1)).float().mean() >= MIN_AGREEMENT
    assert sqnr_db(ref, out) >= MIN_SQNR_DB
    learned = convert_eager(model).lowbit_qparams()
    gm = qmodel.graph_module
    assert {i.name for i in qmodel.quantized_layers()} == set(learned)
    for info in qmodel.quantized_layers():
        wq, (aq_name,) = gm.get_submodule(info.weight_quantizer), info.input_quantizers
        assert isinstance(wq, WeightQuantizer) and wq.qparams.qtype == learned[info.name]["weight"].qtype
        assert torch.equal(wq.qparams.scale, learned[info.name]["weight"].scale)
        assert torch.equal(gm.get_submodule(aq_name).qparams.scale, learned[info.name]["input"].scale)
    # the residual block's conv and projection read one tensor: one quantizer each if their ranges differ
    conv1, short = qmodel.layers["layer2.conv1"], qmodel.layers["layer2.shortcut.0"]
    same = torch.equal(learned["layer2.conv1"]["input"].scale, learned["layer2.shortcut.0"]["input"].scale)
    assert (conv1.input_quantizers == short.input_quantizers) == same
    if method == "lsq":
        assert not same  # LSQ learns each layer's step
    assert gm.get_submodule(qmodel.layers["stem.0"].weight_quantizer).qparams.qtype.bits == 8  # skipped: W8


def test_convert_with_binary_and_ternary_weights_is_exact(data):
    x, y = data
    for method, wbits in (("bwn", 1), ("twn", 2)):
        model = trained(method, wbits, None, x, y, steps=2)
        qmodel = convert(model)
        with torch.no_grad():
            assert torch.allclose(model(x[:128]), qmodel(x[:128]), atol=1e-5)
        assert not qmodel.act_quantizers() or all(
            q.spec.qtype.bits == 8 for q in qmodel.act_quantizers().values()
        )  # only the W8A8 first and last layers quantize inputs


def test_converted_model_works_with_the_pipeline_tools(data):
    x, y = data
    model = trained("lsq", 4, 4, x, y, steps=2)
    qmodel = convert(model)
    copied = copy.deepcopy(qmodel)
    with torch.no_grad():
        assert torch.equal(qmodel(x[:5]), copied(x[:5]))  # any batch size, copies exactly
        with qmodel.float_mode():
            floats = qmodel(x[:64])
        assert not torch.equal(floats, qmodel(x[:64]))
    assert json.loads(qmodel.config.to_json())["rules"][1]["weight"]["qtype"] == "int4_narrow"
    summary = qmodel.summary()
    assert summary["quantized_layers"] == 10 and summary["folded_bn"] == 9
    assert summary["weight_bytes"]["quantized"] < 0.3 * 4 * sum(p.numel() for p in FashionCNN().parameters())


def test_xnor_is_refused_with_the_alternative(data):
    x, y = data
    model = trained("xnor", 1, 1, x, y, steps=1)
    with pytest.raises(ValueError, match="xnor.*convert_eager"):
        convert(model)


def test_convert_needs_example_inputs_and_keeps_float_layers_float():
    model = prepare(FashionCNN(), QATConfig("lsq", 4, None, skip_bits=None))
    with pytest.raises(ValueError, match="example inputs"):
        convert(model)
    qmodel = convert(model, example_inputs=(torch.randn(2, 1, 14, 14),))
    assert set(qmodel.summary()["kept_float"]) == {"stem.0", "fc"} and not qmodel.act_quantizers()
