#!/usr/bin/env python
"""Parity of the exported model with lowbit's torch simulation, and where the two part.

    nice -n 15 .venv/bin/python bench/parity.py [--models fashion-cnn efficientnet-lite0 minilm smollm2] [--repair]

For each model, the deployable int8 model of lowbit-int8-ort (W8A8 static, mse ranges, the layout of this CPU;
`--repair`: the variant's repair recipe too) is exported and its output compared with the simulation's on the
first evaluation rows: the share of output elements within one step of an 8-bit grid spanning the simulation's
output (issue 5's parity measure, `lowbit.export.deploy.parity`), for
- the QDQ graph in torch (`lowbit.export.qdq.to_qdq`, what torch.onnx exports: decomposed quantize/dequantize),
- onnxruntime with graph optimizations off (DequantizeLinear -> float op -> QuantizeLinear, emulated in fp32),
- onnxruntime as deployed (integer kernels),
- for scale, onnxruntime as deployed against onnxruntime with optimizations off (one runtime, two orders of
  rounding),
- and onnxruntime as deployed against lowbit's emulation of its integer kernels in torch
  (`lowbit.export.emulate.emulate_onnxruntime`), with the share of output elements the two compute bit for bit.
SmolLM2 (a causal LM, deployed weight-only or with dynamic activations) is measured for the runner's LLM rows
instead: W4A16 (GPTQ) as MatMulNBits with float and with int8 compute, int8 per group of 128 with int8 compute, and
W8A8 dynamic, on LLM_ROWS windows, without the quantizer trace (no static activation quantizers).
Then the trace: at every activation quantizer, in graph order, the share of elements whose integer code differs
between the simulation and the QDQ graph in torch; and layer parity (`lowbit.export.layer_parity`): the share of
codes equal to deployed onnxruntime's at every quantizer when each is fed the runtime's own input codes, which
measures each exported layer's arithmetic alone. Writes results/parity.json and BENCHMARKS.md's parity section.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import fx  # noqa: E402

import lowbit.zoo  # noqa: E402
from bench.common import cpu_flags  # noqa: E402
from bench.markdown import write_section  # noqa: E402
from bench.onnx_io import ort_runner  # noqa: E402
from bench.variants.lowbit_export import PARITY_ROWS, WEIGHT_ONLY, _export, quantize_deployable  # noqa: E402
from lowbit.export.deploy import emulated_parity, one_ulp_nudge, parity, rounding_parity  # noqa: E402
from lowbit.export.layer_parity import layer_parity  # noqa: E402
from lowbit.export.qdq import to_qdq  # noqa: E402
from lowbit.graph.quantizers import ActQuantizer  # noqa: E402
from lowbit.zoo.smollm2 import first_layers  # noqa: E402

SECTION = "## Parity of onnxruntime with the simulation"
MODELS = ("fashion-cnn", "efficientnet-lite0", "minilm", "smollm2")
LLM_ROWS = 2  # windows of 128 tokens: logits of 2 x 128 x 49152 elements
LLM_BUILDS = (("w4a16 (GPTQ), MatMulNBits float compute", WEIGHT_ONLY, "float"),
              ("w4a16 (GPTQ), MatMulNBits int8 compute", WEIGHT_ONLY, "int8"),
              ("w8a16-g128, MatMulNBits int8 compute", "w8a16-g128", "int8"),
              ("w8a8-dynamic, DynamicQuantizeMatMul", "w8a8-dynamic", "float"))
NUDGE_SEEDS = (0, 1)  # the dynamic build's perplexity under one-ulp nudges: how far float rounding alone moves it
DEPTHS = (1, 2, 4, 8)  # SmolLM2's dynamic W8A8 also cut to its first k decoder layers: how parity decays with depth


class _Values(fx.Interpreter):
    """Runs a graph module and keeps the values of the nodes `keep(module, node)` selects, in graph order."""

    def __init__(self, module: fx.GraphModule, keep) -> None:
        super().__init__(module)
        self.keep, self.values = keep, []

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if self.keep(self.module, n):
            self.values.append((n, out))
        return out


def code_trace(qmodel, qdq_graph: fx.GraphModule, batch) -> list[dict]:
    """Per enabled activation quantizer (graph order): share of elements whose code differs by at least one step
    between the simulation and its QDQ graph (`to_qdq(qmodel)`), and the largest difference in steps."""
    gm = qmodel.graph_module
    quantizers = [n for n in gm.graph.nodes if n.op == "call_module"
                  and isinstance(gm.get_submodule(n.target), ActQuantizer) and gm.get_submodule(n.target).enabled
                  and not gm.get_submodule(n.target).kept_float]
    sim = _Values(gm, lambda m, n: n in quantizers)
    qdq = _Values(qdq_graph, lambda m, n: "lowbit_quantizer" in n.meta)
    with torch.inference_mode():
        sim.run(*batch)
        qdq.run(*batch)
    exported = {n.meta["lowbit_quantizer"]: v for n, v in qdq.values}
    trace = []
    for node, a in sim.values:
        b = exported.get(str(node.target))
        if b is None:  # removed as dead code in the export (nothing reads it)
            continue
        steps = (a - b).abs() / gm.get_submodule(node.target).qparams.scale.reshape(-1)[0]
        trace.append({"quantizer": str(node.target), "differ": float((steps > 0.5).float().mean()),
                      "max_steps": float(steps.max())})
    return trace


def measure(task, work: Path, repair: bool) -> list[dict]:
    if task.name == "smollm2":
        return measure_llm(task, work)
    qmodel, seconds, notes = quantize_deployable(task, task.calib, "w8a8", repair=repair)
    path = _export(task, qmodel, work, f"{task.name}.onnx")
    batch = tuple(t[:PARITY_ROWS] for t in task.eval[0])
    # one run of each onnxruntime session serves every measure below (parity() calls them as the model)
    out, out_plain = (torch.as_tensor(ort_runner(path, task.input_names, optimize)(1)(*batch)) for optimize in
                      (True, False))
    deployed, emulated = (lambda *_: out), (lambda *_: out_plain)
    qdq = to_qdq(qmodel).eval()

    return [{
        "model": task.name, "build": "w8a8 static" + (" (repaired)" if repair else ""), "rows": PARITY_ROWS,
        "notes": notes, "quantize_s": seconds,
        "parity": {
            "qdq_graph_torch": parity(qmodel, qdq, batch),
            "onnxruntime_no_optimizations": parity(qmodel, emulated, batch),
            "onnxruntime_deployed": parity(qmodel, deployed, batch),
            "onnxruntime_deployed_vs_no_optimizations": parity(emulated, deployed, batch),
            **emulated_parity(qmodel, deployed, batch),
            **_one_ulp(qmodel, batch),
        },
        "trace": code_trace(qmodel, qdq, batch),
        "layers": layer_parity(qmodel, path, batch).to_json(),
    }]


def _one_ulp(qmodel, batch) -> dict:
    """{"parity_one_ulp": rounding_parity} where the model has an activation quantizer to nudge, else {}."""
    value = rounding_parity(qmodel, batch)
    return {} if value is None else {"parity_one_ulp": value}


def _llm_row(task, work: Path, batch, label: str, built, compute: str, filename: str, score: bool = False) -> dict:
    """One SmolLM2 build's parity row; `score`: also its task metrics on every evaluation window, in the simulation,
    in the simulation under `one_ulp_nudge` (two seeds) and in onnxruntime as deployed."""
    qmodel, seconds, notes = built
    path = _export(task, qmodel, work, filename, compute)
    session = ort_runner(path, task.input_names)(1)
    out = session(*batch)
    deployed = lambda *_: out  # noqa: E731 - one onnxruntime run serves every measure
    row = {"model": task.name, "build": label, "rows": len(batch[0]), "notes": notes, "quantize_s": seconds,
           "parity": {"onnxruntime_deployed": parity(qmodel, deployed, batch),
                      **emulated_parity(qmodel, deployed, batch, compute), **_one_ulp(qmodel, batch)},
           "trace": [], "layers": None}
    if score:
        row["metrics"] = {"simulation": task.evaluate(qmodel), "onnxruntime_deployed": task.evaluate(session)}
        for seed in NUDGE_SEEDS:
            with one_ulp_nudge(qmodel, seed):
                row["metrics"][f"simulation_one_ulp_seed{seed}"] = task.evaluate(qmodel)
        row["eval_windows"] = sum(len(b[0]) for b in task.eval)
        print(json.dumps(row["metrics"]), flush=True)
    print(json.dumps({k: row[k] for k in ("model", "build", "parity")}), flush=True)
    path.unlink()
    return row


def measure_llm(task, work: Path) -> list[dict]:
    """The runner's SmolLM2 builds (LLM_BUILDS): simulation and emulation against onnxruntime as deployed; then the
    dynamic W8A8 build of SmolLM2 cut to its first k decoder layers (DEPTHS)."""
    batch = tuple(t[:LLM_ROWS] for t in task.eval[0])
    rows, models = [], {}
    for label, preset_name, compute in LLM_BUILDS:
        if preset_name not in models:
            models[preset_name] = quantize_deployable(task, task.calib, preset_name)
        rows.append(_llm_row(task, work, batch, label, models[preset_name], compute,
                             f"{task.name}-{preset_name}-{compute}.onnx", score=preset_name == "w8a8-dynamic"))
    models.clear()
    layers = len(task.model.lm.model.layers)
    for k in DEPTHS:
        cut = dataclasses.replace(task, model=first_layers(task.model, k))
        built = quantize_deployable(cut, cut.calib, "w8a8-dynamic")
        rows.append(_llm_row(cut, work, batch, f"w8a8-dynamic, first {k} of {layers} decoder layers", built,
                             "float", f"{task.name}-first{k}.onnx"))
    return rows


def _first(trace: list[dict], at_least: float) -> str:
    i = next((i for i, t in enumerate(trace) if t["differ"] >= at_least), None)
    return "never" if i is None else f"#{i + 1} ({trace[i]['quantizer'].removeprefix('lowbit_')})"


def _cell(p: dict, key: str) -> str:
    return f"{p[key]:.4f}" if key in p else "-"


def write_markdown(result: dict) -> None:
    lines = [f"Command: `{result['command']}`  ",
             f"Date: {result['date_utc']} UTC; CPU: {result['cpu']}; onnxruntime {result['onnxruntime']}  ",
             "Share of output elements within one step of an 8-bit grid spanning the reference's output (issue 5 "
             "asks for 99.9%), on the first evaluation rows. References: lowbit's simulation (float layers on "
             "dequantized values) for the first four columns, lowbit's emulation of onnxruntime's integer kernels "
             "in torch (`lowbit.export.emulate`) for the next two. Trace: share of elements whose integer code "
             "differs between the simulation and its own QDQ graph in torch, at activation quantizers in graph order. "
             "Layer by layer: the simulation run with every quantizer fed deployed onnxruntime's own codes (teacher "
             "forcing), share of codes equal to the runtime's at the median and the worst quantizer. One ulp: the "
             "simulation against itself with the input of every activation quantizer moved one float ulp up or down "
             "at random (`lowbit.export.deploy.rounding_parity`), the parity a runtime whose float arithmetic differs "
             "from torch's by that little could reach; \"-\" where the model has no activation quantizer.", "",
             "| model | build | quantizers | QDQ graph in torch | onnxruntime, no optimizations | onnxruntime "
             "deployed | deployed vs no optimizations | deployed vs emulation | bit for bit equal to the emulation | "
             "simulation vs itself, one ulp moved at each quantizer's input | "
             "first quantizer with a differing code | first with >= 1% | codes differing at the last quantizer | "
             "layer by layer: median, worst (quantizer) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        p, t, lay = r["parity"], r["trace"], r["layers"]
        cells = [r["model"], r.get("build", "w8a8 static"), str(len(t)) if t else "-", _cell(p, "qdq_graph_torch"),
                 _cell(p, "onnxruntime_no_optimizations"), _cell(p, "onnxruntime_deployed"),
                 _cell(p, "onnxruntime_deployed_vs_no_optimizations"), _cell(p, "parity_emulated"),
                 _cell(p, "emulated_equal"), _cell(p, "parity_one_ulp")]
        if t:
            worst = (lay["worst_quantizer"] or "").removeprefix("lowbit_")
            cells += [_first(t, 1e-9), _first(t, 0.01), f"{t[-1]['differ']:.2%}",
                      f"{lay['median_equal']:.4%}, {lay['worst_equal']:.4%} ({worst})"]
        else:
            cells += ["-"] * 4
        lines.append("| " + " | ".join(cells) + " |")
    scored = [r for r in result["rows"] if r.get("metrics")]
    for r in scored:
        m = r["metrics"]
        key = next(iter(m["simulation"]))
        nudged = ", ".join(f"{v[key]:.2f}" for k, v in m.items() if k.startswith("simulation_one_ulp"))
        lines += ["", f"{r['model']} {r['build']}, {key} on {r['eval_windows']} evaluation windows: simulation "
                  f"{m['simulation'][key]:.2f}; the simulation with one ulp moved at every quantizer's input "
                  f"(seeds {', '.join(str(s) for s in NUDGE_SEEDS)}) {nudged}; onnxruntime as deployed "
                  f"{m['onnxruntime_deployed'][key]:.2f}."]
    lines += ["", "Reading: where the QDQ graph in torch already parts from the simulation, the runtime is not "
              "the cause. Both compute the same ops on the same integer codes; they differ in float rounding "
              "order (the simulation rounds `x / s + z`, the decomposed quantize rounds `x * (1 / s)` then adds "
              "`z`; convolutions accumulate in a different order), which flips a code that lies within an ulp of "
              "a rounding boundary. Each flip moves the next layer's sums, so the share of differing codes grows "
              "layer by layer in deep networks; the int8 kernels' integer accumulation and float requantization "
              "add more flips of the same kind. Layer by layer, where every quantizer starts from the runtime's own "
              "inputs, the two agree on nearly every code: each exported layer computes what its simulated layer "
              "does, and the end-to-end gap is the compounding of rare boundary flips. The emulation removes the "
              "flips at their source: it computes each fused kernel's arithmetic as MLAS does (exact int32 sums, "
              "float32 requantization `float(acc) * (s_x * s_w / s_y)`, QLinearAdd's fma order, QuantizeLinear's "
              "division), and the float kernels between them as MLAS computes them (`lowbit.export.mlas_float`: "
              "LayerNorm's double mean and 8-lane fma variance, the erf polynomial of BiasGelu, Softmax's "
              "exponential and 16-lane sum), so on the CNNs it predicts the output bit for bit and on MiniLM every "
              "code (its output differs in the last ulp only, from the mean pooling's and L2 norm's sums; with "
              "torch's LayerNorm, GELU and Softmax in the emulation MiniLM reached 0.91 at stop 19). Where the "
              "runtime's float arithmetic is not emulated (SmolLM2: RMSNorm, SiLU, rotary embeddings, "
              "MatMulNBits' per-block float sums) it differs by float rounding, which the next quantizer turns "
              "into code flips that compound. SmolLM2's int8-input "
              "builds compute each input's scale from the float tensor on every call (per block of 128 for "
              "MatMulNBits' int8 compute, per tensor for DynamicQuantizeLinear), so an ulp of a float kernel moves "
              "a scale, and with it a whole block's or tensor's codes. The dynamic build cut to its first k decoder "
              "layers shows the compounding: the parity with both references falls with each layer added, and "
              "so does the one-ulp column, the simulation against itself nudged by a single ulp where its values "
              "meet the grid; at the output of a deep model parity measures the model's sensitivity to float "
              "rounding more than the export, and the perplexity in the runtime table is what to judge these "
              "builds by. The one-ulp column reads the CNN rows the same way: where the deployed parity is near it, "
              "the runtime is as close to the simulation as a different order of float rounding allows. Where the "
              "deployed parity is well below it while the emulation agrees (MiniLM), the runtime's float kernels "
              "differ from torch's by more than an ulp (MLAS's polynomial erf and exponential, which "
              "`lowbit.export.mlas_float` reproduces). (This column's first run found "
              "an export bug the output parity could not show: EfficientNet-Lite0's nearly dead channels needed "
              "int32 bias codes beyond 2^31 and onnxruntime's int32 sums wrapped, 95.8% equal codes at the worst "
              "quantizer; `graph/bias.fit_int32_biases` now raises their weight scales.)"]
    write_section(ROOT / "BENCHMARKS.md", SECTION, "\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    ap.add_argument("--repair", action="store_true", help="the variants' repair recipe (default: mse ranges only)")
    ap.add_argument("--n-calib", type=int)
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite BENCHMARKS.md's section from results/parity.json without measuring")
    args = ap.parse_args()
    if args.markdown_only:
        write_markdown(json.loads((ROOT / "results" / "parity.json").read_text()))
        return
    torch.set_num_threads(1)
    import onnxruntime as ort

    work = Path(tempfile.mkdtemp(prefix="lowbit-parity-"))
    rows = []
    for name in args.models:
        for row in measure(lowbit.zoo.load(name, n_calib=args.n_calib), work, args.repair):
            print(json.dumps({k: row[k] for k in ("model", "build", "parity")}), flush=True)
            rows.append(row)
    cpu = cpu_flags()
    result = {"command": "python bench/parity.py " + " ".join(sys.argv[1:]),
              "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
              "cpu": f"{cpu['model']} ({', '.join(cpu['flags'])})", "onnxruntime": ort.__version__, "rows": rows}
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "parity.json").write_text(json.dumps(result, indent=1) + "\n")
    write_markdown(result)


if __name__ == "__main__":
    main()
