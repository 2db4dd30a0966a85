"""Static outlier channels: the channels chosen are the ones whose calibration peak dwarfs the median channel's,
the rewrite leaves the float function unchanged, the quantized error drops, and the split model exports to
onnxruntime with its outlier product in float and the rest still in integer kernels."""

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

import lowbit
from lowbit.config import PassSpec
from lowbit.export import integer_share, to_onnx
from lowbit.export.layout import deployable
from lowbit.ptq.outliers import outlier_channels

OUTLIER = 5  # the FFN-down input channel that reaches ~40 (the rest peak near 2)


class FFN(nn.Module):
    """BERT's FFN: up, GELU, down, with one up-projection row scaled so that one GELU output channel dwarfs the rest."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.norm, self.up, self.down = nn.LayerNorm(16), nn.Linear(16, 64), nn.Linear(64, 16)
        with torch.no_grad():
            self.up.weight[OUTLIER] *= 40.0

    def forward(self, x):
        h = self.norm(x)
        return h + self.down(nn.functional.gelu(self.up(h)))


def batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 8, 16, generator=g),) for _ in range(n)]


def test_outlier_channels_rule():
    amax = torch.tensor([1.0, 1.2, 0.9, 30.0, 1.1, 9.0, 1.0])
    assert outlier_channels(amax, ratio=8.0, max_channels=8).tolist() == [3, 5]  # median 1.1: 8.8 and up
    assert outlier_channels(amax, ratio=8.0, max_channels=1).tolist() == [3]  # the largest first
    assert outlier_channels(torch.zeros(4), ratio=8.0, max_channels=8).numel() == 0


def _config(passes=()):
    from dataclasses import replace

    return replace(deployable(lowbit.preset("w8a8"), FFN(), saturating=False)[0], passes=passes)


SPLIT = (PassSpec("outlier_channels"),)


def test_split_moves_the_outlier_channel_keeps_float_outputs_and_lowers_the_error():
    model, calib = FFN().eval(), batches(4)
    x = batches(1, seed=7)[0][0]
    plain, split = lowbit.quantize(model, calib, _config()), lowbit.quantize(model, calib, _config(SPLIT))
    info = split.layers["down"]
    assert info.note.startswith("1 outlier input channels in float") and not plain.layers["down"].note
    w = split.weight_of(info)
    assert w[:, OUTLIER].abs().max() == 0 and (w.abs().amax(0) > 0).sum() == w.shape[1] - 1
    with torch.no_grad():
        ref = model(x)
        with split.float_mode():  # the rewrite alone (weight column zeroed + float side product) is exact
            assert torch.allclose(split(x), ref, atol=1e-5)
        err_plain, err_split = ((m(x) - ref).pow(2).mean() for m in (plain, split))
    assert err_split < 0.5 * err_plain, (float(err_split), float(err_plain))
    # the FFN-down input range no longer stretches to the outlier: a step several times finer
    scale = [m.graph_module.get_submodule(m.layers["down"].input_quantizers[0]).qparams.scale for m in (plain, split)]
    assert float(scale[1]) < 0.25 * float(scale[0])
    # the column is recomputed from the up-projection's input: GELU's output is read by its quantizer only
    gelu = next(n for n in split.graph_module.graph.nodes if n.target is torch.ops.aten.gelu.default)
    assert len(gelu.users) == 1


@pytest.mark.parametrize("from_activation", [True, False])
def test_split_model_exports_and_matches_onnxruntime(tmp_path, from_activation, monkeypatch):
    import lowbit.ptq.outliers as outliers

    if not from_activation:  # the general form: index_select of the input's columns
        monkeypatch.setattr(outliers, "_activation_of_linear", lambda qmodel, x: None)
    qm = lowbit.quantize(FFN().eval(), batches(4), _config(SPLIT))
    gelu = next(n for n in qm.graph_module.graph.nodes if n.target is torch.ops.aten.gelu.default)
    assert len(gelu.users) == (1 if from_activation else 2)
    x = batches(1, seed=7)[0][0]
    path = to_onnx(qm, (x,), tmp_path / "ffn.onnx")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {sess.get_inputs()[0].name: x.numpy()}
    with torch.no_grad():
        sim = qm(x).numpy()
    assert np.abs(sess.run(None, feeds)[0] - sim).max() < 1e-3 * np.abs(sim).max()
    share = integer_share(path, feeds)
    assert share.by_op.get("MatMulIntegerToFloat", 0) > 0  # up and down still run as integer kernels
    assert len(share.float_compute_nodes) <= 2  # only the side product (and its recomputed columns) in float
