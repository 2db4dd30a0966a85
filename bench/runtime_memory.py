#!/usr/bin/env python
"""Runtime memory of an onnxruntime session at batch 32: fp32 against int8, fully quantized against weights-only.

    .venv/bin/python bench/runtime_memory.py [--models efficientnet-lite0 minilm]

For each model: the fp32 ONNX, lowbit's int8 export in the deployable layout (activations quantized: fully quantized
for convolutional models) and lowbit's weights-only int8 export (w8a16: int8 weights, float activations). Each file
is loaded and run once on one batch of 32 evaluation rows by bench/ort_peak.py, a bare process importing only numpy
and onnxruntime; its VmHWM is the figure (the interpreter and onnxruntime themselves included: the no-model floor is
measured too). Writes results/runtime-memory.json and the "Runtime memory" section of BENCHMARKS.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import cpu_flags  # noqa: E402
from bench.markdown import write_section  # noqa: E402
from bench.memory import ort_run_peak  # noqa: E402

SECTION = "## Runtime memory (onnxruntime, batch 32)"
BATCH = 32
FLOOR_CODE = ("import numpy, onnxruntime; "
              "print(int(open('/proc/self/status').read().split('VmHWM:')[1].split()[0]) / 1024)")


def floor_mib() -> float:
    out = subprocess.run([sys.executable, "-c", FLOOR_CODE], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def measure(name: str, work: Path) -> dict:
    import lowbit.zoo
    from bench.onnx_io import ONNX_OUTPUT_PREFIX, dynamic_shapes, export_fp32, export_inputs, feeds
    from bench.variants.lowbit_export import quantize_deployable
    from lowbit.export import to_onnx

    torch.set_num_threads(1)
    task = lowbit.zoo.load(name, n_calib=64, n_eval=BATCH)
    rows = torch.cat([b[0] for b in task.eval])[:BATCH]
    batch = (rows,) + tuple(torch.cat([b[i] for b in task.eval])[:BATCH] for i in range(1, len(task.eval[0])))
    files = {"fp32": export_fp32(task, work)}
    for label, preset_name in (("int8, activations quantized", "w8a8"), ("int8 weights only (w8a16)", "w8a16")):
        qmodel, _, notes = quantize_deployable(task, task.calib, preset_name)
        files[label] = to_onnx(qmodel, export_inputs(task), work / f"{preset_name}.onnx",
                               input_names=list(task.input_names),
                               output_names=[ONNX_OUTPUT_PREFIX + n for n in task.output_names],
                               dynamic_shapes=dynamic_shapes(task))
    import onnxruntime as ort

    out = {}
    for label, path in files.items():
        names = [i.name for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()]
        peak = ort_run_peak(path, feeds(names, task.input_names, batch), work)
        out[label] = {"peak_rss_mib": peak, "file_mb": path.stat().st_size / 1e6}
        print(name, label, out[label], flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["efficientnet-lite0", "minilm"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lowbit-mem-"))
    floor = floor_mib()
    results = {m: measure(m, work / m) for m in args.models}
    command = "python bench/runtime_memory.py " + " ".join(sys.argv[1:])
    (ROOT / "results" / "runtime-memory.json").write_text(json.dumps({"floor_mib": floor, "models": results,
                                                                      "command": command}, indent=1))
    cpu = cpu_flags()
    lines = [f"Command: `{command}`  ", f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; CPU: "
             f"{cpu['model']}, flags {', '.join(cpu['flags'])}; load average at the end "
             f"{os.getloadavg()[0]:.1f}.  ",
             f"Peak RSS (VmHWM) of a bare process that loads the ONNX file in onnxruntime (1 thread) and runs one "
             f"batch of {BATCH}; importing numpy and onnxruntime alone costs {floor:.0f} MiB (included).", "",
             "| model | variant | file MB | peak RSS MiB | above the floor MiB |", "|---|---|---|---|---|"]
    for model, rows in results.items():
        for label, r in rows.items():
            peak = r["peak_rss_mib"]
            cells = (f"{peak:.0f} | {peak - floor:.0f}" if peak is not None else "failed | ")
            lines.append(f"| {model} | {label} | {r['file_mb']:.2f} | {cells} |")
    write_section(ROOT / "BENCHMARKS.md", SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
