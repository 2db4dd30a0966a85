import pytest
import torch

from lowbit.graph.bn_stats import bn_stats
from lowbit.graph.capture import CaptureError, capture
from lowbit.graph.fold_bn import fold_bn
from tests.graph.models import TinyAttention, TinyCNN, images, tokens, trained_bn

aten = torch.ops.aten


def _targets(gm):
    return [n.target for n in gm.graph.nodes if n.op == "call_function"]


def test_sdpa_is_decomposed_into_two_matmuls_with_same_output():
    model = TinyAttention().eval()
    batch = tokens()[0]
    gm = capture(model, batch)
    t = _targets(gm)
    assert aten.scaled_dot_product_attention.default not in t
    assert t.count(aten.matmul.default) == 2
    for x, mask in tokens(seed=1):
        assert torch.allclose(gm(x, mask), model(x, mask), atol=1e-5)


def test_dynamic_batch_after_capture():
    model = trained_bn(TinyCNN())
    gm = capture(model, images(batch=4)[0])
    x = torch.randn(7, 3, 12, 12)
    assert torch.allclose(gm(x), model(x), atol=1e-5)


def test_fold_bn_keeps_outputs_and_removes_bn():
    model = trained_bn(TinyCNN())
    gm = capture(model, images()[0])
    folded = fold_bn(gm)
    assert len(folded) == 1
    assert aten.batch_norm.default not in _targets(gm)
    for (x,) in images(seed=3):
        assert torch.allclose(gm(x), model(x), atol=1e-5)


def test_fold_bn_records_batchnorm_output_statistics_on_the_folded_layer():
    model = trained_bn(TinyCNN())
    with torch.no_grad():
        model.bn.weight[0] = -0.7  # a negative gamma: the std is |gamma|
    gm = capture(model, images()[0])
    fold_bn(gm)
    convs = [n for n in gm.graph.nodes if n.target is aten.conv2d.default]
    stats = bn_stats(convs[0])  # the stem, followed by the only BatchNorm
    torch.testing.assert_close(stats.mean, model.bn.bias.detach(), atol=0, rtol=0)
    torch.testing.assert_close(stats.std, model.bn.weight.detach().abs(), atol=0, rtol=0)
    assert float(stats.std[0]) == pytest.approx(0.7)
    assert [bn_stats(n) for n in convs[1:]] == [None, None]


def test_user_model_untouched_by_capture_and_fold():
    model = trained_bn(TinyCNN())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_bn(capture(model, images()[0]))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


class DataDependent(torch.nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # control flow on data: not capturable
            return x * 2
        return x


def test_capture_error_names_source_and_suggests_submodules():
    with pytest.raises(CaptureError) as err:
        capture(DataDependent(), (torch.randn(2, 3),))
    msg = str(err.value)
    assert "DataDependent" in msg and "test_capture_fold.py" in msg
    assert "submodules" in msg


class Wrapper(torch.nn.Module):
    """Untraceable at the top (data-dependent branch) with a traceable child."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))

    def forward(self, x):
        y = self.body(x)
        return y * 2 if y.sum() > 0 else y


def test_untraceable_model_quantized_through_its_submodules():
    from lowbit.api import quantize
    from lowbit.graph.quantized_model import QuantizedModel

    torch.manual_seed(0)
    model = Wrapper().eval()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(4, 8, generator=g),) for _ in range(3)]
    with pytest.raises(CaptureError):
        quantize(model, data, "w8a8")
    q = quantize(model, data, "w8a8", submodules=["body"])
    assert isinstance(q.body, QuantizedModel) and not isinstance(model.body, QuantizedModel)
    from lowbit.metrics import sqnr_db

    x = data[0][0]  # inside the calibrated range: only rounding error remains
    assert sqnr_db(model(x).detach(), q(x).detach()) > 30
    with pytest.raises(ValueError, match="no submodule 'bdy'"):
        quantize(model, data, "w8a8", submodules=["bdy"])
