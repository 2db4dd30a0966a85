import pytest
import torch

from lowbit.api import quantize
from lowbit.config import LayerRule, preset
from tests.graph.models import TinyAttention, TinyCNN, images, tokens, trained_bn


def test_layers_found_and_named_after_modules():
    qm = quantize(trained_bn(TinyCNN()), images(), "w8a8")
    assert set(qm.layers) == {"stem", "conv_a", "conv_b", "head"}
    assert {i.kind for i in qm.layers.values()} == {"conv2d", "linear"}
    assert all(i.weight_quantizer for i in qm.layers.values())


def test_attention_matmuls_quantized_and_shared_edges():
    qm = quantize(TinyAttention().eval(), tokens(), "w8a8")
    kinds = sorted(i.kind for i in qm.layers.values())
    assert kinds == ["linear"] * 4 + ["matmul"] * 2
    q, k, v = (qm.layers[n] for n in ("q", "k", "v"))
    # Q, K and V read the same LayerNorm output: one quantizer on that edge
    assert q.input_quantizers == k.input_quantizers == v.input_quantizers
    mm = [i for i in qm.layers.values() if i.kind == "matmul"]
    assert all(len(i.input_quantizers) == 2 for i in mm)
    assert all(i.weight_quantizer is None for i in mm)


def test_fully_quantized_adds_output_quantizers_and_shared_concat_range():
    model = trained_bn(TinyCNN())
    conv_only = quantize(model, images(), "w8a8")
    full = quantize(model, images(), preset("w8a8", fully_quantized=True))
    kinds = " ".join(full.output_quantizers.values())
    assert "add" in kinds and "relu" in kinds and "adaptive_avg_pool2d" in kinds
    assert any("shared range" in v for v in full.output_quantizers.values())
    assert len(full.act_quantizers()) > len(conv_only.act_quantizers())
    cat_q = [n for n, v in full.output_quantizers.items() if "shared range" in v][0]
    calls = [n for n in full.graph_module.graph.nodes if n.op == "call_module" and n.target == cat_q]
    assert len(calls) == 2  # both concat inputs go through one quantizer module (one range)


def test_keep_float_rule_and_unmatched_rule():
    cfg = preset("w8a8").with_rules(LayerRule(pattern="head", keep_float=True, reason="classifier"))
    qm = quantize(trained_bn(TinyCNN()), images(), cfg)
    assert qm.layers["head"].kept_float == "classifier"
    assert qm.layers["head"].weight_quantizer is None
    bad = preset("w8a8").with_rules(LayerRule(pattern="haed", keep_float=True))
    with pytest.raises(ValueError, match="matches no layer.*head"):
        quantize(trained_bn(TinyCNN()), images(), bad)
    # a layout rule for a kind of layer this model lacks (the CNN has no matmul) is optional: no error, no effect
    layout = preset("w8a8").with_rules(LayerRule(module_type="matmul", keep_float=True, optional=True))
    assert not quantize(trained_bn(TinyCNN()), images(), layout).summary()["kept_float"]


def test_module_type_rule_changes_bits():
    from lowbit.config import QuantSpec
    from lowbit.core import PerChannel, get_qtype

    cfg = preset("w8a8").with_rules(LayerRule(module_type="Linear", weight=QuantSpec(get_qtype("int4"), PerChannel(0))))
    qm = quantize(trained_bn(TinyCNN()), images(), cfg)
    wq = qm.graph_module.get_submodule(qm.layers["head"].weight_quantizer)
    assert wq.qparams.qtype.bits == 4
    assert qm.graph_module.get_submodule(qm.layers["stem"].weight_quantizer).qparams.qtype.bits == 8


class MaskAdd(torch.nn.Module):
    """An add on a mask path (float32-min for padded positions) beside a data path."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x, mask):
        bias = (1.0 - mask.float()) * torch.finfo(torch.float32).min
        scores = self.lin(x) + bias.unsqueeze(-1).expand_as(x) * 0 + bias.unsqueeze(-1)
        return torch.softmax(scores.clamp_min(-1e4), dim=1) + x


def test_mask_valued_edges_stay_float_in_fully_quantized_mode():
    g = torch.Generator().manual_seed(0)
    data = []
    for _ in range(2):
        mask = torch.ones(3, 5, dtype=torch.long)
        mask[0, 3:] = 0
        data.append((torch.randn(3, 5, 8, generator=g), mask))
    qm = quantize(MaskAdd().eval(), data, preset("w8a8", fully_quantized=True))
    edges = qm.summary()["float_edges"]
    assert edges and all("masking value" in why for why in edges.values())
    out = qm(*data[0])
    assert torch.isfinite(out).all()
