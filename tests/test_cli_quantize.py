"""`lowbit quantize` on a user's model (pkg.module:factory) with .pt calibration tensors, and its errors."""

import json
import math
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from lowbit.cli import main
from lowbit.config import QuantConfig

FACTORY_MODULE = "lowbit_test_user_models"


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    """A module on sys.path with a factory, and .pt calibration tensors for it."""
    (tmp_path / f"{FACTORY_MODULE}.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn

        def small_cnn():
            torch.manual_seed(0)
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                 nn.Flatten(), nn.Linear(8, 10)).eval()

        def small_mlp():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 64)).eval()

        NOT_A_MODEL = 3
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    calib = tmp_path / "calib.pt"
    torch.save(torch.randn(24, 3, 16, 16, generator=torch.Generator().manual_seed(1)), calib)
    return tmp_path, calib


def invoke(*args):
    return CliRunner().invoke(main, ["quantize", *args, "--threads", "1"])


def test_quantize_user_factory_json_and_out(user_model):
    tmp_path, calib = user_model
    out = tmp_path / "out"
    result = invoke(
        "--model", f"{FACTORY_MODULE}:small_cnn", "--calib", str(calib), "--json", "--out", str(out)
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    for key in ("cosine", "sqnr_db", "top1_agreement", "fp32_bytes", "quantized_bytes"):
        assert math.isfinite(summary[key]), key
    assert summary["cosine"] > 0.99 and summary["top1_agreement"] >= 0.9
    assert summary["quantized_bytes"] < summary["fp32_bytes"]
    assert summary["quantized_layers"] == summary["layers"] == 3
    assert "not held out" in summary["evaluation_data"]
    assert "simulation" in summary["latency"]["note"]
    config = QuantConfig.from_json((out / "config.json").read_text())
    assert config.activation.qtype.name == "uint8"
    assert json.loads((out / "summary.json").read_text())["cosine"] == summary["cosine"]
    assert (out / "report.html").is_file() and (out / "sensitivity.png").is_file()


def _assert_clean_error(result, *fragments):
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception  # a click error, not a crash
    assert "Traceback" not in result.output and result.output.startswith("Error: ")
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_empty_calibration_file(user_model):
    tmp_path, _ = user_model
    empty = tmp_path / "empty.pt"
    torch.save(torch.zeros(0, 3, 16, 16), empty)
    _assert_clean_error(invoke("--model", f"{FACTORY_MODULE}:small_cnn", "--calib", str(empty)), "no samples")
    zero_bytes = tmp_path / "zero.pt"
    zero_bytes.write_bytes(b"")
    _assert_clean_error(
        invoke("--model", f"{FACTORY_MODULE}:small_cnn", "--calib", str(zero_bytes)), "could not read tensors"
    )


def test_nan_calibration_data(user_model):
    tmp_path, _ = user_model
    bad = tmp_path / "nan.npy"
    x = torch.randn(8, 3, 16, 16)
    x[5, 0, 0, 0] = float("nan")
    np.save(bad, x.numpy())
    _assert_clean_error(invoke("--model", f"{FACTORY_MODULE}:small_cnn", "--calib", str(bad)), "NaN/Inf")


def test_unknown_preset_and_estimator(user_model):
    _, calib = user_model
    _assert_clean_error(
        invoke("--model", f"{FACTORY_MODULE}:small_cnn", "--calib", str(calib), "--preset", "w3a3"),
        "unknown preset 'w3a3'",
        "w8a8",
    )
    _assert_clean_error(
        invoke("--model", f"{FACTORY_MODULE}:small_cnn", "--calib", str(calib), "--estimator", "max"),
        "unknown estimator 'max'",
        "easyquant",
    )


def test_bad_model_specs(user_model):
    _, calib = user_model
    _assert_clean_error(
        invoke("--model", "resnet9000", "--calib", str(calib)),
        "unknown model 'resnet9000'",
        "efficientnet-lite0",
    )
    _assert_clean_error(invoke("--model", "no_such_pkg_xyz:build", "--calib", str(calib)), "cannot import")
    _assert_clean_error(
        invoke("--model", f"{FACTORY_MODULE}:NOT_A_MODEL", "--calib", str(calib)), "no callable"
    )
    _assert_clean_error(invoke("--model", f"{FACTORY_MODULE}:small_cnn"), "--calib is required")


def test_rule_that_matches_no_layer(user_model):
    _, calib = user_model
    _assert_clean_error(
        invoke(
            "--model", f"{FACTORY_MODULE}:small_cnn", "--calib", str(calib), "--keep-float", "classifier.*"
        ),
        "rule 'classifier.*' matches no layer",
    )


def test_export_runs_int8_in_onnxruntime_on_fashion_cnn(tmp_path):
    """The main job's --export on a real model slice: integer kernels, parity with the simulation, real metrics."""
    out = tmp_path / "model.onnx"
    result = invoke("--model", "fashion-cnn", "--n-calib", "32", "--n-eval", "200", "--export", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[result.output.index("{"):])
    onnx_info = summary["onnx"]
    assert out.exists() and onnx_info["onnx_bytes"] < onnx_info["fp32_onnx_bytes"] / 3
    assert onnx_info["integer_share"]["integer_fraction"] > 0.5 and "warning" not in onnx_info
    assert onnx_info["parity_within_one_step"] >= 0.999
    assert onnx_info["parity_emulated"] == 1.0 and onnx_info["emulated_equal"] == 1.0  # integer kernels only
    assert onnx_info["parity_one_ulp"] >= onnx_info["parity_within_one_step"] - 1e-3  # shallow: little compounding
    layers = onnx_info["layer_parity"]
    assert layers["quantizers"] >= 9 and layers["output_unchanged"] and layers["worst_equal"] >= 0.999
    assert abs(onnx_info["metrics"]["accuracy"] - summary["accuracy"]) <= 0.01


def _export_w4_mlp(user_model, *flags):
    """`lowbit quantize` of the small MLP at w4a16 with --export and `flags`: (exported path, result)."""
    tmp_path, _ = user_model
    calib = tmp_path / "rows.pt"
    torch.save(torch.randn(16, 128, generator=torch.Generator().manual_seed(2)), calib)
    out = tmp_path / "mlp.onnx"
    result = invoke("--model", f"{FACTORY_MODULE}:small_mlp", "--calib", str(calib), "--preset", "w4a16",
                    "--export", str(out), *flags)
    assert result.exit_code == 0, result.output
    return out, result


def test_export_with_int8_nbits_compute_writes_accuracy_level_4(user_model):
    import onnx

    out, result = _export_w4_mlp(user_model, "--nbits-compute", "int8", "--json")
    nodes = [n for n in onnx.load(str(out)).graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 2 and all(a.i == 4 for n in nodes for a in n.attribute if a.name == "accuracy_level")
    assert all(any(a.name == "accuracy_level" for a in n.attribute) for n in nodes)
    summary = json.loads(result.output[result.output.index("{"):])
    assert summary["onnx"]["parity_within_one_step"] < 1.0  # int8 inputs in onnxruntime, float in the simulation


def test_export_with_fastest_nbits_compute_times_both_and_names_the_choice(user_model):
    out, result = _export_w4_mlp(user_model, "--nbits-compute", "fastest")
    line = next(x for x in result.output.splitlines() if "MatMulNBits compute:" in x)
    assert "float " in line and "int8 " in line and " ms" in line
    assert out.exists() and not out.with_name("mlp.int8-compute.onnx").exists()


def test_quantize_embeddings_flag_sets_the_embedding_spec():
    from lowbit.config import EMBEDDING_INT4, EMBEDDING_INT8
    from lowbit.quantize_cmd import QuantizeRequest, build_config

    assert build_config(QuantizeRequest(model="m", quantize_embeddings=True)).embedding == EMBEDDING_INT8
    int4 = QuantizeRequest(model="m", preset="w4a16", quantize_embeddings=True)
    assert build_config(int4).embedding == EMBEDDING_INT4  # an int4 model's tables at its width
    assert build_config(QuantizeRequest(model="m")).embedding is None
    result = CliRunner().invoke(main, ["quantize", "--help"])
    assert "--quantize-embeddings" in result.output
