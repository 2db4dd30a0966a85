#!/usr/bin/env python
"""Checkpoint size against fp32, and save/load round-trip exactness, on real zoo models.

    .venv/bin/python bench/checkpoint_size.py [--models fashion-cnn minilm] [--presets w8a8 w8a8+emb w4a16]

A preset name ending in `+emb` also quantizes the embedding tables (int8 per row; models without any skip it).

For each model and preset: quantize on a small calibration slice, lowbit.save, lowbit.load into a fresh copy of
the architecture, check the outputs are bit-identical on evaluation batches, and compare the bytes of
model.safetensors with the fp32 state dict written as safetensors. Prints the table and writes
results/checkpoint-size.json (it does not edit BENCHMARKS.md).
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
from safetensors.torch import load_file  # noqa: E402

import lowbit  # noqa: E402
import lowbit.zoo  # noqa: E402
from bench.common import cpu_flags  # noqa: E402
from lowbit.checkpoint.files import TENSORS_FILE, tensor_bytes  # noqa: E402

EMBEDDINGS = "+emb"


def config_for(preset: str) -> lowbit.QuantConfig:
    base = lowbit.preset(preset.removesuffix(EMBEDDINGS))
    return base.with_embeddings() if preset.endswith(EMBEDDINGS) else base


def measure(name: str, preset: str, n_calib: int, n_eval: int, work: Path) -> dict | None:
    task = lowbit.zoo.load(name, n_calib=n_calib, n_eval=n_eval)
    if preset.endswith(EMBEDDINGS) and not any(isinstance(m, torch.nn.Embedding) for m in task.model.modules()):
        return None
    fp32_bytes = len(tensor_bytes(task.model.state_dict()))
    qmodel = lowbit.quantize(task.model, task.calib, config_for(preset))
    folder = work / f"{name}-{preset}"
    t0 = time.perf_counter()
    lowbit.save(qmodel, folder)
    t1 = time.perf_counter()
    loaded = lowbit.load(folder, lowbit.zoo.load(name, n_calib=n_calib, n_eval=n_eval).model)
    t2 = time.perf_counter()
    with torch.no_grad():
        exact = all(torch.equal(qmodel(*b), loaded(*b)) for b in task.eval)
    size = (folder / TENSORS_FILE).stat().st_size
    stored = load_file(folder / TENSORS_FILE)
    float_bytes = sum(t.numel() * t.element_size() for k, t in stored.items() if k.startswith("state."))
    folder_size = sum(p.stat().st_size for p in folder.iterdir())
    return {
        "model": name,
        "preset": preset,
        "fp32_safetensors_bytes": fp32_bytes,
        "checkpoint_safetensors_bytes": size,
        "checkpoint_folder_bytes": folder_size,
        "ratio": size / fp32_bytes,
        "float_tensor_bytes": float_bytes,  # tensors stored as is: embeddings, biases, norms, float layers
        "accounted_weight_bytes": qmodel.weight_bytes()["total"],
        "save_s": t1 - t0,
        "load_s": t2 - t1,
        "round_trip_exact": exact,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["fashion-cnn", "minilm"])
    ap.add_argument("--presets", nargs="+", default=["w8a8", "w8a8+emb", "w4a16", "w4a16+emb"])
    ap.add_argument("--n-calib", type=int, default=16)
    ap.add_argument("--n-eval", type=int, default=16)
    args = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="lowbit-ckpt-"))
    rows = [r for m in args.models for p in args.presets if (r := measure(m, p, args.n_calib, args.n_eval, work))]
    print(f"{'model':<12} {'preset':<9} {'fp32 B':>11} {'ckpt B':>11} {'ratio':>6} {'save s':>7} {'load s':>7} "
          f"{'float B':>11} exact")
    for r in rows:
        print(f"{r['model']:<12} {r['preset']:<9} {r['fp32_safetensors_bytes']:>11} "
              f"{r['checkpoint_safetensors_bytes']:>11} {r['ratio']:>6.3f} {r['save_s']:>7.2f} {r['load_s']:>7.2f} "
              f"{r['float_tensor_bytes']:>11} {r['round_trip_exact']}")
    out = {
        "command": "bench/checkpoint_size.py " + " ".join(sys.argv[1:]),
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M"),
        "cpu_flags": cpu_flags(),
        "load_average": os.getloadavg(),
        "rows": rows,
    }
    (ROOT / "results").mkdir(exist_ok=True)
    (ROOT / "results" / "checkpoint-size.json").write_text(json.dumps(out, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
