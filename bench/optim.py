#!/usr/bin/env python
"""8-bit optimizers against torch.optim.Adam: state bytes, training curves, step time.

    .venv/bin/python bench/optim.py            # about 15 minutes on one thread of this 2-core machine

Writes results/optim.json and the `## 8-bit optimizers` section of BENCHMARKS.md (only that section).
Training: fashion-cnn from scratch on a fixed Fashion-MNIST subset, and a MiniLM fine-tune with a linear
sentiment head on the movie reviews; each with Adam and Adam8bit under the same seeds (model init, data order,
dropout), two seeds each. Step time: optimizer.step() alone on fixed gradients, Adam and Adam8bit alternating.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.common import cpu_flags  # noqa: E402
from bench.markdown import replace_section as _replace  # noqa: E402
from bench.markdown import split_heading  # noqa: E402
from bench.timing import alternate  # noqa: E402
from lowbit.optim import Adam8bit  # noqa: E402
from lowbit.zoo import minilm  # noqa: E402
from lowbit.zoo.data import fashion_mnist, movie_reviews  # noqa: E402
from lowbit.zoo.fashion import FashionCNN, normalize  # noqa: E402

log = logging.getLogger("bench.optim")
SECTION = "## 8-bit optimizers"
SUBSET_SEED, SEEDS = 1234, (0, 1)
STATE_TARGET = 0.26  # issue 7: 8-bit state at most 26% of torch.optim.Adam's
HIDDEN = 384  # MiniLM-L6 hidden size


class Sentiment(nn.Module):
    """MiniLM encoder, masked mean pooling, linear head: (ids, mask) -> logits [B, 2]."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, nn.Linear(HIDDEN, 2)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, H]
        m = mask.unsqueeze(-1).float()  # [B, T, 1]
        return self.head((hidden * m).sum(1) / m.sum(1).clamp_min(1.0))  # [B, 2]


def fashion_task(args):
    x, y = fashion_mnist("train")
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(SUBSET_SEED))[: args.fashion_train]
    tx, ty = fashion_mnist("test")
    data = (normalize(x[pick]), y[pick]), (normalize(tx[: args.fashion_test]), ty[: args.fashion_test])
    return FashionCNN, data, args.fashion_batch, args.fashion_epochs, args.fashion_lr


def minilm_task(args):
    texts, labels = movie_reviews()
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(SUBSET_SEED)).tolist()
    n_train = args.minilm_steps * args.minilm_batch
    tok = minilm.tokenizer()

    def encode(idx):
        out = tok([texts[i] for i in idx], padding="max_length", truncation=True, max_length=args.seq_len,
                  return_tensors="pt")  # fmt: skip
        return (out["input_ids"], out["attention_mask"]), torch.as_tensor(labels[idx])

    train, test = encode(order[:n_train]), encode(order[n_train : n_train + args.minilm_test])
    return lambda: Sentiment(minilm.pretrained().encoder), (train, test), args.minilm_batch, 1, args.minilm_lr


def inputs(x, idx):
    return tuple(t[idx] for t in x) if isinstance(x, tuple) else (x[idx],)


def evaluate(model, data, batch=100):
    x, y = data
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(*inputs(x, slice(i, i + batch))) for i in range(0, len(y), batch)])
    model.train()
    return nn.functional.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train_run(task, opt_factory, seed):
    make_model, (train, test), batch, epochs, lr = task
    torch.manual_seed(seed)
    model = make_model().train()
    opt = opt_factory(model.parameters(), lr)
    order_gen = torch.Generator().manual_seed(seed)
    x, y = train
    losses, step_s = [], []
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=order_gen)
        for i in tqdm(range(0, len(y) - batch + 1, batch), disable=None, leave=False):
            idx = perm[i : i + batch]
            start = time.perf_counter()
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(*inputs(x, idx)), y[idx])
            loss.backward()
            opt.step()
            step_s.append(time.perf_counter() - start)
            losses.append(round(loss.item(), 4))
    test_loss, test_acc = evaluate(model, test)
    return {"train_loss": losses, "test_loss": test_loss, "test_acc": test_acc,
            "median_train_step_ms": 1000 * statistics.median(step_s)}  # fmt: skip


def state_bytes(opt) -> int:
    return sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t))


def measure_states_and_time(make_model, variants, repeats):
    """State bytes after one step on random gradients, then median step time, variants alternating."""
    torch.manual_seed(0)
    base = make_model()
    out, calls = {}, {}
    for name, factory in variants.items():
        model = make_model()
        model.load_state_dict(base.state_dict())
        for p in model.parameters():
            p.grad = torch.randn_like(p) * 1e-3
        opt = factory(model.parameters(), 1e-4)
        opt.step()
        out[name] = {"state_bytes": state_bytes(opt)}
        calls[name] = opt.step
    timing = alternate(calls, repeats=repeats, warmup=1)
    for name in variants:
        out[name]["step_ms"] = timing[name].get("median_ms")
    return {"params": sum(p.numel() for p in base.parameters()), "optimizers": out}


STATE_INTRO = (
    "Optimizer state after one step (bytes of all state tensors) and optimizer.step() time alone, median of "
    "alternating runs on fixed random gradients:"
)
STATE_HEAD = "| model | params | optimizer | state bytes | vs Adam | step ms | vs Adam |\n" + "|---" * 7 + "|"
TRAIN_INTRO = (
    "Training, same seeds for both optimizers (init, data order, dropout). Train loss: mean of the first / "
    "last 10% of steps. Test: held-out loss and accuracy after training."
)
TRAIN_HEAD = (
    "| task | seed | optimizer | train loss first 10% | last 10% | test loss | test acc | median step ms |\n"
    "|---|---|---|---|---|---|---|---|"
)


def section(res) -> str:
    cpu = res["cpu"]
    lines = [SECTION, "", f"Command: `{res['command']}` ({res['date']}; CPU {cpu['model']}, flags "
             f"{', '.join(cpu['flags'])}; torch {res['torch']}, {res['threads']} thread(s)).", "",
             STATE_INTRO, "", STATE_HEAD]  # fmt: skip
    for model, r in res["states"].items():
        ref = r["optimizers"]["torch.optim.Adam"]
        for name, o in r["optimizers"].items():
            ratio, speed = o["state_bytes"] / ref["state_bytes"], o["step_ms"] / ref["step_ms"]
            row = [
                model,
                f"{r['params']:,}",
                name,
                f"{o['state_bytes']:,}",
                f"{ratio:.1%}",
                f"{o['step_ms']:.3g}",
            ]
            lines.append("| " + " | ".join(row) + f" | {speed:.2f}x |")
    lines += ["", TRAIN_INTRO, "", TRAIN_HEAD]
    for task, t in res["training"].items():
        for seed, runs in t["runs"].items():
            for name, r in runs.items():
                k = max(1, len(r["train_loss"]) // 10)
                first, last = statistics.mean(r["train_loss"][:k]), statistics.mean(r["train_loss"][-k:])
                row = [task, str(seed), name, f"{first:.4f}", f"{last:.4f}", f"{r['test_loss']:.4f}"]
                lines.append(
                    "| " + " | ".join(row) + f" | {r['test_acc']:.2%} | {r['median_train_step_ms']:.0f} |"
                )
    lines += ["", *[f"- {task}: {t['setup']}" for task, t in res["training"].items()], "", *verdicts(res), ""]
    return "\n".join(lines) + "\n"


def verdicts(res) -> list[str]:
    """Read-outs against the targets: state <= 26% of Adam's; Adam8bit within Adam's seed-to-seed spread."""
    load = res.get("loadavg", "not recorded")
    out = [
        f"Timings are noisy: a shared 2-core machine, load average at the start {load}. Adam8bit is plain "
        "torch ops (dequantize, update, requantize: about four extra passes over each state, no fused "
        "kernel), so on this CPU it buys memory, not speed; on tiny tensors per-op overhead dominates, which "
        "is why tensors below min_8bit_size (4096 elements) keep float32 states by default.",
        "",
    ]
    for model, r in res["states"].items():
        ref = r["optimizers"]["torch.optim.Adam"]["state_bytes"]
        for name, o in r["optimizers"].items():
            if name != "torch.optim.Adam":
                ok = "meets" if o["state_bytes"] <= STATE_TARGET * ref else "misses"
                out.append(
                    f"- {model}, {name}: state {o['state_bytes'] / ref:.1%} of Adam's, {ok} the 26% target."
                )
    for task, t in res["training"].items():
        accs = {
            n: [runs[n]["test_acc"] for runs in t["runs"].values()] for n in next(iter(t["runs"].values()))
        }
        adam, other = accs.pop("torch.optim.Adam"), next(iter(accs.values()))
        gaps = ", ".join(f"{abs(a - b):.2%}" for a, b in zip(adam, other, strict=True))
        out.append(f"- {task}: test accuracy gap Adam8bit vs Adam per seed {gaps}; Adam's own seed-to-seed "
                   f"spread {max(adam) - min(adam):.2%}.")  # fmt: skip
    return out


def replace_section(markdown: str, text: str) -> str:
    return _replace(markdown, *split_heading(text))


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


INT_FLAGS = {
    "threads": 1, "fashion-train": 6000, "fashion-test": 2000, "fashion-batch": 100, "fashion-epochs": 2,
    "minilm-steps": 60, "minilm-batch": 16, "minilm-test": 1000, "seq-len": 32, "repeats": 5,
}  # fmt: skip


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, default in INT_FLAGS.items():
        p.add_argument(f"--{flag}", type=int, default=default)
    p.add_argument("--fashion-lr", type=float, default=1e-3)
    p.add_argument("--minilm-lr", type=float, default=5e-5)
    p.add_argument("--out", type=Path, default=ROOT / "results" / "optim.json")
    p.add_argument("--markdown", type=Path, default=ROOT / "BENCHMARKS.md")
    p.add_argument("--report-only", action="store_true", help="rewrite the section from --out, run nothing")
    return p.parse_args()


def setups(args) -> dict[str, str]:
    fashion = (
        f"FashionCNN from scratch, {args.fashion_train} training images (a fixed random subset), batch "
        f"{args.fashion_batch}, {args.fashion_epochs} epochs, lr {args.fashion_lr}; tested on the first "
        f"{args.fashion_test} test images. Adam8bit with min_8bit_size=0 (every state in 8 bits)."
    )
    mini = (
        f"all-MiniLM-L6-v2 encoder + linear head (all 22.7M parameters trained) on the movie reviews, "
        f"{args.minilm_steps} steps of batch {args.minilm_batch}, {args.seq_len} tokens, "
        f"lr {args.minilm_lr}, dropout on; tested on {args.minilm_test} held-out reviews. "
        "Adam8bit with default settings."
    )
    return {"fashion-cnn": fashion, "minilm": mini}


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.report_only:
        return write_report(json.loads(args.out.read_text()), args)
    torch.set_num_threads(args.threads)
    adam = {"torch.optim.Adam": lambda ps, lr: torch.optim.Adam(ps, lr=lr)}
    adam8 = {"Adam8bit": lambda ps, lr: Adam8bit(ps, lr=lr)}
    adam8_all = {"Adam8bit(min_8bit_size=0)": lambda ps, lr: Adam8bit(ps, lr=lr, min_8bit_size=0)}
    res = {
        "command": " ".join(["python bench/optim.py", *sys.argv[1:]]),
        "date": str(datetime.date.today()),
        "cpu": cpu_flags(),
        "torch": torch.__version__,
        "threads": args.threads,
        "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    log.info("state bytes and step time")

    def make_minilm():
        return Sentiment(minilm.pretrained().encoder)

    res["states"] = {
        "fashion-cnn": measure_states_and_time(FashionCNN, adam | adam8 | adam8_all, args.repeats * 3),
        "minilm": measure_states_and_time(make_minilm, adam | adam8, args.repeats),
    }
    tasks = {
        "fashion-cnn": (fashion_task(args), adam | adam8_all),
        "minilm": (minilm_task(args), adam | adam8),
    }
    res["training"] = {}
    for task_name, (task, variants) in tasks.items():
        runs = {}
        for seed in SEEDS:
            runs[seed] = {}
            for name, factory in variants.items():
                log.info("train %s seed %d %s", task_name, seed, name)
                runs[seed][name] = train_run(task, factory, seed)
        res["training"][task_name] = {"setup": setups(args)[task_name], "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(args.out, json.dumps(res, indent=1))
    write_report(res, args)


def write_report(res, args) -> None:
    text = section(res)
    current = args.markdown.read_text() if args.markdown.exists() else "# lowbit benchmarks\n\n"
    write_atomic(args.markdown, replace_section(current, text))
    print(text)


if __name__ == "__main__":
    main()
