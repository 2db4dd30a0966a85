#!/usr/bin/env python
"""Repairing accuracy at low bits: round-to-nearest against the post-training repair passes.

    nice -n 5 .venv/bin/python bench/repair.py --models fashion-cnn [--rows W4A8/rtn ...] [--iters 300]

Rows: W8A8 with per-tensor weights with and without cross-layer equalization and bias correction (Nagel et
al. 2019; "-analytic": the data-free bias correction from BatchNorm statistics, "equalize-bn": high-bias
absorption from BatchNorm statistics too, so that nothing reads calibration data but the range estimators),
and W4A8, W4A4, W2A4 (per-channel weights) with round-to-nearest, AdaRound, BRECQ and QDrop. At
4 bits and below the first and last layers stay W8A8, the convention of BRECQ and QDrop. Metrics are the
task's own on its evaluation batches (fashion-cnn: accuracy on real labels; EfficientNet-Lite0: top-1
agreement with fp32), kept apart from the calibration batches. Results go to results/repair-<model>.json
(rows of a partial re-run replace rows of the same name) and BENCHMARKS.md's repair section.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import lowbit  # noqa: E402
import lowbit.zoo  # noqa: E402
from bench.common import cpu_flags  # noqa: E402
from bench.markdown import write_section  # noqa: E402
from lowbit.config import LayerRule, PassSpec, QuantConfig, preset  # noqa: E402
from lowbit.core.granularity import PerTensor  # noqa: E402

SECTION = "## Repairing accuracy at low bits"
MODELS = ("fashion-cnn", "efficientnet-lite0")
FIRST_LAST = {"fashion-cnn": ("stem.0", "fc"), "efficientnet-lite0": ("_conv_stem", "_fc")}
BITS = {"W4A8": (4, 8), "W4A4": (4, 4), "W2A4": (2, 4)}
METHODS = ("rtn", "adaround", "brecq", "qdrop")
RECONSTRUCTION = {"adaround", "brecq", "qdrop"}
W8A8_PASSES = {"rtn": (), "equalize": ("equalize",), "bias_correction": ("bias_correction",),
               "equalize+bias_correction": ("equalize", "bias_correction"),
               "bias_correction-analytic": ("bias_correction:mode=analytic",),
               "equalize+bias_correction-analytic": ("equalize", "bias_correction:mode=analytic"),
               "equalize-bn+bias_correction-analytic": ("equalize:stats=bn", "bias_correction:mode=analytic")}
DEFAULT_ROWS = [f"W8A8-per-tensor/{p}" for p in W8A8_PASSES] + [f"{b}/{m}" for b in BITS for m in METHODS]


def low_bit_config(model: str, w_bits: int, a_bits: int) -> QuantConfig:
    base = preset("w8a8")
    rules = tuple(LayerRule(pattern=name, weight=base.weight, activation=base.activation,
                            reason="first/last layer at 8 bits") for name in FIRST_LAST[model])
    return replace(base, weight=base.weight.with_bits(w_bits), activation=base.activation.with_bits(a_bits),
                   rules=rules)


def row_config(model: str, row: str, iters: int, samples: int, batch: int = 32) -> QuantConfig:
    bits, method = row.split("/")
    if bits == "W8A8-per-tensor":
        base = preset("w8a8")
        config = replace(base, weight=replace(base.weight, granularity=PerTensor()))
        return replace(config, passes=tuple(PassSpec.parse(p) for p in W8A8_PASSES[method]))
    config = low_bit_config(model, *BITS[bits])
    if method == "rtn":
        return config
    return replace(config, passes=(PassSpec(method, (("iters", iters), ("samples", samples), ("batch", batch))),))


def run_row(task, model: str, row: str, iters: int, samples: int, batch: int = 32) -> dict:
    config = row_config(model, row, iters, samples, batch)
    start = time.perf_counter()
    qm = lowbit.quantize(task.model, task.calib, config, progress=False)
    build_s = time.perf_counter() - start
    return {"name": row, "metrics": task.evaluate(qm), "build_s": build_s, "iters": iters, "batch": batch,
            "passes": [p.name for p in config.passes]}


def _row_order(row: dict) -> int:
    """fp32, then the rows in DEFAULT_ROWS order, then any others."""
    order = ["fp32", *DEFAULT_ROWS]
    return order.index(row["name"]) if row["name"] in order else len(order)


def table(result: dict) -> str:
    primary = result["primary_metric"]
    lines = [f"### {result['model']} ({result['setup']})", "",
             f"| config | method | {primary} | other metrics | passes | iters per layer | batch "
             "| quantize + passes s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=_row_order):
        bits, _, method = r["name"].partition("/")
        m = r["metrics"]
        learned = RECONSTRUCTION & set(r.get("passes", []))
        iters = r.get("iters", 0) if learned else 0
        batch = r.get("batch", 32) if learned else "-"
        other = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k != primary)
        passes = W8A8_PASSES.get(method, r.get("passes", [])) if bits == "W8A8-per-tensor" else r.get("passes", [])
        lines.append(f"| {bits} | {method} | {m[primary]:.4f} | {other} | {' + '.join(passes) or '-'} "
                     f"| {iters or '-'} | {batch} | {r.get('build_s', 0):.0f} |")
    return "\n".join(lines)


def write_markdown(command: str) -> None:
    out = ROOT / "results"
    saved = [json.loads((out / f"repair-{m}.json").read_text()) for m in MODELS
             if (out / f"repair-{m}.json").exists()]
    cpu = cpu_flags()
    load = os.getloadavg()
    head = (f"Command: `{command}` (each model's own command is under its table)  \n"
            f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; CPU: {cpu['model']}, flags "
            f"{', '.join(cpu['flags'])}; torch {torch.__version__}; 1 thread, niced. The machine was shared with "
            f"other jobs (load average {load[0]:.1f}, {load[1]:.1f}, {load[2]:.1f} at the end), so the seconds "
            "are indicative only.  \n"
            "Torch simulation (fake quantization). rtn: round-to-nearest with min/max ranges, the baseline. "
            "W8A8-per-tensor: int8 weights with one scale per tensor, uint8 activations. W4A8, W4A4, W2A4: "
            "per-channel weights, first and last layers kept W8A8 (the BRECQ/QDrop convention). AdaRound runs "
            "per layer, BRECQ and QDrop per block (residual / inverted-residual block), QDrop with p = 0.5; "
            "a block of k layers runs k x 'iters per layer' steps, so every method gives each layer the same number "
            "of steps; far below the papers' 20,000 per unit (CPU budget).")
    body = []
    for r in saved:
        commands = dict.fromkeys(x.get("command", r.get("command", "")) for x in r["rows"] if x["name"] != "fp32")
        body.append(table(r) + "\n\n" + "  \n".join(f"Command: `{c}`" for c in commands))
    write_section(ROOT / "BENCHMARKS.md", SECTION, head + "\n\n" + "\n\n".join(body))


def load_results(path: Path) -> dict:
    """A model's results file; rows of runs older than the per-row command carry the file's command."""
    res = json.loads(path.read_text()) if path.exists() else {"rows": []}
    for r in res["rows"]:
        if r["name"] != "fp32":
            r.setdefault("command", res.get("command", ""))
    return res


def merge_row(path: Path, res: dict, row: dict) -> dict:
    """Add `row` to the results file, re-reading it first so that two runs on one model keep each other's rows."""
    saved = load_results(path)
    rows = {x["name"]: x for x in res["rows"] + saved["rows"]}
    rows[row["name"]] = row
    res = {**res, "rows": list(rows.values())}
    path.write_text(json.dumps(res, indent=1))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--rows", nargs="+", default=DEFAULT_ROWS)
    ap.add_argument("--iters", type=int, default=300, help="reconstruction iterations per layer or block")
    ap.add_argument("--samples", type=int, default=256, help="calibration rows the reconstruction records")
    ap.add_argument("--batch", type=int, default=32, help="rows per reconstruction step")
    ap.add_argument("--n-calib", type=int)
    ap.add_argument("--n-eval", type=int)
    ap.add_argument("--markdown-only", action="store_true", help="rewrite BENCHMARKS.md from the saved results")
    args = ap.parse_args()
    if args.markdown_only:
        write_markdown("python bench/repair.py " + " ".join(sys.argv[1:]))
        return
    torch.set_num_threads(1)
    command = "python bench/repair.py " + " ".join(sys.argv[1:])
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    for model in args.models:
        task = lowbit.zoo.load(model, n_calib=args.n_calib, n_eval=args.n_eval)
        n_cal, n_ev = sum(len(b[0]) for b in task.calib), sum(len(b[0]) for b in task.eval)
        path = out / f"repair-{model}.json"
        res = load_results(path)
        if not any(r["name"] == "fp32" for r in res["rows"]):
            res["rows"].insert(0, {"name": "fp32", "metrics": task.evaluate(task.model), "passes": []})
        res.update(model=model, primary_metric=task.primary_metric, command=command,
                   setup=f"{n_cal} calibration and {n_ev} evaluation samples")
        for row in args.rows:
            r = run_row(task, model, row, args.iters, args.samples, args.batch)
            r["command"] = command
            print(model, row, r["metrics"], f"{r['build_s']:.0f}s", flush=True)
            res = merge_row(path, res, r)
            write_markdown(command)


if __name__ == "__main__":
    main()
