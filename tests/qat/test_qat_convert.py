"""prepare / train / convert / save / reload on small real data."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from lowbit.core.primitives import dequantize
from lowbit.qat import QATConfig, convert_eager, prepare
from lowbit.qat.binary_kernel import xnor_linear
from lowbit.qat.modules import QATConv2d, QATLinear
from lowbit.qat.quantized import QuantizedConv2d, QuantizedLinear
from lowbit.zoo.data import fashion_mnist
from lowbit.zoo.fashion import normalize

METHOD_BITS = {
    "ste": (8, 8),
    "lsq": (4, 4),
    "pact": (4, 4),
    "dsq": (4, 4),
    "binary-sign": (1, None),
    "binaryconnect": (1, None),
    "bwn": (1, None),
    "xnor": (1, 1),
    "twn": (2, None),
    "ttq": (2, None),
    "kmeans": (3, 8),
}


class TinyNet(nn.Module):
    """conv-BN-ReLU x3 then a linear head: small enough for a few training steps per method in a test."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16)
        self.c3, self.b3 = nn.Conv2d(16, 16, 3, 1, 1), nn.BatchNorm2d(16)
        self.fc1 = nn.Linear(16, 16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        x = torch.relu(self.b3(self.c3(x)))
        return self.fc(torch.relu(self.fc1(x.mean(dim=(2, 3)))))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The machine is shared: one intra-op thread, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data():
    """384 real Fashion-MNIST images, average-pooled to 14x14 to keep the tests fast."""
    x, y = fashion_mnist("train")
    return nn.functional.avg_pool2d(normalize(x[:384]), 2), y[:384]


def train(model, x, y, steps=8, lr=3e-3):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for i in range(steps):
        idx = torch.arange(i * 64, i * 64 + 64) % 256
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def eval_loss(model, x, y):
    with torch.no_grad():
        return nn.functional.cross_entropy(model(x), y).item()


@pytest.mark.parametrize("method", sorted(METHOD_BITS))
def test_training_lowers_loss_and_convert_reproduces(method, data):
    x, y = data
    torch.manual_seed(0)
    qmodel = prepare(TinyNet(), QATConfig(method, *METHOD_BITS[method]))
    qmodel.eval()
    before = eval_loss(qmodel, x[:256], y[:256])
    qmodel.train()
    train(qmodel, x, y, steps=8)
    qmodel.eval()
    assert eval_loss(qmodel, x[:256], y[:256]) < before
    converted = convert_eager(qmodel)
    with torch.no_grad():
        ref, out = qmodel(x[256:]), converted(x[256:])
    assert (ref.argmax(1) == out.argmax(1)).float().mean() >= 0.99
    assert torch.allclose(ref, out, atol=0.05 * ref.abs().max().item())


def test_prepare_leaves_the_model_alone_and_skips_first_and_last(data):
    model = TinyNet()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    qmodel = prepare(model, QATConfig("lsq", 4, 4))
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert type(model.c1) is nn.Conv2d
    assert isinstance(qmodel.c1, QATConv2d) and isinstance(qmodel.fc, QATLinear)
    assert qmodel.lowbit_qat_info.layers == {"c1": "ste", "c2": "lsq", "c3": "lsq", "fc1": "lsq", "fc": "ste"}
    assert qmodel.c1.weight_quantizer.bits == 8 and qmodel.c2.weight_quantizer.bits == 4
    assert qmodel.lowbit_qat_info.bn_pairs == (("c1", "b1"), ("c2", "b2"), ("c3", "b3"))
    floats = prepare(model, QATConfig("lsq", 4, 4, skip=("fc*",), skip_bits=None))
    assert type(floats.fc) is nn.Linear and type(floats.fc1) is nn.Linear and isinstance(floats.c1, QATConv2d)


def test_save_and_reload_is_exact(data):
    x, y = data
    config = QATConfig("kmeans", 2, 4)
    qmodel = prepare(TinyNet(), config)
    train(qmodel, x, y, steps=3)
    converted = convert_eager(qmodel)
    buffer = io.BytesIO()
    torch.save(converted.state_dict(), buffer)
    fresh = convert_eager(prepare(TinyNet(), config))
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    with torch.no_grad():
        assert torch.equal(converted(x[:64]), fresh(x[:64]))
    qp = fresh.lowbit_qparams()
    assert set(qp) == {"c1", "c2", "c3", "fc1", "fc"}
    assert qp["c2"]["weight"].qtype.bits == 2 and qp["c2"]["input"].qtype.name == "uint4"
    layer = fresh.model.c2
    assert isinstance(layer, QuantizedConv2d) and isinstance(fresh.model.b2, nn.Identity)
    assert layer.weight_codes.unique().numel() <= 4


@pytest.mark.parametrize("method", ["ttq", "bwn", "lsq"])
def test_negative_bn_scale_folds_exactly(method, data):
    x, _ = data
    qmodel = prepare(TinyNet(), QATConfig(method, *METHOD_BITS[method]))
    qmodel(x[:64])
    with torch.no_grad():
        qmodel.b2.weight[:5] *= -1
        qmodel.b2.running_var.uniform_(0.5, 2.0)
    qmodel.eval()
    converted = convert_eager(qmodel)
    with torch.no_grad():
        assert torch.allclose(qmodel(x[:64]), converted(x[:64]), atol=1e-4)
    layer = converted.model.c2
    qp = converted.lowbit_qparams()["c2"]["weight"]
    assert (qp.scale > 0).all()
    w = dequantize(layer.weight_codes, qp)
    assert (w[:5] * qmodel.c2.weight_quantizer.eval()(qmodel.c2.weight)[:5] <= 0).all()  # sign flipped


def test_freeze_bn_after_steps(data):
    x, y = data
    qmodel = prepare(TinyNet(), QATConfig("ste", 8, 8, freeze_bn_after=2))
    train(qmodel, x, y, steps=2)
    frozen = qmodel.b2.running_mean.clone()
    qmodel.train()
    train(qmodel, x, y, steps=2)
    assert torch.equal(qmodel.b2.running_mean, frozen) and not qmodel.b2.training


def test_convert_rejects_unprepared_model():
    with pytest.raises(ValueError, match="prepare"):
        convert_eager(TinyNet())


def test_xnor_linear_layer_runs_on_the_popcount_kernel(data):
    x, y = data
    qmodel = prepare(TinyNet(), QATConfig("xnor", 1, 1))
    train(qmodel, x, y, steps=2)
    converted = convert_eager(qmodel)
    layer = converted.model.fc1
    assert isinstance(layer, QuantizedLinear) and layer.dynamic_scale
    h = torch.randn(32, 16)
    with torch.no_grad():
        assert torch.allclose(xnor_linear(layer, h), layer(h), atol=1e-5)
