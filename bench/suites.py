"""Benchmark suites (sizes, batches, threads, repeats) and the inputs the runner times."""

from __future__ import annotations

from dataclasses import dataclass

import torch

ALL_MODELS = ("fashion-cnn", "efficientnet-lite0", "minilm", "smollm2")


@dataclass(frozen=True)
class Suite:
    models: tuple[str, ...]
    n_calib: int | None  # None: the zoo's default
    n_eval: int | None
    threads: tuple[int, ...]
    batches: tuple[int, ...]
    repeats: int
    warmup: int
    only_quick_variants: bool
    child_timeout_s: float


SUITES = {
    "quick": Suite(("fashion-cnn", "minilm"), 64, 128, (1,), (1, 32), 5, 2, True, 300),
    "full": Suite(ALL_MODELS, None, None, (1, 2), (1, 32), 5, 2, False, 900),
}
LLM_SEQ = 128  # SmolLM2 latency: a fixed window of 128 tokens, batch 1 only (batch 32 x 49k-vocab logits is 800 MB)
LATENCY_BATCHES = {"smollm2": (1,)}
LATENCY_SEQ = {"smollm2": LLM_SEQ}


def latency_batch(task, size: int) -> tuple[torch.Tensor, ...]:
    """eval[0] tiled/sliced to `size` rows (and to the fixed sequence length for the LLM)."""
    seq = LATENCY_SEQ.get(task.name)
    out = []
    for t in task.eval[0]:
        reps = -(-size // len(t))
        t = t.repeat(reps, *([1] * (t.dim() - 1)))[:size]
        out.append(t[:, :seq].contiguous() if seq and t.dim() >= 2 else t.contiguous())
    return tuple(out)


def setup_text(task, suite: Suite) -> str:
    """The sizes a table was measured with: samples, input shapes, batches, threads, repeats."""
    n_cal, n_ev = sum(len(b[0]) for b in task.calib), sum(len(b[0]) for b in task.eval)
    ev_shape = "x".join(str(d) for d in task.eval[0][0].shape[1:])
    shape = "x".join(str(d) for d in latency_batch(task, 1)[0].shape[1:])
    return (
        f"{n_cal} calibration and {n_ev} evaluation samples (zoo `{task.name}`), evaluation input shape per "
        f"sample: {ev_shape}; latency input shape per sample: {shape}; batches "
        f"{LATENCY_BATCHES.get(task.name, suite.batches)}, threads {suite.threads}, {suite.repeats} alternated "
        f"repeats after {suite.warmup} warm-ups."
    )
