"""Rescue flow on fashion-cnn: PTQ with lowbit.api.quantize at low bit widths, then lowbit.qat.rescue when the
accuracy drop exceeds the tolerance.

    .venv/bin/python -m bench.qat_rescue                  # writes results/qat_rescue.json
    .venv/bin/python -m bench.qat_rescue --max-steps 50   # smoke run

Data (real labels): fine-tuning batches from the first 55,000 training images, the rescue loop's metric on the
last 5,000 training images (held out from fine-tuning), and the reported accuracies on the 10,000 test images,
which the loop never sees. One intra-op thread (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
from torch import nn

from lowbit import metrics
from lowbit.api import quantize
from lowbit.config import QuantConfig, QuantSpec
from lowbit.core.granularity import PerChannel
from lowbit.core.qtype import get_qtype
from lowbit.qat import rescue
from lowbit.zoo.data import fashion_mnist
from lowbit.zoo.fashion import CHECKPOINT, normalize, pretrained

log = logging.getLogger("bench.qat_rescue")
ROOT = Path(__file__).resolve().parents[1]
N_VAL = 5000
N_CALIB = 512
EVAL_BATCH = 1000
SEED = 0


def low_bit(wbits: int, abits: int) -> QuantConfig:
    """Per-channel symmetric int weights, per-tensor asymmetric uint activations (the w8a8 preset's shape)."""
    return QuantConfig(
        QuantSpec(get_qtype(f"int{wbits}"), PerChannel(0)),
        QuantSpec(get_qtype(f"uint{abits}"), symmetric=False),
    )


def accuracy_on(x: torch.Tensor, y: torch.Tensor):
    def accuracy(model: nn.Module) -> float:
        with torch.no_grad():
            logits = torch.cat([model(x[i : i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
        return metrics.top1_accuracy(logits, y)

    return accuracy


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", nargs="+", default=["4,4", "3,4", "2,4"], help="weight,activation bit pairs")
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--max-steps", type=int, default=600)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--method", default="lsq")
    p.add_argument("--checkpoint", default=str(CHECKPOINT), help="fashion-cnn weights (default: the zoo's)")
    p.add_argument("--out", default=str(ROOT / "results" / "qat_rescue.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    train_x, train_y = fashion_mnist("train")
    test_x, test_y = fashion_mnist("test")
    n_fit = len(train_x) - N_VAL
    perm = torch.randperm(n_fit, generator=torch.Generator().manual_seed(SEED))
    fit_x, fit_y = normalize(train_x[:n_fit][perm]), train_y[:n_fit][perm]
    batches = [(fit_x[i : i + args.batch], fit_y[i : i + args.batch]) for i in range(0, n_fit, args.batch)]
    val = accuracy_on(normalize(train_x[n_fit:]), train_y[n_fit:])
    test = accuracy_on(normalize(test_x), test_y)
    # checkpoints written before train_fashion.py stored str(torch.__version__) hold a TorchVersion in "meta"
    with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
        model = pretrained(Path(args.checkpoint))
    fp32 = {"val": val(model), "test": test(model)}
    rows = []
    for pair in args.bits:
        wbits, abits = (int(b) for b in pair.split(","))
        t0 = time.perf_counter()
        qmodel = quantize(model, [b[0] for b in batches[: N_CALIB // args.batch]], low_bit(wbits, abits))
        ptq_s = time.perf_counter() - t0
        result = rescue(
            qmodel, batches, val, tolerance=args.tolerance, reference_metric=fp32["val"],
            max_steps=args.max_steps, lr=args.lr, method=args.method, eval_every=args.eval_every,
        )  # fmt: skip
        row = {
            "config": f"W{wbits}A{abits}", "ptq_seconds": ptq_s, "val_ptq": result.before,
            "val_rescued": result.after, "test_ptq": test(qmodel), "test_rescued": test(result.model),
            "steps": result.steps, "rescue_seconds": result.seconds, "met": result.met,
            "history": result.history, "note": result.note,
        }  # fmt: skip
        log.info("%s", {k: v for k, v in row.items() if k != "history"})
        rows.append(row)
    out = {
        "command": " ".join(["python -m bench.qat_rescue", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": 1, "tolerance": args.tolerance, "lr": args.lr, "batch": args.batch,
        "method": args.method, "max_steps": args.max_steps, "eval_every": args.eval_every,
        "fp32": fp32, "rows": rows,
    }  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


if __name__ == "__main__":
    main()
