"""torchao 0.18 `quantize_` on the Linear layers: dynamic int8 (activations quantized per token at run time,
int8 per-channel weights) and int8 weight-only, the usual LLM paths.

Run eagerly (torchao's tensor subclasses dispatch to int8 matmuls without torch.compile): compiling them per
shape took minutes on this shared 2-core machine, beyond the benchmark's time box. The CNNs get no row: their
only nn.Linear is the classifier head, so the path leaves every convolution in fp32.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from bench.common import Built, NotApplicable, register_variant, torch_runner

LINEAR_TASKS = ("minilm", "smollm2")
DYNAMIC_LLM = (
    "not run on the 135M LM: eager, it did not finish MiniLM's evaluation within the runner's child time "
    "limit on this machine (see the minilm table), and compiling the LLM exceeds the time box"
)


def _quantize(task, workdir: Path, config, tag: str) -> Built:
    from torchao.quantization import quantize_

    if task.name not in LINEAR_TASKS:
        raise NotApplicable("only the classifier head is nn.Linear; every convolution would stay fp32")
    start = time.perf_counter()
    model = copy.deepcopy(task.model).eval()
    quantize_(model, config)
    calib_s = time.perf_counter() - start
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"torchao-{tag}.pt"
    if not path.exists():
        torch.save(model.state_dict(), path)
    return Built(torch_runner(model), path, calib_s, note="eager")


@register_variant(
    "torchao-dynamic-int8",
    family="peer",
    description="torchao Int8DynamicActivationInt8WeightConfig on nn.Linear, eager",
)
def build_dynamic(task, calib, workdir: Path) -> Built:
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig

    if task.name == "smollm2":
        raise NotApplicable(DYNAMIC_LLM)
    return _quantize(task, workdir, Int8DynamicActivationInt8WeightConfig(), "dynamic-int8")


@register_variant(
    "torchao-weight-int8",
    family="peer",
    description="torchao Int8WeightOnlyConfig on nn.Linear, eager",
)
def build_weight_only(task, calib, workdir: Path) -> Built:
    from torchao.quantization import Int8WeightOnlyConfig

    return _quantize(task, workdir, Int8WeightOnlyConfig(), "weight-int8")
