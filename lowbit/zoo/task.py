"""ZooTask: a reference model, its calibration and evaluation batches, and how to score its outputs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

Batch = tuple[torch.Tensor, ...]


def batched(*tensors: torch.Tensor, size: int) -> list[Batch]:
    """Split tensors along dim 0 into positional-argument batches of `size` rows (the last may be shorter)."""
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError(f"tensors to batch have different lengths: {[len(t) for t in tensors]}")
    return [tuple(t[i : i + size] for t in tensors) for i in range(0, n, size)]


def _identity(index: int, output: torch.Tensor) -> torch.Tensor:
    return output


@dataclass(frozen=True, eq=False)
class ZooTask:
    """One reference task. `model(*batch)` returns one Tensor for every batch in `calib` and `eval`.

    Scoring is split in two so that large outputs (a language model's logits) need not be kept:
    `score_batch(i, output)` reduces the output of eval batch i to a small summary, and `finish` turns the
    summaries of all eval batches, in order, into metrics. `score(outputs)` and `evaluate(model)` do both.
    Outputs may be torch tensors or numpy arrays (as onnxruntime returns them).

    ONNX export: `torch.onnx.export(task.model, task.example_inputs, f, input_names=list(task.input_names),
    output_names=list(task.output_names), dynamic_axes=task.dynamic_axes)`. `dynamic_axes` maps each input
    and output name to {axis: symbolic name}: axis 0 is "batch" everywhere, and the text tasks also mark
    axis 1 "sequence". Within `calib` and `eval` all batches have one shape, except that the last may have
    fewer rows.
    """

    name: str
    model: nn.Module
    calib: list[Batch]
    eval: list[Batch]
    example_inputs: Batch
    finish: Callable[[list[torch.Tensor]], dict[str, float]]
    primary_metric: str
    higher_is_better: bool
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    summarize: Callable[[int, torch.Tensor], torch.Tensor] = field(default=_identity)
    info: dict[str, object] = field(default_factory=dict)

    def score_batch(self, index: int, output: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Summary of the model's output on eval batch `index` (the output itself for small outputs)."""
        output = torch.as_tensor(output)
        expected = len(self.eval[index][0])
        if output.shape[0] != expected:
            raise ValueError(
                f"{self.name}: output of eval batch {index} has {output.shape[0]} rows, expected {expected}"
            )
        return self.summarize(index, output.detach().float())

    def score(self, outputs: Sequence[torch.Tensor | np.ndarray]) -> dict[str, float]:
        """Metrics from the model's outputs on `eval`, one output per batch, in order."""
        if len(outputs) != len(self.eval):
            raise ValueError(f"{self.name}: got {len(outputs)} outputs for {len(self.eval)} eval batches")
        return self.finish([self.score_batch(i, out) for i, out in enumerate(outputs)])

    def evaluate(self, model: Callable[..., torch.Tensor]) -> dict[str, float]:
        """score([model(*b) for b in eval]) under torch.inference_mode, without keeping full outputs."""
        with torch.inference_mode():
            summaries = [self.score_batch(i, model(*batch)) for i, batch in enumerate(self.eval)]
        return self.finish(summaries)
