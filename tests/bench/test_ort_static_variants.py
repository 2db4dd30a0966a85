"""onnxruntime peers: reduce_range keeps int8 weights in [-64, 64]; the emulated run evaluates the same
QDQ file in float (no int8 kernels) and must agree with the int8 kernels where nothing saturates."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from bench.common import load_variants
from bench.onnx_io import equal_batches
from lowbit.zoo.task import ZooTask, batched

INT8_FULL, INT8_REDUCED = 127, 64
RELATIVE_TOLERANCE = 0.05  # of the largest fp32 output; seen: 3% (4 output steps)


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean((2, 3)))


@pytest.fixture(scope="module")
def task() -> ZooTask:
    torch.manual_seed(0)
    x = torch.randn(40, 3, 12, 12)
    return ZooTask(
        "small-cnn",
        SmallCNN().eval(),
        batched(x[:30], size=12),  # 12 + 12 + 6 rows: a shorter last batch, as the zoo's fashion-cnn has
        batched(x[32:], size=8),
        (x[:2],),
        lambda outs: {},
        "none",
        True,
        ("x",),
        ("y",),
        {"x": {0: "batch"}, "y": {0: "batch"}},
    )


def int8_weight_codes(path) -> np.ndarray:
    graph = onnx.load(str(path)).graph
    arrays = [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    return np.concatenate([a.ravel() for a in arrays if a.size > 1]).astype(np.int32)


@pytest.mark.parametrize("name", ["ort-static-minmax", "ort-dynamic"])
def test_reduce_range_halves_the_weight_codes(task, tmp_path, name) -> None:
    reg = load_variants()
    full = reg.get(name).build(task, task.calib, tmp_path)
    reduced = reg.get(f"{name}-rr").build(task, task.calib, tmp_path)
    assert full.path != reduced.path
    assert np.abs(int8_weight_codes(full.path)).max() == INT8_FULL
    assert np.abs(int8_weight_codes(reduced.path)).max() == INT8_REDUCED


def test_emulated_run_matches_int8_kernels_on_the_same_file(task, tmp_path) -> None:
    reg = load_variants()
    kernels = reg.get("ort-static-minmax").build(task, task.calib, tmp_path)
    emulated = reg.get("ort-static-minmax-emulated").build(task, task.calib, tmp_path)
    assert emulated.path == kernels.path
    x = task.eval[0][0]
    a, b = kernels.make_runner(1)(x), emulated.make_runner(1)(x)
    fp32 = task.model(x).detach().numpy()
    # Same quantization: they differ by a few output steps where an int32 requantization rounds differently.
    np.testing.assert_allclose(a, b, atol=RELATIVE_TOLERANCE * np.abs(fp32).max())
    assert np.abs(b - fp32).max() > 0  # the emulation does quantize


def test_equal_batches_keep_every_row_in_order(task) -> None:
    batches = equal_batches(task.calib)
    assert [len(b[0]) for b in batches] == [6] * 5
    assert torch.equal(torch.cat([b[0] for b in batches]), torch.cat([b[0] for b in task.calib]))


@pytest.mark.parametrize("name", ["ort-static-entropy", "ort-static-percentile"])
def test_histogram_calibrators_accept_a_shorter_last_batch(task, tmp_path, name) -> None:
    built = load_variants().get(name).build(task, task.calib, tmp_path)
    x = task.eval[0][0]
    out, fp32 = built.make_runner(1)(x), task.model(x).detach().numpy()
    assert out.shape == fp32.shape and np.abs(out - fp32).max() < RELATIVE_TOLERANCE * np.abs(fp32).max()
