"""Block reconstruction (BRECQ, Li et al. 2021; QDrop, Wei et al. 2022): blocks follow the module tree, a block's
subgraph computes what the model computes, reconstruction lowers each block's output error and learns
activation step sizes, and QDrop's quantizer drops quantization at its rate while training only."""

from dataclasses import replace

import pytest
import torch

import lowbit.api as api
from lowbit.config import preset
from lowbit.core.qparams import QParams
from lowbit.core.qtype import get_qtype
from lowbit.ptq import PASSES
from lowbit.ptq.blocks import block_prefixes, partition, subgraph
from lowbit.ptq.learned_act import LearnedActQuantizer
from lowbit.ptq.reconstruction import BRECQ, brecq, qdrop, unit_steps
from lowbit.ptq.recording import record
from lowbit.ptq.runner import runners
from lowbit.zoo.fashion import pretrained


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def fashion():
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(16, 1, 28, 28, generator=g),) for _ in range(2)]
    return pretrained(), batches


def _config(w_bits, a_bits):
    base = preset("w8a8")
    return replace(base, weight=base.weight.with_bits(w_bits), activation=base.activation.with_bits(a_bits))


def test_block_prefixes_follow_the_module_tree():
    fashion = ["stem.0", "layer1.conv1", "layer1.conv2", "layer2.conv1", "layer2.conv2", "layer2.shortcut.0", "fc"]
    assert block_prefixes(fashion) == ["stem", "layer1", "layer2", "fc"]
    effnet = ["_conv_stem", "_blocks.0._depthwise_conv", "_blocks.0._project_conv", "_blocks.1._expand_conv"]
    assert block_prefixes(effnet, max_layers=2) == ["_conv_stem", "_blocks.0", "_blocks.1"]
    assert block_prefixes(effnet, max_layers=3) == ["_conv_stem", "_blocks"]
    bert = [f"enc.layer.{i}.{m}" for i in range(2) for m in ("q", "k", "v", "o", "up", "down")]
    assert block_prefixes(bert) == ["enc.layer.0", "enc.layer.1"]


def test_block_subgraphs_reproduce_the_quantized_model(fashion):
    model, batches = fashion
    qm = api.quantize(model, batches, _config(4, 8), progress=False)
    blocks = partition(qm, "block")
    assert [b.name for b in blocks] == ["stem", "layer1", "layer2", "layer3", "fc"]
    assert blocks[2].layers == ("layer2.conv1", "layer2.conv2", "layer2.shortcut.0")
    gm = qm.graph_module
    runs = runners(gm, batches)
    for b in blocks:
        ins = record(runs, b.inputs, torch.no_grad())
        outs = record(runners(gm, batches), b.outputs, torch.no_grad())
        with torch.no_grad():
            got = subgraph(gm, b)(*[x.value for x in ins])
        for g, o in zip(got, outs, strict=True):
            torch.testing.assert_close(g, o.value)


def test_brecq_and_qdrop_lower_block_errors_and_learn_step_sizes(fashion):
    model, batches = fashion
    for fn in (brecq, qdrop):
        qm = api.quantize(model, batches, _config(3, 4), progress=False)
        scales = {n: q.qparams.scale.clone() for n, q in qm.act_quantizers().items()}
        result = fn(qm, batches, iters=20, batch=8, progress=False)
        assert [r.name for r in result] == ["stem", "layer1", "layer2", "layer3", "fc"]
        assert sum(r.error_learned for r in result) < 0.9 * sum(r.error_nearest for r in result)
        assert any(not torch.equal(scales[n], q.qparams.scale) for n, q in qm.act_quantizers().items())


def test_blocks_get_iters_steps_per_layer(fashion, monkeypatch):
    """A block of k layers runs k * iters steps, so BRECQ's layers get as many steps as AdaRound's."""
    model, batches = fashion
    qm = api.quantize(model, batches, _config(4, 8), progress=False)
    blocks = partition(qm, "block")
    assert [unit_steps(b, replace(BRECQ, iters=10)) for b in blocks] == [10, 20, 30, 30, 10]
    steps = []
    step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, *a, **k: steps.append(1) or step(self, *a, **k))
    brecq(qm, batches, iters=3, batch=4, samples=8, progress=False)
    assert len(steps) == 3 * sum(len(b.layers) for b in blocks) == 30


def test_qdrop_quantizer_drops_at_its_rate_in_training_only():
    qp = QParams.from_range(torch.tensor(-1.0), torch.tensor(1.0), get_qtype("int4"))
    q = LearnedActQuantizer(qp, learn_scale=True, drop=0.5)
    x = torch.rand(20000) * 2 - 1
    x_hat = q.eval()(x)
    kept_float = (q.train()(x) == x) & (x_hat != x)
    assert 0.45 < float(kept_float.float().mean() / (x_hat != x).float().mean()) < 0.55
    q.eval()(x).sum().backward()
    assert q.scale.grad is not None and float(q.scale.grad.abs().sum()) > 0


def test_passes_are_registered_with_their_papers():
    for name in ("equalize", "bias_correction", "adaround", "brecq", "qdrop"):
        assert PASSES.get(name).paper
    assert PASSES.get("equalize").stage == "float" and PASSES.get("qdrop").stage == "quantized"
