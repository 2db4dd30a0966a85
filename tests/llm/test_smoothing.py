"""SmoothQuant and AWQ: the migration leaves float outputs unchanged; the scales do what their papers say."""

import pytest
import torch

import lowbit
from lowbit.config import PassSpec
from lowbit.llm.awq import awq, awq_scales
from lowbit.llm.smoothquant import smooth_scales, smoothquant
from tests.llm.tiny import token_batches

PASSES = {
    "smoothquant": lambda gm, b: smoothquant(gm, b, config=lowbit.preset("w8a8-dynamic")),
    "smoothquant-search": lambda gm, b: smoothquant(gm, b, config=lowbit.preset("w8a8-dynamic"), search=True),
    "awq": lambda gm, b: awq(gm, b, config=lowbit.preset("w4a16")),
}


@pytest.mark.parametrize("name", sorted(PASSES))
def test_migration_leaves_float_outputs_unchanged(tiny_model, tiny_graph, name):
    calib, x = [(b,) for b in token_batches(2)], token_batches(1, seed=7)[0]
    norm_before = tiny_graph.get_submodule("lm.model.layers.0.input_layernorm").weight.clone()
    chosen = PASSES[name](tiny_graph, calib)
    assert len(chosen) == 6  # per layer: Q/K/V after the input norm, gate/up after the post-attention norm,
    #                          down after up (silu(gate) * up); lm_head's weight is tied: left alone
    with torch.no_grad():
        assert torch.allclose(tiny_graph(x), tiny_model(x), atol=1e-4, rtol=1e-4)
    if name.startswith("smoothquant"):  # the factors were folded into the norm (AWQ may choose s = 1)
        assert not torch.allclose(tiny_graph.get_submodule("lm.model.layers.0.input_layernorm").weight,
                                  norm_before)


class NormLinear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm, self.fc = torch.nn.LayerNorm(32), torch.nn.Linear(32, 16)

    def forward(self, x):
        return self.fc(self.norm(x))


def _outlier_inputs(n: int) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        x = torch.randn(8, 32, generator=g)
        x[:, :2] *= 40.0  # two outlier channels, as LLM activations have
        out.append((x,))
    return out


def test_smoothquant_lowers_w8a8_error_on_outlier_channels():
    torch.manual_seed(0)
    model = NormLinear().eval()
    with torch.no_grad():
        model.norm.weight[:2] = 30.0  # the norm output keeps the outlier channels
    calib, x = _outlier_inputs(4), _outlier_inputs(5)[4][0]
    ref = model(x)
    naive = lowbit.quantize(model, calib, "w8a8-dynamic")
    smooth = lowbit.quantize(model, calib, "w8a8-smoothquant")
    with torch.no_grad():
        err_naive, err_smooth = ((m(x) - ref).pow(2).mean() for m in (naive, smooth))
    assert err_smooth < 0.5 * err_naive


def test_smooth_scales_formula():
    amax_x, amax_w = torch.tensor([4.0, 1.0, 0.0]), torch.tensor([1.0, 4.0, 2.0])
    s = smooth_scales(amax_x, amax_w, 0.5)
    assert torch.allclose(s[:2], torch.tensor([2.0, 0.5]))
    assert s[2] == 1.0  # an all-zero channel is left alone
    assert torch.allclose(smooth_scales(amax_x[:2], amax_w[:2], 1.0), amax_x[:2])


def test_awq_scales_normalised_and_alpha_zero_is_identity():
    mean_x = torch.tensor([0.5, 2.0, 8.0])
    assert torch.equal(awq_scales(mean_x, 0.0), torch.ones(3))
    s = awq_scales(mean_x, 1.0)
    assert torch.allclose(s.max() * s.min(), torch.tensor(1.0))
    assert torch.allclose(s / s[0], mean_x / mean_x[0])


class PostNormBlock(torch.nn.Module):
    """BERT's layout: the LayerNorm output feeds a linear and the residual add; GELU feeds the next linear."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.up, self.down = torch.nn.LayerNorm(32), torch.nn.Linear(32, 64), torch.nn.Linear(64, 32)

    def forward(self, x):
        h = self.norm(x)
        return h + self.down(torch.nn.functional.gelu(self.up(h)))


def _post_norm_model() -> PostNormBlock:
    torch.manual_seed(0)
    model = PostNormBlock().eval()
    with torch.no_grad():
        model.norm.weight[:2] = 30.0  # outlier channels in the norm output, as in BERT
    return model


def test_explicit_smoothing_inserts_muls_and_keeps_float_outputs():
    from lowbit.graph.capture import capture

    model, calib = _post_norm_model(), _outlier_inputs(4)
    config = lowbit.preset("w8a8")
    gm = capture(model, calib[0])
    assert smoothquant(gm, calib, config=config) == {}  # nowhere to fold: the norm is read by the residual too
    chosen = smoothquant(gm, calib, config=config, explicit=True)
    assert sorted(chosen) == ["up"]  # the GELU output (read by "down") gets no multiply unless asked
    x = _outlier_inputs(5)[4][0]
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-4, rtol=1e-4)
    inv = gm.get_parameter("lowbit_smooth_0")  # 1/s of the norm output, read by the inserted multiply
    assert not torch.allclose(inv, torch.ones_like(inv))
    assert not hasattr(gm, "lowbit_smooth_1")

    gm = capture(model, calib[0])
    chosen = smoothquant(gm, calib, config=config, explicit=True, after_activations=True)
    assert sorted(chosen) == ["down", "up"]
    with torch.no_grad():
        assert torch.allclose(gm(x), model(x), atol=1e-4, rtol=1e-4)
    gelu = next(n for n in gm.graph.nodes if n.target is torch.ops.aten.gelu.default)
    assert [u.target for u in gelu.users] == [torch.ops.aten.mul.Tensor]


def test_explicit_smoothing_lowers_static_w8a8_error():
    model, calib = _post_norm_model(), _outlier_inputs(4)
    x = _outlier_inputs(5)[4][0]
    ref = model(x)
    config = lowbit.preset("w8a8")
    smooth = lowbit.preset("w8a8", passes=(PassSpec("smoothquant", (("explicit", True),)),))
    naive, smoothed = (lowbit.quantize(model, calib, c) for c in (config, smooth))
    with torch.no_grad():
        err_naive, err_smooth = ((m(x) - ref).pow(2).mean() for m in (naive, smoothed))
    assert err_smooth < 0.6 * err_naive  # static per-tensor uint8: 0.47x measured
