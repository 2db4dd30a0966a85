"""LLM.int8(): the simulation equals the decomposition X_O W_O^T + Q_tok(X_R) Q_ch(W)_R^T."""

import torch

import lowbit
from lowbit.config import PassSpec
from lowbit.core.granularity import PerChannel, PerToken
from lowbit.core.primitives import dynamic_qparams, fake_quantize
from lowbit.core.qparams import QParams
from lowbit.core.qtype import get_qtype
from lowbit.llm.llm_int8 import Int8Decomposition, outlier_fraction

INT8 = get_qtype("int8")


def _data(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 32, generator=g)
    x[..., 3] *= 30.0  # one outlier feature column
    x[0, 1, 7] = 9.0  # one outlier value makes column 7 an outlier column too
    return x


def _reference(x, w, b, threshold):
    """The decomposition written out: float outlier columns, int8 per-token / per-channel for the rest."""
    cols = (x.abs() >= threshold).reshape(-1, x.shape[-1]).any(0)
    x_o, x_r = x[..., cols], x[..., ~cols]
    qp_w = QParams.from_range(w.amin(1), w.amax(1), INT8, PerChannel(0))
    w_hat = fake_quantize(w, qp_w)
    y_r = fake_quantize(x_r, dynamic_qparams(x_r, INT8, PerToken())) @ w_hat[:, ~cols].T
    return x_o @ w[:, cols].T + y_r + b, cols


def test_decomposed_linear_equals_the_decomposition():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16)).eval()
    calib = [(_data(s),) for s in range(2)]
    cfg = lowbit.preset("w8a8-dynamic", passes=(PassSpec.parse("llm_int8:threshold=6.0"),))
    qmodel = lowbit.quantize(model, calib, cfg)
    assert any(isinstance(m, Int8Decomposition) for m in qmodel.graph_module.children())
    assert not qmodel.act_quantizers()  # the layer's own input quantizer was replaced
    x = _data(5)
    expected, cols = _reference(x, model[0].weight.detach(), model[0].bias.detach(), 6.0)
    assert cols.sum() == 2
    with torch.no_grad():
        assert torch.allclose(qmodel(x), expected, atol=1e-5, rtol=1e-5)
        with qmodel.float_mode():
            assert torch.allclose(qmodel(x), model(x), atol=1e-6)
    assert outlier_fraction(qmodel) > 0


def test_no_outliers_is_plain_w8a8_dynamic():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 16)).eval()
    calib, x = [(_data(0),)], _data(3)
    plain = lowbit.quantize(model, calib, "w8a8-dynamic")
    huge = lowbit.quantize(model, calib, lowbit.preset("w8a8-llm-int8",
                                                       passes=(PassSpec.parse("llm_int8:threshold=1e6"),)))
    with torch.no_grad():
        assert torch.allclose(huge(x), plain(x), atol=1e-6)
        assert not torch.allclose(huge(x), model(x), atol=1e-4)  # it did quantize
