#!/usr/bin/env python
"""What SmoothQuant's explicit multiplies cost in lowbit's PT2E int8 MiniLM, and what they buy.

    .venv/bin/python bench/smooth_cost.py [--repeats 25] [--batches 1 32]

BERT's LayerNorm output also feeds the residual and GELU has no weight, so SmoothQuant's 1/s cannot fold there:
`smoothquant:explicit=true` puts a per-channel float multiply before the quantizer instead. Three builds of the
runtime benchmark's lowbit-int8-pt2e model (W8A8 in PT2E's deployable layout, mse ranges, int8 embedding
tables), compiled by torch.compile's x86 inductor (freezing, oneDNN int8 kernels), timed side by side at each batch
size and 1 thread (warm-up, then alternated A B C C B A ...; median and fastest sample):
- no smoothing;
- SmoothQuant alpha 0.8 with its multiplies after the norms, attention outputs and the pooler (the default);
- the same, and multiplies after every GELU too (`after_activations=true`);
- the default and the outlier input channels in float (`outlier_channels`): the runtime benchmark's
  lowbit-int8-pt2e recipe.
The fp32 compiled model and torchao's PT2E static int8 model (the runtime benchmark's peer) are timed beside them.
Embedding cosine to fp32 on the evaluation rows for each. Writes results/smooth-cost.json and the "SmoothQuant's
explicit multiplies in PT2E" section of BENCHMARKS.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import provenance  # noqa: E402
from bench.markdown import write_section  # noqa: E402
from bench.timing import alternate  # noqa: E402

SECTION = "## SmoothQuant's explicit multiplies in PT2E (MiniLM), beside torchao"
SMOOTH = (("alpha", 0.8), ("explicit", True))
RECIPE = "SmoothQuant + outlier channels in float (lowbit-int8-pt2e's recipe)"
BUILDS = {  # label: (smoothquant options or None, outlier_channels pass)
    "no smoothing": (None, False),
    "SmoothQuant, multiplies after norms and attention (default)": (SMOOTH, False),
    "SmoothQuant, multiplies after GELU too (after_activations)": ((*SMOOTH, ("after_activations", True)), False),
    RECIPE: (SMOOTH, True),
}


def _peers() -> dict:
    from bench.peers.torchao_pt2e import build_pt2e
    from bench.variants.fp32 import build_compiled

    return {"fp32, torch.compile": build_compiled, "torchao PT2E static int8 (peer)": build_pt2e}


def build(task, smooth, outliers: bool = False):
    import lowbit
    from bench.onnx_io import export_inputs
    from bench.variants.fp32 import compiled_runner
    from lowbit.config import PassSpec, preset
    from lowbit.export.layout import deployable
    from lowbit.export.pt2e import to_exported_program

    config = preset("w8a8")
    config, _ = deployable(replace(config, activation=replace(config.activation, estimator="mse")), task.model,
                           runtime="pt2e")
    if smooth is not None:
        config = replace(config, passes=(PassSpec("smoothquant", smooth),))
    if outliers:
        config = replace(config, passes=(*config.passes, PassSpec("outlier_channels")))
    qmodel = lowbit.quantize(task.model, task.calib, config.with_embeddings(), progress=False)
    cosine = task.evaluate(qmodel)["cosine"]
    program = to_exported_program(qmodel, export_inputs(task))
    return compiled_runner(program.module(), len(task.eval[0][0]))(1), cosine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=25)
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--batches", type=int, nargs="+", default=[32])
    args = ap.parse_args()
    import lowbit.zoo

    torch.set_num_threads(1)
    torch._dynamo.config.recompile_limit = 64  # several compiled copies of one module class
    task = lowbit.zoo.load("minilm", n_calib=64, n_eval=args.n_eval)
    runs, cosines = {}, {}
    for label, (smooth, outliers) in BUILDS.items():
        runs[label], cosines[label] = build(task, smooth, outliers)
        print(label, f"cosine {cosines[label]:.4f}", flush=True)
    for label, build_peer in _peers().items():
        import tempfile

        runs[label] = build_peer(task, task.calib, Path(tempfile.mkdtemp(prefix="lowbit-smooth-"))).make_runner(1)
        cosines[label] = task.evaluate(runs[label])["cosine"]
        print(label, f"cosine {cosines[label]:.4f}", flush=True)
    results = {k: {"cosine": cosines[k]} for k in runs}
    for size in args.batches:
        batch = tuple(t[:size].repeat(-(-size // len(t)), *[1] * (t.dim() - 1))[:size] for t in task.eval[0])
        with torch.inference_mode():
            timed = alternate({k: (lambda f=f, b=batch: f(*b)) for k, f in runs.items()}, args.repeats, warmup=2)
        for k in runs:
            results[k][f"b{size}"] = timed[k]
    command = "python bench/smooth_cost.py " + " ".join(sys.argv[1:])
    (ROOT / "results" / "smooth-cost.json").write_text(json.dumps({"command": command, "rows": results}, indent=1))
    lines = [*provenance(command),
             f"lowbit-int8-pt2e builds of MiniLM (64 calibration rows; cosine on {args.n_eval} evaluation rows), "
             f"torch.compile x86 inductor, 1 thread, {args.repeats} alternated samples after 2 warm-ups per batch "
             "size. The fastest sample shows the cost best on this noisy machine.", "",
             "| build | cosine | " + " | ".join(f"b{b} median ms | b{b} fastest ms | b{b} median vs fp32"
                                                for b in args.batches) + " |",
             "|---|---|" + "---|---|---|" * len(args.batches)]
    for label, r in results.items():
        cells = [label, f"{r['cosine']:.4f}"]
        for size in args.batches:
            t, base = r[f"b{size}"], results["fp32, torch.compile"][f"b{size}"].get("median_ms")
            if "error" in t:
                cells += [f"failed: {t['error']}", "", ""]
                continue
            cells += [f"{t['median_ms']:.2f}", f"{min(t['samples_ms']):.2f}",
                      f"{base / t['median_ms']:.2f}x" if base else ""]
        lines.append("| " + " | ".join(cells) + " |")
    write_section(ROOT / "BENCHMARKS.md", SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
