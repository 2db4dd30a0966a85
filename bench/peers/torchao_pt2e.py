"""PyTorch's own static int8 path: torchao 0.18 PT2E with X86InductorQuantizer, lowered by torch.compile.

torch 2.13 no longer ships `torch.ao.quantization.quantize_pt2e`; PT2E lives in `torchao.quantization.pt2e`.
In torchao 0.18 the quantizer's Linear+unary fusion annotation raises IndexError on BERT's Linear+GELU
(a partition with no output nodes). We record that error and retry with `_NoLinearUnaryFusion`, which skips
only that fusion annotation: every Linear is still annotated as a plain int8 linear, the GELU stays fp32.

The model is captured with `torch.export.export(..., strict=True)`. The quantizer finds convolutions by each node's
`source_fn_stack`, which torch 2.13's default non-strict export leaves empty for a Conv2d subclass: on
EfficientNet-Lite0 (`Conv2dStaticSamePadding`) it annotated 0 of 49 convolutions, only the classifier Linear, and
the "int8" model ran in fp32 (pytorch/pytorch#160095 reports the same symptom). Strict capture annotates all 49.
The row's note counts the convolutions and linears that take a dequantized input, so a coverage gap shows.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from bench.common import Built, NotApplicable, register_variant
from bench.variants.fp32 import compiled_runner

log = logging.getLogger(__name__)
REFUSED = {
    "smollm2": "PT2E static int8 not run on the 135M causal LM: per-tensor static activations are a poor fit "
    "for LLM outliers and export+calibration+compile of 30 layers exceeds this run's time box",
}


def _quantizer_classes():
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    class NoLinearUnaryFusion(xiq.X86InductorQuantizer):
        """Skips Linear+ReLU/GELU fusion annotation (torchao 0.18 IndexError); Linears are still int8."""

        def _annotate_linear_unary(self, gm, quantization_config, filter_fn=None) -> None:
            return None

    return xiq, NoLinearUnaryFusion


def _export(task) -> torch.fx.GraphModule:
    dims = task.dynamic_axes
    auto = torch.export.Dim.AUTO
    shapes = tuple({axis: auto for axis in dims.get(name, {})} or None for name in task.input_names)
    return torch.export.export(
        task.model.eval(), tuple(task.example_inputs), dynamic_shapes=shapes, strict=True
    ).module()


def coverage(converted: torch.fx.GraphModule) -> str:
    """'int8 conv 49/49, linear 1/1': how many conv/linear nodes read a dequantized (int8) input."""
    total, quantized = {}, {}
    for node in converted.graph.nodes:
        name = str(node.target)
        kind = next((k for k in ("conv", "linear") if name.startswith(f"aten.{k}")), None)
        if node.op != "call_function" or kind is None:
            continue
        total[kind] = total.get(kind, 0) + 1
        if "dequantize" in str(getattr(node.args[0], "target", "")):
            quantized[kind] = quantized.get(kind, 0) + 1
    return "int8 " + ", ".join(f"{k} {quantized.get(k, 0)}/{n}" for k, n in total.items())


def _prepare_convert(task, calib, quantizer) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    prepared = prepare_pt2e(_export(task), quantizer)
    with torch.no_grad():
        for batch in calib:
            prepared(*batch)
    return convert_pt2e(prepared)


@register_variant(
    "torchao-pt2e-static",
    family="peer",
    baseline="fp32-compile",
    isolated=False,
    description="torchao 0.18 PT2E X86InductorQuantizer static int8, torch.compile(freezing)",
)
def build_pt2e(task, calib, workdir: Path) -> Built:
    if task.name in REFUSED:
        raise NotApplicable(REFUSED[task.name])
    xiq, fallback = _quantizer_classes()
    config = xiq.get_default_x86_inductor_quantization_config()
    start, note = time.perf_counter(), ""
    try:
        converted = _prepare_convert(task, calib, xiq.X86InductorQuantizer().set_global(config))
    except IndexError as exc:
        note = f"IndexError in X86InductorQuantizer ({exc}); retried without Linear+unary fusion"
        log.warning("%s: %s", task.name, note)
        start = time.perf_counter()
        converted = _prepare_convert(task, calib, fallback().set_global(config))
    calib_s = time.perf_counter() - start
    note = "; ".join(filter(None, [coverage(converted), note]))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "torchao-pt2e.pt2"
    if not path.exists():
        # clones: a slice of the task's data would be saved with its whole storage (32 MB for fashion-cnn)
        ep = torch.export.export(converted, tuple(t.clone() for t in task.example_inputs))
        torch.export.save(ep, str(path))
    return Built(compiled_runner(converted, len(task.eval[0][0])), path, calib_s, note)
