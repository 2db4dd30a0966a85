"""`lowbit thresholds` on .npy, .pt and .safetensors files."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from lowbit.calib import METHODS
from lowbit.cli import main


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def activation() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, generator=g)
    x[3, 7], x[40, 1] = 25.0, -18.0  # outliers: the clipping methods must do better than minmax
    return x


def write(tmp_path, kind: str, x: torch.Tensor):
    path = tmp_path / f"t.{kind}"
    if kind == "npy":
        np.save(path, x.numpy())
    elif kind == "pt":
        torch.save({"other": torch.ones(3), "act": x}, path)
    else:
        save_file({"act": x, "bias": torch.zeros(4)}, str(path))
    return path


def run(*args):
    result = CliRunner().invoke(main, ["thresholds", *map(str, args)])
    return result


@pytest.mark.parametrize("kind", ["npy", "pt", "safetensors"])
def test_json_on_every_file_type(tmp_path, kind):
    x = activation()
    path = write(tmp_path, kind, x)
    result = run(path, "--json", "--bits", "8", *(["--name", "act"] if kind == "pt" else []))
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert list(out["methods"]) == list(METHODS)
    assert out["shape"] == [64, 128] and out["qtype"] == "int8"
    m = out["methods"]
    assert m["minmax"]["min"] == -18.0 and m["minmax"]["max"] == 25.0
    assert m["ema"]["max"] < 25.0  # fed in 8 chunks, most without the outlier
    for name, r in m.items():
        assert set(r) == {"min", "max", "mse", "sqnr_db"}, name
        ref = (x.double() ** 2).sum() / (r["mse"] * x.numel())
        assert r["sqnr_db"] == pytest.approx(10 * torch.log10(ref).item(), rel=1e-6)
    assert m["mse"]["mse"] <= min(r["mse"] for r in m.values()) * 1.005
    assert m["kl"]["max"] < 25.0


def test_asymmetric_table_and_names(tmp_path):
    path = write(tmp_path, "safetensors", activation().relu())
    result = run(path, "--asymmetric", "--bits", "4")
    assert result.exit_code == 0, result.output
    for name in METHODS:
        assert name in result.output
    assert "uint4, asymmetric" in result.output
    bad = run(write(tmp_path, "pt", activation()), "--name", "nope")
    assert bad.exit_code != 0 and "it holds: other, act" in bad.output


def test_bad_bits_and_bad_data(tmp_path):
    path = write(tmp_path, "npy", activation())
    result = run(path, "--bits", "9")
    assert result.exit_code == 2 and "not 9" in result.output
    x = activation()
    x[0, :3] = float("nan")
    result = run(write(tmp_path, "npy", x), "--json")
    assert result.exit_code == 1 and "3 NaN/Inf values" in result.output
