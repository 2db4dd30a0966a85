#!/usr/bin/env python
"""Which MatMulNBits compute type onnxruntime runs faster on this CPU, as `deploy(nbits_compute="fastest")` finds it.

    .venv/bin/python bench/nbits_compute.py [--models smollm2 minilm] [--runs 10]

Per-group weight-only models export as MatMulNBits, which onnxruntime computes either with float inputs
(accuracy_level 0, W4A16 as simulated) or with each block of inputs quantized to int8 on the fly (accuracy_level 4,
a dynamic W4A8). The runtime tables showed the faster one flip between CPUs, so lowbit measures it where the model
runs: `lowbit.export.deploy.fastest_nbits_compute` exports both, times them alternately (one thread, medians) on
the task's first evaluation batch and keeps the faster file. This script runs it for the runner's two weight-only
builds per model (int4 GPTQ groups of 128; int8 groups of 128) and records both timings and the choice. Writes
results/nbits_compute.json and the "MatMulNBits compute type" section of BENCHMARKS.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import per_model_script, provenance  # noqa: E402
from bench.markdown import write_section  # noqa: E402

SECTION = "## MatMulNBits compute type (float against int8 inputs), chosen on this CPU"
BUILDS = {"w4a16-gptq": "int4 GPTQ, groups of 128", "w8a16-g128": "int8, groups of 128"}


def measure(name: str, runs: int, work: Path) -> dict:
    import lowbit.zoo
    from bench.onnx_io import ONNX_OUTPUT_PREFIX, dynamic_shapes, export_inputs
    from bench.variants.lowbit_export import quantize_deployable
    from lowbit.export.deploy import fastest_nbits_compute

    task = lowbit.zoo.load(name)
    batch = tuple(task.eval[0])
    export = {"input_names": list(task.input_names), "dynamic_shapes": dynamic_shapes(task),
              "output_names": [ONNX_OUTPUT_PREFIX + n for n in task.output_names]}
    work.mkdir(parents=True, exist_ok=True)
    out = {}
    for build in BUILDS:
        qmodel, _, _ = quantize_deployable(task, task.calib, build)
        choice = fastest_nbits_compute(qmodel, export_inputs(task), work / f"{build}.onnx", batch, runs, **export)
        out[build] = {**choice, "batch_size": len(batch[0])}
        print(name, build, json.dumps(out[build]), flush=True)
    return out


def main() -> None:
    command, results, runs = per_model_script(__doc__, "bench/nbits_compute.py", measure, 10,
                                              ROOT / "results" / "nbits_compute.json", models=("smollm2", "minilm"))
    lines = [*provenance(command),
             "`deploy(nbits_compute=\"fastest\")` on the task's first evaluation batch: both MatMulNBits files "
             f"timed alternately, one thread, median of {runs} runs after a warm-up; the faster one is kept.", "",
             "| model | build | batch | float inputs ms | int8 inputs ms | kept |", "|---|---|---|---|---|---|"]
    for model, r in results.items():
        for build, v in r.items():
            ms = v["ms"]
            lines.append(f"| {model} | {BUILDS[build]} | {v['batch_size']} | {ms['float']:.1f} | {ms['int8']:.1f} | "
                         f"{v['chosen']} |")
    write_section(ROOT / "BENCHMARKS.md", SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
