"""lowbit.export.emulate against onnxruntime (STYLE kind 5): the emulation predicts the deployed output bit for bit
where onnxruntime runs integer kernels only, and to float rounding where it runs float ops too."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import lowbit
from lowbit.export import to_onnx
from lowbit.export.deploy import emulated_parity
from lowbit.export.emulate import emulate_onnxruntime, quantize_linear
from lowbit.export.layout import deployable
from tests.graph.models import TinyAttention, TinyCNN, images, tokens, trained_bn


def _run(path, inputs):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess.run(None, {n: t.numpy() for n, t in zip(names, inputs, strict=True)})[0]


def test_quantize_linear_divides_and_rounds_half_to_even():
    s = 0.1
    x = torch.tensor([0.25, 0.35, -0.25, 100.0, -100.0, 0.05 * 3], dtype=torch.float32)
    codes = quantize_linear(x, s, 3, 0, 255, torch.uint8)
    ref = torch.clamp(torch.round(x / torch.tensor(s, dtype=torch.float32)) + 3, 0, 255).to(torch.uint8)
    assert torch.equal(codes, ref)
    assert quantize_linear(torch.tensor([0.25]), 0.1, 0, -128, 127, torch.int8).item() == 2  # 2.5 -> 2 (even)
    x = torch.tensor([1.9499999284744263])  # x / 0.1 rounds to 19, x * (1 / 0.1) to 20 in float32
    assert torch.round(x * (1 / torch.tensor(0.1))).item() == 20
    assert quantize_linear(x, 0.1, 0, -128, 127, torch.int8).item() == 19
    grid = torch.arange(-20, 20, dtype=torch.float32) * 0.37
    assert torch.equal(quantize_linear(grid, 0.37, 0, -128, 127, torch.int8).float(), torch.arange(-20, 20.0))


@pytest.mark.parametrize("seed", [0, 1])
def test_cnn_emulation_equals_onnxruntime_bit_for_bit(tmp_path, seed):
    """QLinearConv (ReLU fused), QLinearAdd, a concat, pooling in float, QGemm with a float output."""
    torch.manual_seed(seed)
    config, _ = deployable(lowbit.preset("w8a8"), saturating=True)
    qm = lowbit.quantize(trained_bn(TinyCNN(), seed), images(4, batch=8, seed=seed), config)
    x = images(1, batch=16, seed=7 + seed)[0][0]
    path = to_onnx(qm, (x[:2],), tmp_path / "cnn.onnx")
    got = _run(path, (x,))
    emulated = emulate_onnxruntime(qm)(x).numpy()
    assert np.array_equal(emulated, got)
    # the emulation reads the exported weights: a model changed after export no longer matches the file
    qm.graph_module.get_submodule(qm.layers["conv_a"].weight_quantizer).qparams.scale.mul_(1.5)
    assert not np.array_equal(emulate_onnxruntime(qm)(x).numpy(), got)


def test_attention_emulation_matches_onnxruntime_to_float_rounding(tmp_path):
    """MatMulIntegerToFloat (linear layers, q @ k^T), its float bias, LayerNorm and Softmax in float."""
    torch.manual_seed(0)
    qm = lowbit.quantize(TinyAttention().eval(), tokens(4), deployable(lowbit.preset("w8a8"), saturating=True)[0])
    x, mask = tokens(1, batch=3, t=6, seed=9)[0]
    path = to_onnx(qm, (x, mask), tmp_path / "attn.onnx")
    got = _run(path, (x, mask))
    emulated = emulate_onnxruntime(qm)(x, mask).numpy()
    np.testing.assert_allclose(emulated, got, atol=1e-5, rtol=0)
    result = emulated_parity(qm, lambda *b: torch.from_numpy(_run(path, b)), (x, mask))
    assert result["parity_emulated"] == 1.0


def test_dynamic_activations_are_emulated_with_each_call_s_range(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.GELU(), torch.nn.Linear(64, 16)).eval()
    calib = [(torch.randn(2, 5, 32),) for _ in range(2)]
    config, _ = deployable(lowbit.preset("w8a8-dynamic"), model)
    qm = lowbit.quantize(model, calib, config)
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(4))
    path = to_onnx(qm, (x[:2],), tmp_path / "dyn.onnx")
    got = _run(path, (x,))
    np.testing.assert_allclose(emulate_onnxruntime(qm)(x).numpy(), got, atol=1e-5, rtol=0)


def test_unknown_nbits_compute_is_refused():
    qm = lowbit.quantize(torch.nn.Sequential(torch.nn.Linear(8, 8)).eval(), [torch.randn(4, 8)], "w8a8")
    with pytest.raises(ValueError, match="'float'"):
        emulate_onnxruntime(qm, nbits_compute="int4")


def test_efficientnet_slice_emulation_equals_onnxruntime(tmp_path):
    """A real model: EfficientNet-Lite0 (49 QLinearConv, 9 QLinearAdd, QGemm), two photos' crops."""
    import lowbit.zoo

    task = lowbit.zoo.load("efficientnet-lite0", n_calib=4, n_eval=4)
    config, _ = deployable(lowbit.preset("w8a8"), task.model)
    qm = lowbit.quantize(task.model, task.calib, config, progress=False)
    x = task.eval[0][0][:4]
    path = to_onnx(qm, (x[:2],), tmp_path / "effnet.onnx")
    got = _run(path, (x,))
    assert np.array_equal(emulate_onnxruntime(qm)(x).numpy(), got)
    sim = qm(x).detach().numpy()
    assert not np.array_equal(sim, got)  # the float simulation does not predict the runtime bit for bit


def test_matmul_nbits_reference_runs_in_torch_and_equals_the_simulation():
    """The QDQ graph's `lowbit::matmul_nbits` reference unpacks every row (it once read the first row's codes only,
    which nothing ran eagerly until the emulation did)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(256, 64), torch.nn.GELU(), torch.nn.Linear(64, 32)).eval()
    qm = lowbit.quantize(model, [torch.randn(4, 256)], "w4a16")
    x = torch.randn(3, 256)
    torch.testing.assert_close(emulate_onnxruntime(qm)(x), qm(x).detach(), atol=1e-5, rtol=0)


def test_minilm_slice_emulation_with_mlas_float_kernels(tmp_path, monkeypatch):
    """A real transformer: MiniLM's LayerNorms, GELUs and Softmaxes computed as MLAS computes them keep every code
    equal to onnxruntime's; with torch's own float kernels in their place codes part and some output elements land
    more than one step away (0.9997 within one step here; 0.91 on the runner's recipe and calibration)."""
    import lowbit.zoo
    from lowbit.export import emulate

    task = lowbit.zoo.load("minilm", n_calib=8, n_eval=8)
    config, _ = deployable(lowbit.preset("w8a8"), task.model)
    qm = lowbit.quantize(task.model, task.calib, config, progress=False)
    batch = tuple(t[:8] for t in task.eval[0])
    path = to_onnx(qm, tuple(t[:2] for t in batch), tmp_path / "minilm.onnx")
    got = torch.from_numpy(_run(path, batch))
    exact = emulated_parity(qm, lambda *_: got, batch)
    assert exact["parity_emulated"] == 1.0
    monkeypatch.setattr(emulate, "_float_kernel", lambda *_: None)  # torch's LayerNorm, GELU and Softmax instead
    torch_kernels = emulated_parity(qm, lambda *_: got, batch)
    assert torch_kernels["parity_emulated"] < 1.0
    assert torch_kernels["emulated_equal"] < exact["emulated_equal"]
