"""Train the zoo's fashion-cnn on Fashion-MNIST and write lowbit/zoo/weights/fashion_cnn.pt.

    .venv/bin/python bench/train_fashion.py            # defaults below: about 15 minutes on one idle core

Deterministic for a given seed, thread count and CPU (deterministic algorithms, seeded data order and
augmentation).
Recipe: SGD with Nesterov momentum under a one-cycle learning rate (Smith & Topin, "Super-Convergence", 2017),
random horizontal flips (and, with --shift N, random shifts of up to N pixels), label smoothing 0.1.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from lowbit import metrics
from lowbit.zoo.data import fashion_mnist
from lowbit.zoo.fashion import CHECKPOINT, FashionCNN, normalize

log = logging.getLogger("train_fashion")
LABEL_SMOOTHING = 0.1


def augment(x: torch.Tensor, generator: torch.Generator, shift: int) -> torch.Tensor:
    """Random shift by up to `shift` pixels (background padding) and left-right flip. x: [B, 1, 28, 28]."""
    b, _, h, w = x.shape
    padded = nn.functional.pad(
        x, (shift,) * 4, value=float(x.min())
    )  # [B, 1, h+2S, w+2S], pad with background
    dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, :, None]  # [B, h, 1]
    cols = (dx[:, None] + torch.arange(w))[:, None, :]  # [B, 1, w]
    shifted = padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)  # [B, 1, h, w]
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], shifted.flip(-1), shifted)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 1000) -> float:
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(x[i : i + batch]) for i in range(0, len(x), batch)])
    return metrics.top1_accuracy(logits, y)


def train(
    epochs: int, batch: int, lr: float, seed: int, limit: int | None, shift: int
) -> tuple[nn.Module, float]:
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = fashion_mnist("train")
    train_x, train_y = normalize(train_x[:limit]), train_y[:limit]
    model = FashionCNN()
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = epochs * (len(train_x) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=LABEL_SMOOTHING)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x), generator=generator)
        for i in tqdm(range(len(train_x) // batch), desc=f"epoch {epoch + 1}/{epochs}", disable=None):
            idx = order[i * batch : (i + 1) * batch]
            loss = loss_fn(model(augment(train_x[idx], generator, shift)), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        log.info("epoch %d loss %.4f (%.0f s)", epoch + 1, loss.item(), time.perf_counter() - start)
    return model.eval(), time.perf_counter() - start


def save(model: nn.Module, path: Path, meta: dict) -> None:
    """Atomic write: a temporary file in the same folder, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as f:
        torch.save({"model": model.state_dict(), "meta": meta}, f)
    os.chmod(f.name, 0o644)  # NamedTemporaryFile creates 0600; the checkpoint ships with the package
    os.replace(f.name, path)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shift", type=int, default=0, help="random shift augmentation, pixels each way")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--limit", type=int, default=None, help="train on the first N images only (smoke runs)"
    )
    parser.add_argument("--out", type=Path, default=CHECKPOINT)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    model, seconds = train(args.epochs, args.batch, args.lr, args.seed, args.limit, args.shift)
    test_x, test_y = fashion_mnist("test")
    accuracy = evaluate(model, normalize(test_x), test_y)
    meta = {
        **vars(args),
        "out": str(args.out),
        "test_accuracy": accuracy,
        "train_seconds": round(seconds, 1),
        "torch": str(torch.__version__),
    }
    save(model, args.out, meta)
    log.info(
        "test accuracy %.4f after %.0f s; wrote %s (%d bytes)",
        accuracy,
        seconds,
        args.out,
        args.out.stat().st_size,
    )


if __name__ == "__main__":
    main()
