"""Markdown tables from results/<suite>-<model>.json, written into BENCHMARKS.md's own section only."""

from __future__ import annotations

import json
from pathlib import Path

from bench.markdown import replace_section as _replace
from bench.markdown import split_heading

SECTION = "## Runtime comparison (fp32 and peers)"
BYTES_PER_MB = 1e6
MODEL_ORDER = ("fashion-cnn", "efficientnet-lite0", "minilm", "smollm2")
LEGEND = (
    "Latency cells: median ms per call, and in brackets the speed-up over the variant's own fp32 baseline "
    "measured in the same run (fp32-ort for onnxruntime/NNCF rows, fp32-compile for compiled torchao rows, "
    "fp32-torch for the fp32-ort and fp32-compile rows themselves). `b1 t2` = batch 1, 2 threads. "
    "Size: bytes on disk of the deployable file (ONNX file, torch state_dict or saved ExportedProgram). "
    "Peak RSS (build+eval): VmHWM of a child process forked after the task is loaded, which builds the "
    "variant and scores it on the evaluation batches. Run RSS: VmHWM of a bare onnxruntime process (no "
    "torch) that loads the ONNX file and runs one batch of 32 (ONNX deployables only). "
    "Calib s: calibration + quantization time."
)


NOTES = """How the peers were run (details in bench/peers/*.py):
- onnxruntime static: QDQ, per-channel int8 weights, **uint8 activations (U8S8)**. Its default is int8
  activations (S8S8), which on x86 leaves many Conv/MatMul nodes in fp32 and is no faster than fp32.
  Entropy uses 512 histogram bins through onnxruntime's calibration cache: with the default 128 bins it has
  a single candidate threshold and silently equals MinMax, and `quantize_static` does not pass a bin count
  through. For MiniLM only MatMul/Gemm are quantized: observers on the attention-mask path (which adds
  float32-min) ruin every range.
  `quant_pre_process` runs with symbolic shape inference off (it fails on the dynamo export).
- torchao PT2E (`torchao.quantization.pt2e`, torch 2.13 no longer ships it): X86InductorQuantizer, then
  torch.compile with inductor freezing (the global `torch._inductor.config.freezing` flag: the per-call
  `options={"freezing": True}` left oneDNN's int8 prepack unfolded and compilation failed). When the quantizer
  raises its IndexError on Linear+GELU (BERT), the row says so and the run retries with that one fusion
  annotation skipped (Linears still int8, GELU in fp32).
- torchao dynamic int8 / int8 weight-only: `quantize_` on nn.Linear, run eagerly (compiling them took
  minutes per shape here); not run on the CNNs, whose only Linear is the classifier head.
- NNCF 3.4 on the exported ONNX model (installed beside torch 2.13 by `make bench-setup`), run by onnxruntime.
- Compiled variants are compiled once per batch size (static shapes) in the runner's process, so they have no
  child-process peak RSS. SmolLM2: latency on one window of 128 tokens, batch 1 only; static int8 and compile
  rows say why they were not run."""


def _metric_text(metrics: dict | None, primary: str) -> str:
    if not metrics:
        return ""
    keys = [primary] + sorted(k for k in metrics if k != primary)
    return ", ".join(f"{k} {metrics[k]:.4g}" for k in keys if k in metrics)


def _latency_cell(row: dict, key: str) -> str:
    cell = row.get("latency", {}).get(key)
    if not cell:
        return ""
    if "error" in cell:
        return "error"
    ratio = cell.get("speedup_vs_baseline")
    return f"{cell['median_ms']:.3g}" + (f" ({ratio:.2f}x)" if ratio else "")


def _num(value, fmt: str) -> str:
    return "" if value is None else format(value, fmt)


def model_table(result: dict) -> str:
    keys = [f"b{b} t{t}" for t in result["threads"] for b in result["batches"]]
    head = [
        "variant",
        "size MB",
        result["primary_metric"] + " (+ others)",
        "calib s",
        "peak RSS MB",
        "run RSS MB",
    ]
    lines = ["| " + " | ".join(head + [f"{k} ms" for k in keys] + ["note"]) + " |"]
    lines.append("|" + "---|" * (len(head) + len(keys) + 1))
    for row in result["variants"]:
        size = row.get("size_bytes")
        note = row.get("status", "") if row.get("status") != "ok" else row.get("note", "")
        cells = [
            f"`{row['name']}`",
            "" if size is None else f"{size / BYTES_PER_MB:.2f}",
            _metric_text(row.get("metrics"), result["primary_metric"]),
            _num(row.get("calib_s"), ".1f"),
            _num(row.get("peak_rss_mib") if row.get("status") == "ok" else None, ".0f"),
            _num(row.get("run_rss_mib"), ".0f"),
            *[_latency_cell(row, k) for k in keys],
            note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def section_text(results: list[dict]) -> str:
    first = results[0]
    cpu = first["cpu"]
    parts = [
        SECTION,
        "",
        "Made by `bench/run.py --suite full` (each table names its exact command and date). "
        f"CPU: {cpu['model']}, {cpu['cpus']} logical CPUs, "
        f"flags: {', '.join(cpu['flags']) or 'none of interest'}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in first["versions"].items())
        + ". Timings were taken on a shared 2-core machine with other jobs running: expect about ±15% noise; "
        "compare ratios within one table, not absolute times across tables.",
        "",
        LEGEND,
        "",
        NOTES,
    ]
    for result in sorted(results, key=lambda r: MODEL_ORDER.index(r["model"]) if r["model"] in MODEL_ORDER else 99):
        made = f"`{result['command']}`, {result['date']} UTC, {result['wall_s'] / 60:.0f} min."
        caveat = f" **Caveat:** {result['caveat']}" if result.get("caveat") else ""
        text = f"{made} {result['setup']}{caveat}"
        parts += ["", f"### {result['model']}", "", text, "", model_table(result)]
    return "\n".join(parts) + "\n"


def replace_section(markdown: str, new_section: str) -> str:
    """Replace the text from SECTION up to the next `## ` heading (or the end); append it if absent."""
    return _replace(markdown, *split_heading(new_section))


def update_markdown(results_dir: Path, suite: str, md_path: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob(f"{suite}-*.json"))]
    if not results:
        raise FileNotFoundError(f"no {results_dir}/{suite}-*.json; run bench/run.py --suite {suite} first")
    text = section_text(results)
    current = md_path.read_text() if md_path.exists() else "# lowbit benchmarks\n\n"
    tmp = md_path.with_suffix(".md.tmp")
    tmp.write_text(replace_section(current, text))
    tmp.replace(md_path)
    return text
