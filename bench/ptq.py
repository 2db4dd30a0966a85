#!/usr/bin/env python
"""The post-training quantization table: every estimator at W8A8 static on the zoo models, fully quantized vs
conv/linear-only, dynamic and weight-only on SmolLM2, and mixed precision with its kept-float list.

    .venv/bin/python bench/ptq.py [--models fashion-cnn minilm ...] [--variants lowbit-w8a8-mse ...]

Each variant is built and scored in a forked child (bench.memory.run_forked, as the runner's phase 1) so that
its peak RSS is its own; results go to results/ptq-<model>.json and BENCHMARKS.md's PTQ section. Metrics are
the task's own on its evaluation batches, which are kept apart from the calibration batches.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import ptq_variants  # noqa: E402
from bench.common import cpu_flags  # noqa: E402
from bench.markdown import write_section  # noqa: E402
from bench.memory import run_forked  # noqa: E402

SECTION = "## Post-training quantization (lowbit, torch simulation)"
MODELS = ("fashion-cnn", "efficientnet-lite0", "minilm", "smollm2")
STATIC = [f"lowbit-w8a8-{e}" for e in ptq_variants.ESTIMATORS]
PER_MODEL = {
    "smollm2": STATIC + ["lowbit-w8a8-dynamic", "lowbit-w4a16"],
}
DEFAULT = STATIC + ["lowbit-w8a8-full"]
# Goals of issue 4 (fidelity to fp32 or real labels); mixed precision searches the fewest float layers to meet them.
GOALS = {"efficientnet-lite0": ("top1_agreement", 0.99), "minilm": ("cosine", 0.998)}
TIMEOUT_S = 1800


def score(task, name: str) -> dict:
    torch.set_num_threads(1)
    make, _ = ptq_variants.CONFIGS[name]
    built, size, _ = ptq_variants.build(task, task.calib, make())
    return {"metrics": task.evaluate(built.make_runner(1)), "calib_s": built.calib_s, "size_bytes": size,
            "note": built.note}


def score_mixed(task, target: float) -> dict:
    torch.set_num_threads(1)
    built, size, result = ptq_variants.mixed_precision(task, task.calib, target)
    return {"metrics": task.evaluate(built.make_runner(1)), "calib_s": built.calib_s, "size_bytes": size,
            "note": built.note, "met": result.met}


def run_model(name: str, variants: list[str] | None, n_calib, n_eval, mixed: bool, on_row=None) -> dict:
    """Build and score the model's variants; `on_row(result so far)` after each row (so a long run that is
    stopped keeps the rows it finished)."""
    import lowbit.zoo

    torch.set_num_threads(1)
    task = lowbit.zoo.load(name, n_calib=n_calib, n_eval=n_eval)
    work = Path(tempfile.mkdtemp(prefix=f"lowbit-ptq-{name}-"))
    fp32_bytes = sum(p.numel() * p.element_size() for p in task.model.state_dict().values())
    rows = [{"name": "fp32", "metrics": task.evaluate(task.model), "size_bytes": fp32_bytes, "calib_s": 0.0}]
    for v in variants or PER_MODEL.get(name, DEFAULT):
        start = time.perf_counter()
        row = run_forked(lambda v=v: score(task, v), work / "child.json", TIMEOUT_S)
        rows.append({"name": v, "wall_s": time.perf_counter() - start, **row})
        print(name, v, row.get("metrics", row.get("error")), flush=True)
        if on_row is not None:
            on_row(_result(name, task, rows))
    if mixed and name in GOALS:
        key, target = GOALS[name]
        row = run_forked(lambda: score_mixed(task, target), work / "child.json", TIMEOUT_S)
        rows.append({"name": "lowbit-w8a8-mse + mixed precision", **row})
        print(name, "mixed", row.get("metrics", row.get("error")), flush=True)
    return _result(name, task, rows)


def _result(name: str, task, rows: list[dict]) -> dict:
    n_cal = sum(len(b[0]) for b in task.calib)
    n_ev = sum(len(b[0]) for b in task.eval)
    return {"model": name, "primary_metric": task.primary_metric, "rows": list(rows),
            "setup": f"{n_cal} calibration and {n_ev} evaluation samples"}


def merge(old: dict, new: dict) -> dict:
    """`old` with the rows of `new` replacing those of the same name (and new rows appended)."""
    rows = {r["name"]: r for r in old["rows"]}
    rows.update({r["name"]: r for r in new["rows"]})
    commands = [c for c in (old.get("command"), new["command"]) if c]
    return {**old, "rows": list(rows.values()), "command": " ; ".join(dict.fromkeys(commands))}


def table(result: dict) -> str:
    primary = result["primary_metric"]
    lines = [f"### {result['model']} ({result['setup']})", "", f"Command: `{result.get('command', '')}`", "",
             "| variant | " + primary + " | other metrics | weight MB | calib s | peak RSS MiB | note |",
             "|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        if "metrics" not in r:
            lines.append(f"| {r['name']} | failed | {r.get('error', '')[:120]} | | | | |")
            continue
        m = r["metrics"]
        other = ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k != primary)
        mb = f"{r['size_bytes'] / 1e6:.2f}"
        rss = f"{r['peak_rss_mib']:.0f}" if "peak_rss_mib" in r else ""
        lines.append(f"| {r['name']} | {m[primary]:.4f} | {other} | {mb} | {r['calib_s']:.1f} | {rss} | "
                     f"{r.get('note', '')} |")
    return "\n".join(lines)


def write_markdown(results: list[dict], command: str) -> None:
    cpu = cpu_flags()
    head = (f"Latest command: `{command}`  \nDate: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; CPU of "
            f"that run: {cpu['model']}, flags {', '.join(cpu['flags'])}; torch {torch.__version__}. Each table lists "
            "the commands that made its rows; rows from 2026-11 ran on an AMD EPYC (avx2, fma). The metrics are "
            "a float simulation and do not depend on the CPU; the seconds do.  \n"
            "Torch simulation of the quantized model (fake quantization): metrics and sizes, not speed. "
            "Weight MB: deployable weight bytes (quantized weights at their bits with scales and zero points, "
            "other parameters at their dtype). Calib s: capture + BN folding + calibration (+ search). "
            "Peak RSS: VmHWM of the forked child that built and scored the variant (task data included).")
    body = "\n\n".join(table(r) for r in results)
    write_section(ROOT / "BENCHMARKS.md", SECTION, head + "\n\n" + body)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    ap.add_argument("--variants", nargs="+", choices=sorted(ptq_variants.CONFIGS))
    ap.add_argument("--n-calib", type=int)
    ap.add_argument("--n-eval", type=int)
    ap.add_argument("--no-mixed", action="store_true", help="skip the mixed-precision search")
    args = ap.parse_args()
    command = "python bench/ptq.py " + " ".join(sys.argv[1:])
    out = ROOT / "results"
    out.mkdir(exist_ok=True)
    results = []
    for name in args.models:
        path = out / f"ptq-{name}.json"
        old = json.loads(path.read_text()) if args.variants and path.exists() else None

        def save(res: dict, path=path, old=old) -> dict:
            res = {**res, "command": command}
            if old is not None:  # a partial re-run replaces only its own rows
                res = merge(old, res)
            path.write_text(json.dumps(res, indent=1))
            return res

        results.append(save(run_model(name, args.variants, args.n_calib, args.n_eval, not args.no_mixed, save)))
    saved = [json.loads((out / f"ptq-{m}.json").read_text()) for m in MODELS if (out / f"ptq-{m}.json").exists()]
    write_markdown(saved, command)


if __name__ == "__main__":
    main()
