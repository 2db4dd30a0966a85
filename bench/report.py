"""Markdown tables from results/<suite>-<model>.json, written into BENCHMARKS.md's own section only."""

from __future__ import annotations

import json
from pathlib import Path

from bench.markdown import replace_section as _replace
from bench.markdown import split_heading
from bench.results import runs_of
from bench.verdict import verdict

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
    "torch) that loads the ONNX file and runs its largest latency batch (32 rows; SmolLM2: one window), ONNX "
    "deployables only. Calib s: calibration + quantization time. Run: which of the table's runs measured the row "
    "(only shown when a partial re-run was merged; every ratio compares rows of one run)."
)
# (variant, reference, what differs): a sentence comparing their primary metric is added under the table
PAIRS = (
    ("ort-static-minmax-rr", "ort-static-minmax", "reduce_range (7-bit weights)"),
    ("ort-dynamic-rr", "ort-dynamic", "reduce_range (7-bit weights)"),
    ("ort-static-minmax-emulated", "ort-static-minmax", "Same QDQ file without int8 kernels (emulated in fp32)"),
    ("lowbit-int8-dynamic-ort", "ort-dynamic", "Dynamic int8, lowbit against onnxruntime's quantize_dynamic"),
)


NOTES = """How the peers were run (details in bench/peers/*.py):
- onnxruntime static: QDQ, per-channel int8 weights, **uint8 activations (U8S8)**. Its default is int8
  activations (S8S8), which on x86 leaves many Conv/MatMul nodes in fp32 and is no faster than fp32.
  Entropy uses 512 histogram bins through onnxruntime's calibration cache: with the default 128 bins it has
  a single candidate threshold and silently equals MinMax, and `quantize_static` does not pass a bin count
  through. For MiniLM only MatMul/Gemm are quantized: observers on the attention-mask path (which adds
  float32-min) ruin every range.
  `quant_pre_process` runs with symbolic shape inference off (it fails on the dynamo export).
  Entropy and Percentile get the same calibration rows re-batched to one batch size (onnxruntime's
  histogram collectors fail on a shorter last batch, as fashion-cnn's 5 x 100 + 12 rows).
- `ort-static-minmax-rr` and `ort-dynamic-rr` add onnxruntime's `reduce_range`: weights in [-64, 64]
  instead of [-127, 127]. On x86 without VNNI (no avx512_vnni/avx_vnni among the flags above) onnxruntime's
  U8S8 integer GEMM uses VPMADDUBSW, which adds two uint8 x int8 products into a saturating int16:
  2 x 255 x 127 = 64770 overflows int16 (32767), 2 x 255 x 64 = 32640 does not. onnxruntime's documentation
  advises reduce_range "for some models running on non-VNNI machine, especially for per-channel mode".
  The cost is one bit of weight precision. `ort-static-minmax-emulated` runs the `ort-static-minmax` file
  with onnxruntime's graph optimizations off, so DequantizeLinear -> float Conv/MatMul -> QuantizeLinear
  emulate the quantization in fp32 and nothing can saturate: the gap between it and `ort-static-minmax` is
  what the int8 kernels cost; the gap between it and fp32 is quantization error. Its latency is not a
  deployment figure. The sentences under a table compare these rows' metrics. Where the emulated row beats
  the reduce_range row, the int8 kernels lose accuracy for a reason other than 8-bit weight saturation
  (EfficientNet-Lite0 here; not traced yet).
- torchao PT2E (`torchao.quantization.pt2e`, torch 2.13 no longer ships it): X86InductorQuantizer, then
  torch.compile with inductor freezing (the global `torch._inductor.config.freezing` flag: the per-call
  `options={"freezing": True}` left oneDNN's int8 prepack unfolded and compilation failed). When the quantizer
  raises its IndexError on Linear+GELU (BERT), the row says so and the run retries with that one fusion
  annotation skipped (Linears still int8, GELU in fp32). The model is captured with `strict=True`: torch 2.13's
  default non-strict export leaves `source_fn_stack` empty on a Conv2d subclass, and the quantizer, which finds
  convolutions by it, then annotated 0 of EfficientNet-Lite0's 49 convs (an fp32 model: top-1 agreement 1, 1.01x).
  The row's note counts the conv and linear nodes that read a dequantized input.
- torchao dynamic int8 / int8 weight-only: `quantize_` on nn.Linear, run eagerly (compiling them took
  minutes per shape here); not run on the CNNs, whose only Linear is the classifier head.
- NNCF 3.4 on the exported ONNX model (installed beside torch 2.13 by `make bench-setup`), run by onnxruntime.
- SmolLM2's lm_head shares the embedding table (tied weights) and the export reads it through a Transpose:
  `quantize_dynamic` stores the table once in uint8 (per tensor) and runs the head (49152 x 576, the largest
  MatMul) as Transpose -> DequantizeLinear -> fp32 MatMul on every call; NNCF's weight compression fails on
  it unless the Transpose is first folded into a copy of the table (done for `nncf-weight-int8`).
- The fp32 ONNX file is exported with batch and sequence dynamic (Dim.DYNAMIC, example grown to 2 rows: an
  example of batch 1 fixed SmolLM2's batch to 1) and checked to keep those axes symbolic.
- Compiled variants are compiled once per batch size (static shapes) and thread count in the runner's process, so
  they have no child-process peak RSS (inductor writes the thread count into its fused kernels at compile time).
- Threads keep each runtime's default spinning between parallel sections (OpenMP's for torch, allow_spinning for
  onnxruntime), with 0.1 s of sleep before every timed sample so that the previous variant's threads have stopped
  spinning (measured: onnxruntime's spin about 25 ms after a run, torch's about 5 ms). Runs before 2026-12-03 turned
  spinning off in both (OMP_WAIT_POLICY=PASSIVE, allow_spinning=0) and compiled once under 1 thread: that wakes
  sleeping threads at each of inductor's many small parallel regions, so compiled torch at 2 threads ran slower at
  batch 1 than at 1 thread (MiniLM int8 PT2E b1 t2 15.0 ms passive, 4.2 ms spinning; b32 t2 62.6 against 48.0).
- SmolLM2: latency on one window of 128 tokens, batch 1 only; static int8 and compile rows say why they were not
  run."""


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
    several_runs = len(runs_of(result)) > 1
    if several_runs:
        lines = [lines[0][:-1] + "| run |", lines[1] + "---|"]
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
            *([str(row.get("run", 0))] if several_runs else []),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _load_text(load: dict | None) -> str:
    if not load:
        return "load average not recorded"
    start, end = ("/".join(f"{x:.2f}" for x in load[k]) for k in ("start", "end"))
    return f"load average (1/5/15 min) {start} at start, {end} at end"


def runs_text(result: dict) -> str:
    """Each run of a table: command, date, duration and the machine's load average around it."""
    runs = runs_of(result)
    lines = []
    for i, run in enumerate(runs):
        tag = f"Run {i}: " if len(runs) > 1 else ""
        minutes = f", {run['wall_s'] / 60:.0f} min" if "wall_s" in run else ""
        when = f"{run.get('date', 'date not recorded')} UTC{minutes}"
        cpu = run.get("cpu")
        where = f", CPU {cpu['model']} ({', '.join(cpu['flags']) or 'no flag of interest'})" if cpu else ""
        lines.append(f"{tag}`{run.get('command', '?')}`, {when}{where}, {_load_text(run.get('load_avg'))}.")
    return "  \n".join(lines)


def pair_notes(result: dict) -> str:
    """Sentences comparing the primary metric of the PAIRS present in the result."""
    rows = {row["name"]: row.get("metrics") or {} for row in result["variants"]}
    primary = result["primary_metric"]
    notes = []
    for variant, reference, what in PAIRS:
        a, b = rows.get(variant, {}), rows.get(reference, {})
        if primary in a and primary in b:
            notes.append(f"{what}: {primary} {a[primary]:.4g} (`{variant}`) against {b[primary]:.4g} (`{reference}`).")
    return " ".join(notes)


def section_text(results: list[dict]) -> str:
    first = results[0]
    cpus = {(c["model"], c["cpus"], ", ".join(c["flags"]) or "none of interest"): None
            for r in results for c in (run.get("cpu") for run in runs_of(r)) if c}
    parts = [
        SECTION,
        "",
        "Made by `bench/run.py --suite full` (each table names its exact command, date and CPU per run). "
        "CPUs: " + "; ".join(f"{m}, {n} logical CPUs, flags: {f}" for m, n, f in cpus) + ". Versions: "
        + ", ".join(f"{k} {v}" for k, v in first["versions"].items())
        + ". Timings were taken on a shared 2-core machine with other jobs running (each table gives the load "
        "average at the start and end of its run): expect about ±15% noise; compare ratios within one run, "
        "not absolute times across tables.",
        "",
        LEGEND,
        "",
        NOTES,
    ]
    for result in sorted(results, key=lambda r: MODEL_ORDER.index(r["model"]) if r["model"] in MODEL_ORDER else 99):
        caveat = f" **Caveat:** {result['caveat']}" if result.get("caveat") else ""
        text = f"{runs_text(result)}  \n{result['setup']}{caveat}"
        after = [t for t in (pair_notes(result), verdict(result)) if t]
        parts += ["", f"### {result['model']}", "", text, "", model_table(result)] + [x for t in after for x in ("", t)]
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
