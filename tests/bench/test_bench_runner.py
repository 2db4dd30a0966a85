"""Smoke test of the benchmark runner's pieces on a tiny stand-in task (no zoo model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from bench import report
from bench.common import NotApplicable, cpu_flags, file_bytes, load_variants
from bench.memory import run_forked, status_mib
from bench.timing import alternate
from lowbit.zoo.task import ZooTask, batched

MIB = 1 << 20


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.head = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def task() -> ZooTask:
    torch.manual_seed(0)
    x = torch.randn(48, 1, 8, 8)
    model = TinyNet().eval()
    with torch.no_grad():
        ref = model(x[32:])

    def finish(outputs):
        out = torch.cat(outputs)
        return {"cosine": float(nn.functional.cosine_similarity(out, ref, dim=1).mean())}

    return ZooTask(
        "tiny",
        model,
        batched(x[:32], size=16),
        batched(x[32:], size=8),
        (x[:2],),
        finish,
        "cosine",
        True,
        ("x",),
        ("y",),
        {"x": {0: "batch"}, "y": {0: "batch"}},
    )


def test_registry_has_fp32_and_every_peer() -> None:
    names = set(load_variants().names())
    expected = {
        "fp32-torch",
        "fp32-compile",
        "fp32-ort",
        "ort-static-minmax",
        "ort-static-entropy",
        "ort-static-percentile",
        "ort-dynamic",
        "torchao-pt2e-static",
        "torchao-dynamic-int8",
        "torchao-weight-int8",
        "nncf-static",
        "nncf-weight-int8",
    }
    assert expected <= names


def test_onnx_fp32_matches_torch_at_any_batch(task, tmp_path) -> None:
    built = load_variants().get("fp32-ort").build(task, task.calib, tmp_path)
    run = built.make_runner(1)
    for n in (1, 5):
        x = task.calib[0][0][:n]
        np.testing.assert_allclose(run(x), task.model(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    assert file_bytes(built.path) == built.path.stat().st_size > 0


def test_ort_static_u8s8_is_close_and_entropy_differs_from_minmax(task, tmp_path) -> None:
    import onnx
    from onnx import numpy_helper

    reg = load_variants()
    scores, scales = {}, {}
    for name in ("ort-static-minmax", "ort-static-entropy"):
        built = reg.get(name).build(task, task.calib, tmp_path)
        scores[name] = task.evaluate(built.make_runner(1))["cosine"]
        graph = onnx.load(str(built.path)).graph
        acts = {n.input[1] for n in graph.node if n.op_type == "QuantizeLinear"}
        zero_points = [i for i in graph.initializer if i.data_type == onnx.TensorProto.UINT8]
        assert zero_points, "activations must be uint8 (U8S8), not onnxruntime's default int8"
        scales[name] = sorted(float(numpy_helper.to_array(i)) for i in graph.initializer if i.name in acts)
    assert min(scores.values()) > 0.98
    assert scales["ort-static-minmax"] != scales["ort-static-entropy"]


def test_alternate_reports_medians_and_errors() -> None:
    def boom():
        raise RuntimeError("no kernel")

    res = alternate({"a": lambda: sum(range(1000)), "bad": boom}, repeats=3, warmup=1)
    assert res["a"]["median_ms"] > 0 and len(res["a"]["samples_ms"]) == 3
    assert res["bad"] == {"error": "RuntimeError: no kernel"}


def test_alternate_settles_before_every_sample(monkeypatch) -> None:
    """The previous variant's spinning threads get SETTLE_S of sleep before each timed sample."""
    import bench.timing as timing

    slept = []
    monkeypatch.setattr(timing.time, "sleep", slept.append)
    alternate({"a": lambda: None, "b": lambda: None}, repeats=3, warmup=1)
    assert slept == [timing.SETTLE_S] * 6


def test_compiled_runner_compiles_once_per_thread_count(monkeypatch) -> None:
    """Inductor bakes the thread count into its kernels: each count gets its own compiled wrapper, reused."""
    import bench.variants.fp32 as fp32

    compiled = []

    def fake_compile(module):
        compiled.append(torch.get_num_threads())
        return module

    monkeypatch.setattr(fp32, "compile_frozen", fake_compile)
    factory = fp32.compiled_runner(nn.Linear(4, 2), full_rows=8)
    x = torch.randn(8, 4)
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 1, 2):
            assert factory(threads)(x).shape == (8, 2)
    finally:
        torch.set_num_threads(before)
    assert len(compiled) == 2


def test_forked_peak_rss_sees_allocation(tmp_path) -> None:
    def hold(mib: int) -> dict:
        block = np.ones(mib * MIB, dtype=np.uint8)
        return {"sum": int(block[::4096].sum())}

    small = run_forked(lambda: hold(1), tmp_path / "a.json", 60)
    big = run_forked(lambda: hold(200), tmp_path / "b.json", 60)
    assert big["peak_rss_mib"] - small["peak_rss_mib"] > 150
    assert small["peak_rss_mib"] >= small["fork_base_rss_mib"] * 0.5 > 0

    def refuse() -> dict:
        raise NotApplicable("too big")

    assert run_forked(refuse, tmp_path / "c.json", 60)["error"] == "NotApplicable: too big"
    assert status_mib("VmRSS") > 0


def test_section_replacement_keeps_other_sections(tmp_path) -> None:
    md = "# B\n\n## Other\nkeep me\n\n" + report.SECTION + "\nold table\n\n## Later\nkeep too\n"
    out = report.replace_section(md, report.SECTION + "\nnew\n")
    assert "old table" not in out and "keep me" in out and "keep too" in out and "\nnew\n" in out
    assert report.replace_section("# B\n", "S\n") == "# B\n\nS\n"


def test_table_renders_rows_and_refusals() -> None:
    result = {
        "primary_metric": "cosine",
        "threads": [1],
        "batches": [1],
        "variants": [
            {
                "name": "fp32-ort",
                "size_bytes": 2_000_000,
                "metrics": {"cosine": 1.0},
                "calib_s": 0.0,
                "status": "ok",
                "latency": {"b1 t1": {"median_ms": 2.0, "speedup_vs_baseline": 1.5}},
            },
            {"name": "nncf-static", "status": "not run: no nncf"},
        ],
    }
    table = report.model_table(result)
    assert "| `fp32-ort` | 2.00 | cosine 1 | 0.0 |" in table and "2 (1.50x)" in table
    assert "not run: no nncf" in table
    assert json.loads(json.dumps(cpu_flags()))["cpus"] >= 1


def test_latency_batch_tiles_rows_and_cuts_llm_windows(task) -> None:
    from dataclasses import replace

    from bench.run import LLM_SEQ, latency_batch

    (x32,) = latency_batch(task, 32)
    first = task.eval[0][0]
    assert x32.shape == (32, *first.shape[1:])
    assert torch.equal(x32[: len(first)], first) and torch.equal(x32[len(first) : 2 * len(first)], first)
    ids = torch.arange(3 * 256).view(3, 256)
    llm = replace(task, name="smollm2", eval=[(ids,)])
    (one,) = latency_batch(llm, 1)
    assert one.shape == (1, LLM_SEQ) and torch.equal(one[0], ids[0, :LLM_SEQ])
