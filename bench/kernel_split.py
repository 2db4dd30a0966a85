#!/usr/bin/env python
"""Where onnxruntime spends its time, fp32 against lowbit's int8 export (and onnxruntime's own quantizer's int8
file), kernel kind by kernel kind.

    .venv/bin/python bench/kernel_split.py [--models efficientnet-lite0 minilm]

For each model: the fp32 ONNX and lowbit's int8 export in the deployable layout (the runtime benchmark's
lowbit-int8-ort layout; ranges by mse without the accuracy recipe, which changes scales, not kernels), profiled by
onnxruntime (1 thread, batch 32, one warm-up then `--runs` runs) on the optimized graph it actually executes.
Kernel time is summed per kind: convolutions split into depthwise/grouped (group > 1) and the rest, matmuls, and
everything else by op type. The speed-up per kind says which kernels carry the int8 gain and which do not. The
same profile of onnxruntime's `quantize_static` file (the runner's ort-static-minmax, same calibration rows) and the
kernels each optimized int8 graph runs (op counts) say whether lowbit's file and the peer's run the same kernels.
Writes results/kernel-split.json and the "Where onnxruntime spends its time" section of BENCHMARKS.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
import sys  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import per_model_script, provenance  # noqa: E402
from bench.markdown import write_section  # noqa: E402

SECTION = "## Where onnxruntime spends its time (fp32 against int8, by kernel kind)"
BATCH = 32
CONVS = ("Conv", "QLinearConv", "FusedConv", "ConvInteger")
MATMULS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "QGemm", "QLinearMatMul", "MatMulInteger",
           "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "MatMulNBits")


def kind(op: str, group: int) -> str:
    if op in CONVS:
        return "conv, depthwise/grouped" if group > 1 else "conv, other"
    if op in MATMULS:
        return "matmul/gemm"
    return op


def profile(files: dict[str, Path], task, batch: tuple, runs: int, work: Path) -> dict:
    """{label: ms per run by kernel kind, "<label> kernels": kernels by op type} from onnxruntime's profile of the
    optimized graph each file runs. The files' runs alternate (A B C A B C ...) after one warm-up each, so that a
    drift of the machine's speed falls on all of them alike (one profile after another drifted by more than the
    files differ)."""
    import onnx
    import onnxruntime as ort

    from bench.onnx_io import feeds

    sessions, graphs = {}, {}
    for label, path in files.items():
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.enable_profiling = True
        opts.profile_file_prefix = str(work / path.stem)
        opts.optimized_model_filepath = str(work / f"{path.stem}.optimized.onnx")
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        sessions[label] = (sess, feeds([i.name for i in sess.get_inputs()], task.input_names, batch))
        graphs[label] = onnx.load(opts.optimized_model_filepath, load_external_data=False).graph
    for _ in range(runs + 1):
        for sess, inputs in sessions.values():
            sess.run(None, inputs)
    out = {}
    for label, (sess, _) in sessions.items():
        graph = graphs[label]
        groups = {n.name: next((a.i for a in n.attribute if a.name == "group"), 1) for n in graph.node}
        out[label] = _by_kind(json.loads(Path(sess.end_profiling()).read_text()), groups, runs)
        out[f"{label} kernels"] = dict(Counter(n.op_type for n in graph.node).most_common())
    return out


def _by_kind(events: list[dict], groups: dict[str, int], runs: int) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    seen = 0
    for ev in events:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            seen += 1
        if seen == 0 or ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue  # the warm-up run's nodes come before its model_run event
        name = ev["name"].removesuffix("_kernel_time")
        out[kind(ev["args"]["op_name"], groups.get(name, 1))] += ev["dur"] / 1000 / runs
    return dict(out)


def exports(name: str, work: Path, fp32: bool = True, peer: bool = False):
    """(task, one batch of BATCH evaluation rows, {"fp32": path, "int8": path}): the zoo model's fp32 ONNX and
    lowbit's int8 export in the deployable layout (mse ranges, no accuracy recipe); `peer` adds "ort-int8",
    onnxruntime's quantize_static file (the runner's ort-static-minmax) from the same calibration rows."""
    import lowbit.zoo
    from bench.onnx_io import ONNX_OUTPUT_PREFIX, dynamic_shapes, export_fp32, export_inputs
    from bench.variants.lowbit_export import quantize_deployable
    from lowbit.export import to_onnx

    torch.set_num_threads(1)
    task = lowbit.zoo.load(name, n_calib=64, n_eval=BATCH)
    batch = tuple(torch.cat([b[i] for b in task.eval])[:BATCH] for i in range(len(task.eval[0])))
    work.mkdir(parents=True, exist_ok=True)
    qmodel, _, _ = quantize_deployable(task, task.calib, "w8a8", repair=False)
    files = {"fp32": export_fp32(task, work)} if fp32 else {}
    files["int8"] = to_onnx(qmodel, export_inputs(task), work / "int8.onnx", input_names=list(task.input_names),
                            output_names=[ONNX_OUTPUT_PREFIX + n for n in task.output_names],
                            dynamic_shapes=dynamic_shapes(task))
    if peer:
        from bench.common import load_variants

        files["ort-int8"] = load_variants().get("ort-static-minmax").build(task, task.calib, work).path
    return task, batch, files


def measure(name: str, runs: int, work: Path) -> dict:
    """{"fp32" | "int8" | "ort-int8": ms by kind, "<label> kernels": op counts of its optimized graph}."""
    task, batch, files = exports(name, work, peer=True)
    out = profile(files, task, batch, runs, work)
    print(name, json.dumps(out), flush=True)
    return out


def _counts(ops: dict[str, int]) -> str:
    return ", ".join(f"{n} {op}" for op, n in ops.items())


def _compute(ops: dict[str, int]) -> dict[str, int]:
    """The integer and float compute kernels among a graph's ops (conversions and reshapes left out)."""
    from lowbit.export.profile import FLOAT_COMPUTE_OPS, INTEGER_OPS

    return {op: n for op, n in ops.items() if op in INTEGER_OPS or op in FLOAT_COMPUTE_OPS}


def model_lines(model: str, r: dict) -> list[str]:
    """One model's lines of the section: totals, the table by kernel kind, and the kernels each int8 graph runs."""
    fp32, int8, peer = r["fp32"], r["int8"], r.get("ort-int8", {})
    kinds = sorted(set(fp32) | set(int8) | set(peer), key=lambda k: -(fp32.get(k, 0) + int8.get(k, 0)))
    total_f, total_i, total_p = sum(fp32.values()), sum(int8.values()), sum(peer.values())
    head = f"{model}: total {total_f:.1f} ms fp32, {total_i:.1f} ms int8 ({total_f / total_i:.2f}x)"
    if peer:
        head += f"; onnxruntime's quantizer's int8 file {total_p:.1f} ms ({total_f / total_p:.2f}x)"
    lines = [head + ".", "",
             "| kernel kind | fp32 ms | int8 ms | int8 share | speed-up | onnxruntime quantizer's int8 ms |",
             "|---|---|---|---|---|---|"]
    for k in kinds:
        f, i, q = fp32.get(k, 0.0), int8.get(k, 0.0), peer.get(k)
        if f + i < 0.05 * max(total_f, total_i) / 100:
            continue  # under 0.05% of the run
        speed = f"{f / i:.2f}x" if f > 0 and i > 0 else ""
        lines.append(f"| {k} | {f:.1f} | {i:.1f} | {i / total_i:.0%} | {speed} | {'' if q is None else f'{q:.1f}'} |")
    if peer:
        mine, theirs = _compute(r["int8 kernels"]), _compute(r["ort-int8 kernels"])
        if mine == theirs:
            lines += ["", f"Both int8 files run the same compute kernels: {_counts(mine)}."]
        else:
            lines += ["", f"The int8 files run different compute kernels: lowbit's {_counts(mine)}; onnxruntime's "
                          f"quantizer's {_counts(theirs)}."]
    return [*lines, ""]


def main() -> None:
    command, results, runs = per_model_script(__doc__, "bench/kernel_split.py", measure, 8,
                                              ROOT / "results" / "kernel-split.json")
    lines = [*provenance(command),
             f"onnxruntime's profile (1 thread, batch {BATCH}, mean of {runs} alternated runs of each file "
             "after a warm-up; profiling adds a little to every kernel) of the fp32 export, of lowbit's int8 "
             "export in the deployable layout and of onnxruntime's quantize_static file (MinMax, per-channel, "
             "U8S8), kernel time per run "
             "summed by kind.", ""]
    for model, r in results.items():
        lines += model_lines(model, r)
    write_section(ROOT / "BENCHMARKS.md", SECTION, "\n".join(lines).rstrip())


if __name__ == "__main__":
    main()
