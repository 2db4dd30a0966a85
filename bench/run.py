#!/usr/bin/env python
"""Benchmark runner: every registered variant (fp32, peers, lowbit) on the zoo's reference tasks.

    .venv/bin/python bench/run.py --suite quick|full [--models minilm ...] [--variants fp32-ort ...]
                                  [--families fp32 peer] [--report-only]

Per model: phase 1 forks one child per variant that builds it (timed), scores it on the evaluation batches and
reports its peak RSS; phase 2 rebuilds the variants that worked in this process (ONNX files are reused) and
times them side by side, alternating, at each batch size and thread count. Results go to
results/<suite>-<model>.json; `full` also regenerates BENCHMARKS.md's runtime-comparison section.
With `--variants` or `--families`, an existing results file is merged: the re-run rows replace theirs and the
others stay (bench/results.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile worker pools (we fork children)
# Both runtimes keep their default thread spinning (OpenMP's for torch, allow_spinning for onnxruntime): that is
# what a deployment runs with. Runs before 2026-12-03 set OMP_WAIT_POLICY=PASSIVE and allow_spinning=0, which
# wakes sleeping threads at every parallel region: inductor's many small regions paid most (MiniLM, compiled,
# 2 threads: fp32 b32 159 ms and int8 PT2E b1 15.0 / b32 62.6 ms passive, against 139, 4.2 and 48.0 spinning).
# `bench.timing.alternate` leaves a gap between variants, so that one variant's spinning threads have gone to
# sleep before the next one is timed (spinning workers sharing this 2-core machine with the next variant made
# 2-thread runs up to 30x slower: the reason those runs had turned spinning off).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.metadata  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import NotApplicable, cpu_flags, file_bytes, load_variants  # noqa: E402
from bench.memory import ort_run_peak, run_forked  # noqa: E402
from bench.onnx_io import feeds  # noqa: E402
from bench.report import model_table, update_markdown  # noqa: E402
from bench.results import merge, row_order  # noqa: E402
from bench.suites import (  # noqa: E402, F401 (LLM_SEQ is re-exported for callers)
    ALL_MODELS,
    LATENCY_BATCHES,
    LLM_SEQ,
    SUITES,
    Suite,
    latency_batch,
    setup_text,
)
from bench.timing import alternate  # noqa: E402

log = logging.getLogger("bench.run")
VERSIONS = ("torch", "torchao", "onnxruntime", "onnx", "nncf", "transformers")


def build_and_score(spec, task, workdir: Path, keep: dict | None = None) -> dict:
    """Phase 1 (in a forked child unless not isolated): build, score on eval, size, calibration time."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        built = spec.build(task, task.calib, workdir)
    except NotApplicable as exc:
        return {"status": f"not run: {exc}"}
    build_s = time.perf_counter() - start
    metrics = task.evaluate(built.make_runner(1))
    if keep is not None:
        keep[spec.name] = built
    path = built.path
    return {
        "status": "ok",
        "calib_s": built.calib_s,
        "build_s": build_s,
        "metrics": metrics,
        "note": built.note,
        "path": str(path) if path else None,
        "size_bytes": file_bytes(path),
    }


def in_process(spec, task, workdir: Path, keep: dict) -> dict:
    """Phase 1 for a variant that cannot be rebuilt cheaply (torch.compile): built once, here; no peak RSS."""
    try:
        row = build_and_score(spec, task, workdir, keep)
    except Exception as exc:
        return {
            "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
            "trace": traceback.format_exc(),
        }
    if row["status"] == "ok":
        row["note"] = "; ".join(filter(None, [row["note"], "built in the runner process: no peak RSS"]))
    return row


def phase1(task, specs, workdir: Path, suite: Suite, keep: dict) -> list[dict]:
    rows = {}
    for spec in sorted(specs, key=lambda s: not s.isolated):  # fork before anything is built in this process
        log.info("%s / %s: build + score", task.name, spec.name)
        if spec.isolated:
            child = workdir / "child.json"
            row = run_forked(lambda s=spec: build_and_score(s, task, workdir), child, suite.child_timeout_s)
        else:
            row = in_process(spec, task, workdir, keep)
        if "error" in row:
            row["status"] = f"failed: {row['error']}"
            log.warning("%s / %s failed:\n%s", task.name, spec.name, row.get("trace", row["error"]))
        if row.get("path", "") and row["path"].endswith(".onnx"):
            largest = latency_batch(task, max(LATENCY_BATCHES.get(task.name, suite.batches)))
            names = list(task.input_names)
            row["run_rss_mib"] = ort_run_peak(Path(row["path"]), feeds(names, task.input_names, largest), workdir)
        rows[spec.name] = {
            "name": spec.name,
            "family": spec.family,
            "baseline": spec.baseline,
            "description": spec.description,
            **row,
        }
        log.info("  -> %s %s", row.get("status"), row.get("metrics", ""))
    return [rows[spec.name] for spec in specs]


def phase2(task, specs, rows: list[dict], workdir: Path, suite: Suite, built: dict) -> None:
    """Latency, alternating the variants that built in phase 1, per thread count and batch size."""
    torch.set_num_threads(1)
    for spec, row in zip(specs, rows, strict=True):
        if row.get("status") != "ok" or spec.name in built:
            continue
        try:
            built[spec.name] = spec.build(task, task.calib, workdir)
        except Exception as exc:
            row["status"] = f"latency not measured: {type(exc).__name__}: {exc}".splitlines()[0][:300]
    batches = LATENCY_BATCHES.get(task.name, suite.batches)
    for threads in suite.threads:
        runners = {name: b.make_runner(threads) for name, b in built.items()}
        for size in batches:
            batch = latency_batch(task, size)
            log.info("%s: latency batch %d, %d thread(s), %d variants", task.name, size, threads, len(runners))
            calls = {n: (lambda r=r, b=batch: r(*b)) for n, r in runners.items()}
            res = alternate(calls, suite.repeats, suite.warmup)
            for row in rows:
                if row["name"] in res:
                    row.setdefault("latency", {})[f"b{size} t{threads}"] = res[row["name"]]
    for row in rows:
        base = next((r for r in rows if r["name"] == row["baseline"] and r is not row), None)
        for key, cell in row.get("latency", {}).items():
            ref = base.get("latency", {}).get(key, {}) if base else {}
            if "median_ms" in cell and "median_ms" in ref:
                cell["speedup_vs_baseline"] = ref["median_ms"] / cell["median_ms"]


def run_model(name: str, suite: Suite, suite_name: str, wanted: list[str] | None, command: str, families=None) -> dict:
    import lowbit.zoo

    registry = load_variants()
    names = wanted or [n for n in registry if registry.get(n).in_quick or not suite.only_quick_variants]
    names = [n for n in names if families is None or registry.get(n).family in families]
    specs = [registry.get(n) for n in names]
    specs.sort(key=lambda s: row_order(s.family, s.name))
    torch.set_num_threads(1)
    start, load_start = time.perf_counter(), os.getloadavg()
    task = lowbit.zoo.load(name, n_calib=suite.n_calib, n_eval=suite.n_eval)
    log.info("%s loaded in %.0f s", name, time.perf_counter() - start)
    # One folder per process: two runners on one model must not delete or reuse each other's files.
    workdir = Path(tempfile.gettempdir()) / "lowbit-bench" / suite_name / f"{name}-{os.getpid()}"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    built: dict = {}
    try:
        rows = phase1(task, specs, workdir, suite, built)
        phase2(task, specs, rows, workdir, suite, built)
    finally:
        built.clear()
        shutil.rmtree(workdir, ignore_errors=True)  # SmolLM2's ONNX files alone take about 1.5 GB
    run = {
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "wall_s": time.perf_counter() - start,
        "load_avg": {"start": list(load_start), "end": list(os.getloadavg())},
        "cpu": cpu_flags(),  # per run: a merged table may hold runs made on different machines
    }
    return {
        "suite": suite_name,
        "model": name,
        **run,
        "runs": [run],
        "cpu": cpu_flags(),
        "versions": {p: _version(p) for p in VERSIONS},
        "primary_metric": task.primary_metric,
        "higher_is_better": task.higher_is_better,
        "threads": list(suite.threads),
        "batches": list(LATENCY_BATCHES.get(name, suite.batches)),
        "setup": setup_text(task, suite),
        "variants": [{**row, "run": 0} for row in rows],
    }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick")
    parser.add_argument("--models", nargs="+", choices=ALL_MODELS)
    parser.add_argument("--variants", nargs="+", help="variant names (default: all registered for the suite)")
    parser.add_argument("--families", nargs="+", choices=("fp32", "peer", "lowbit"), help="only these families")
    parser.add_argument("--results", type=Path, default=ROOT / "results")
    parser.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--report-only", action="store_true", help="only regenerate BENCHMARKS.md from results/")
    args = parser.parse_args(argv)
    if args.report_only:
        update_markdown(args.results, args.suite, args.markdown)
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("bench").setLevel(logging.INFO)
    torch._dynamo.config.recompile_limit = 64  # several compiled copies of one class in one process
    suite = SUITES[args.suite]
    command = "bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.results.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.models or suite.models:
        try:
            result = run_model(name, suite, args.suite, args.variants, command, args.families)
        except Exception:  # a broken task loader skips that model, not the whole run
            log.exception("%s: could not be benchmarked", name)
            failed.append(name)
            continue
        out = args.results / f"{args.suite}-{name}.json"
        if (args.variants or args.families) and out.exists():  # a partial re-run replaces only its own rows
            result = merge(json.loads(out.read_text()), result)
        out.write_text(json.dumps(result, indent=1))
        print(f"\n### {name} ({result['wall_s']:.0f} s)\n\n{model_table(result)}\n", flush=True)
    if args.suite == "full":
        update_markdown(args.results, "full", args.markdown)
        log.info("updated %s", args.markdown)
    if failed:
        raise SystemExit(f"models that could not be benchmarked: {', '.join(failed)}")


if __name__ == "__main__":
    main()
