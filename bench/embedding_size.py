#!/usr/bin/env python
"""ONNX file size and fidelity with and without quantized embedding tables, through the benchmark's own functions.

    nice -n 15 .venv/bin/python bench/embedding_size.py [--models minilm smollm2] [--n-eval 200]

MiniLM: lowbit-int8-ort's model (W8A8 static, mse, deployable layout; `--repair`: the variant's repair recipe)
exported with float and with int8 per-row embedding tables: file MB and the mean cosine of onnxruntime's
embeddings to fp32 (and of the simulation) on the evaluation sentences. SmolLM2: lowbit-w4a16-ort's model, file MB
both ways (its tied table is gathered from the LM head's int4 codes) and the logits' cosine to fp32 on a few
windows. Writes results/embedding-size.json; no timings (bench/run.py measures those on a quiet machine).
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
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import lowbit.zoo  # noqa: E402
from bench.onnx_io import ort_runner  # noqa: E402
from bench.variants.lowbit_export import _export, quantize_deployable  # noqa: E402
from lowbit.export.onnx import float_initializer_bytes  # noqa: E402

PRESETS = {"minilm": "w8a8", "smollm2": "w4a16"}
MB = 1e6


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))))


def _outputs(model, batches) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate([model(*b).numpy() for b in batches])


def measure(task, embeddings: bool, batches, work: Path, repair: bool = False) -> dict:
    qmodel, seconds, notes = quantize_deployable(task, task.calib, PRESETS[task.name], embeddings=embeddings,
                                                 repair=repair)
    path = _export(task, qmodel, work, f"{task.name}-{'emb' if embeddings else 'float-emb'}.onnx")
    run = ort_runner(path, task.input_names)(1)
    ort_out = np.concatenate([run(*b) for b in batches])
    fp32, sim = _outputs(task.model, batches), _outputs(qmodel, batches)
    return {
        "quantized_embeddings": embeddings,
        "file_mb": path.stat().st_size / MB,
        "initializer_mb": {k: v / MB for k, v in float_initializer_bytes(path).items()},
        "cosine_ort_fp32": _cosine(ort_out, fp32),
        "cosine_sim_fp32": _cosine(sim, fp32),
        "max_abs_ort_sim": float(np.abs(ort_out - sim).max()),
        "embeddings": qmodel.summary()["embeddings"],
        "quantize_s": seconds,
        "notes": notes,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["minilm", "smollm2"])
    ap.add_argument("--n-eval", type=int, default=200)
    ap.add_argument("--n-eval-llm", type=int, default=4)
    ap.add_argument("--repair", action="store_true", help="the variants' repaired int8 recipe (default: mse only, "
                    "as results/embedding-size.json was measured)")
    ap.add_argument("--out", default=str(ROOT / "results" / "embedding-size.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    work = Path(tempfile.mkdtemp(prefix="lowbit-emb-"))
    rows = []
    for name in args.models:
        task = lowbit.zoo.load(name, n_eval=args.n_eval if name != "smollm2" else args.n_eval_llm)
        tensors = {t.data_ptr(): t for t in task.model.state_dict().values()}  # a tied table once
        fp32_mb = sum(t.numel() * t.element_size() for t in tensors.values()) / MB
        for embeddings in (False, True):
            row = {"model": name, "preset": PRESETS[name], "fp32_state_dict_mb": fp32_mb,
                   **measure(task, embeddings, task.eval, work, args.repair)}
            print(json.dumps({k: v for k, v in row.items() if k not in ("embeddings", "notes")}), flush=True)
            rows.append(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    out = {"command": "bench/embedding_size.py " + " ".join(sys.argv[1:]),
           "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"), "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
