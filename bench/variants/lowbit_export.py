"""lowbit's deployable variants: the quantized model exported and run by a real integer runtime.

- lowbit-int8-ort: W8A8 static (mse activation ranges, then the `repaired` recipe) in the layout
  `lowbit.export.layout.deployable` picks for this CPU, exported as QDQ ONNX and run by onnxruntime
  (QLinearConv / MatMulIntegerToFloat / QGemm kernels);
- lowbit-int8-pt2e: the same recipe in PT2E's layout (attention matmuls float: inductor has no int8 kernel for
  them), lowered to PT2E's ExportedProgram and compiled by torch.compile's x86 inductor backend (oneDNN int8
  kernels);
- lowbit-int8-pt2e-sq (transformers): the same without the outlier channels pass, lowbit's speed-first recipe: the
  float side products cost about 7% at batch 32 and 14% at batch 1 in PT2E (BENCHMARKS.md, "SmoothQuant's explicit
  multiplies in PT2E"), and buy cosine 0.9959 -> 0.9984 on MiniLM;
- lowbit-w4a16-ort: the weight-only int4 per-group model (GPTQ) as onnxruntime's MatMulNBits, float inputs;
- lowbit-w4a8-nbits-ort: the same model with MatMulNBits' int8 compute (`to_onnx(nbits_compute="int8")`):
  onnxruntime quantizes each block of a matmul's input to int8 on the fly (a dynamic W4A8 the simulation does not
  model; the parity note measures the difference);
- lowbit-w8a8-nbits-ort: int8 weights per group of 128 (`w8a16-g128`) as MatMulNBits with int8 compute: the
  near-lossless LLM path (one weight scale and one input scale per block of 128).
Embedding tables are quantized too (`QuantConfig.with_matching_embeddings`: int8 per row, int4 per group of 32 in
the int4 models; SmolLM2's tied table is gathered from its LM head's int4 codes with GatherBlockQuantized), so the
files hold no float table.
Every build records the share of onnxruntime kernel time spent in integer kernels and the parity of the runtime
with lowbit's torch simulation and with lowbit's emulation of onnxruntime's kernels (`lowbit.export.emulate`;
elements within one output step, and the share equal bit for bit) in the row's note.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from bench.common import Built, NotApplicable, register_variant
from bench.onnx_io import ONNX_OUTPUT_PREFIX, dynamic_shapes, export_inputs, feeds, ort_runner
from bench.variants.fp32 import LLM_NO_COMPILE, compiled_runner
from lowbit.config import EMBEDDING_INT4, Mode, PassSpec, QuantConfig, preset

ESTIMATOR = "mse"
PARITY_ROWS = 8


def repaired(config: QuantConfig, model: torch.nn.Module, outliers: bool = True) -> tuple[QuantConfig, str]:
    """lowbit's best static int8 recipe per kind of model, measured in bench/ptq.py (BENCHMARKS.md, PTQ table):
    convolutional nets: EasyQuant scales then empirical bias correction (EfficientNet-Lite0 top-1 agreement
    0.84 -> 0.93 in the deployable layout); transformers: SmoothQuant alpha 0.8 through explicit per-channel
    multiplies after the LayerNorms and attention outputs, none after GELU (MiniLM cosine 0.9925 -> 0.9958; with
    the GELU outputs too 0.9939, and 15 ms slower in PT2E), then the outlier input channels of FFN-down in float
    (`outlier_channels`: one or two channels in 6 of MiniLM's FFN-down inputs, PT2E cosine 0.9958 -> 0.9983);
    `outliers=False` leaves that pass out (the speed-first recipe, lowbit-int8-pt2e-sq)."""
    if any(isinstance(m, torch.nn.modules.conv._ConvNd) for m in model.modules()):
        return (replace(config, calibration="easyquant", passes=config.passes + (PassSpec("bias_correction"),)),
                "EasyQuant scales + bias correction")
    smooth = PassSpec("smoothquant", (("alpha", 0.8), ("explicit", True)))
    why = "SmoothQuant alpha 0.8 (explicit multiplies, none after GELU); " + (
        "outlier input channels in float" if outliers else "outlier channels not moved (speed first)")
    extra = (PassSpec("outlier_channels"),) if outliers else ()
    return replace(config, passes=(smooth, *config.passes, *extra)), why


def repaired_dynamic(config: QuantConfig, model: torch.nn.Module, calib) -> tuple[QuantConfig, str]:
    """lowbit's dynamic int8 recipe (one uint8 range per tensor and call): SmoothQuant alpha 0.5 where its scales
    fold into a norm or a linear layer (no run-time cost), and the linear layers whose input a per-tensor range
    cannot carry kept float (`layout.massive_activation_rules`). Measured on SmolLM2 (8 windows, simulation):
    perplexity fp32 24.4; per tensor 41.0; + SmoothQuant 37.8; + the five down_proj layers below 3 dB kept float
    27.9 (all 30 down_proj float: 25.0)."""
    from lowbit.export.layout import massive_activation_rules

    rules = massive_activation_rules(model, calib)
    config = replace(config, passes=(PassSpec("smoothquant", (("alpha", 0.5),)), *config.passes))
    why = "SmoothQuant alpha 0.5 (folded)"
    if rules:
        config = config.with_rules(*rules)
        why += f"; {len(rules)} linear layers kept float: {', '.join(r.pattern for r in rules)} ({rules[0].reason}...)"
    return config, why


def quantize_deployable(task, calib, name: str = "w8a8", embeddings: bool = True, repair: bool = True,
                        runtime: str = "onnxruntime", outliers: bool = True):
    """(QuantizedModel, seconds, notes) for the task's model in the deployable layout of this CPU and `runtime`
    (`lowbit.export.layout.deployable`). `embeddings`: embedding tables as int8 per-row codes (a tied table: its LM
    head's codes), where the model has any. `repair`: static int8 models get the recipe of `repaired` (`outliers`:
    with its outlier_channels pass)."""
    import lowbit
    from lowbit.export.layout import deployable

    config = preset(name)
    if config.activation is not None:
        config = replace(config, activation=replace(config.activation, estimator=ESTIMATOR))
    config, notes = deployable(config, task.model, runtime=runtime)
    if repair and config.mode is Mode.STATIC and config.activation is not None:
        config, why = repaired(config, task.model, outliers)
        notes.append(why)
    elif repair and config.mode is Mode.DYNAMIC:
        config, why = repaired_dynamic(config, task.model, calib)
        notes.append(why)
    if embeddings and any(isinstance(m, torch.nn.Embedding) for m in task.model.modules()):
        config = config.with_matching_embeddings()
        width = "int4 per group of 32" if config.embedding == EMBEDDING_INT4 else "int8 per row"
        notes.append(f"embedding tables {width} (a tied table shares its LM head's codes)")
    start = time.perf_counter()
    qmodel = lowbit.quantize(task.model, calib, config, progress=False)
    return qmodel, time.perf_counter() - start, notes


def parity(task, qmodel, run) -> float:
    """lowbit.export.deploy.parity on the first evaluation rows."""
    from lowbit.export.deploy import parity as deploy_parity

    return deploy_parity(qmodel, run, tuple(t[:PARITY_ROWS] for t in task.eval[0]))


def one_ulp(qmodel, batch) -> str:
    """The simulation's parity with itself under one ulp at each quantizer's input (`rounding_parity`) as a note
    clause, or "" for a model without activation quantizers."""
    from lowbit.export.deploy import rounding_parity

    value = rounding_parity(qmodel, batch)
    return "" if value is None else f" (the simulation against itself, one ulp moved at each quantizer: {value:.4f})"


def _export(task, qmodel, workdir: Path, filename: str, compute: str = "float") -> Path:
    from lowbit.export import to_onnx

    outputs = [ONNX_OUTPUT_PREFIX + n for n in task.output_names]
    return to_onnx(qmodel, export_inputs(task), workdir / filename, input_names=list(task.input_names),
                   output_names=outputs, dynamic_shapes=dynamic_shapes(task), nbits_compute=compute)


def _ort_built(task, qmodel, path: Path, seconds: float, notes: list[str], compute: str = "float") -> Built:
    from lowbit.export import integer_share
    from lowbit.export.deploy import emulated_parity

    make = ort_runner(path, task.input_names)
    sess_run = make(1)
    batch = tuple(t[:PARITY_ROWS] for t in task.eval[0])
    import onnxruntime as ort

    names = [i.name for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()]
    share = integer_share(path, feeds(names, task.input_names, batch), runs=2)
    out = sess_run(*batch)
    ran = lambda *_: out  # noqa: E731 - one onnxruntime run serves both parity measures
    agree = parity(task, qmodel, ran)
    emulated = emulated_parity(qmodel, ran, batch, compute)
    note = (f"integer kernels {share.integer_fraction:.0%} of onnxruntime time; parity {agree:.4f} of elements "
            f"within one step of the simulation{one_ulp(qmodel, batch)}, {emulated['parity_emulated']:.4f} of "
            f"lowbit's emulation of onnxruntime's kernels ({emulated['emulated_equal']:.2%} bit for bit); "
            + "; ".join(notes))
    warning = share.warning()
    if warning:
        note += f"; WARNING {warning}"
    return Built(make, path, seconds, note)


@register_variant("lowbit-int8-ort", family="lowbit", baseline="fp32-ort",
                  description="lowbit W8A8 static (repaired recipe), QDQ ONNX in onnxruntime's integer kernels")
def build_int8_ort(task, calib, workdir: Path) -> Built:
    if task.name == "smollm2":
        raise NotApplicable("a causal LM is deployed weight-only here (lowbit-w4a16-ort); static int8 activations "
                            "of the 135M LM are issue 9's SmoothQuant work")
    return _ort_variant(task, calib, workdir, "w8a8", "lowbit-int8.onnx")


def _ort_variant(task, calib, workdir: Path, name: str, filename: str, compute: str = "float") -> Built:
    """Quantize, export (`compute`: MatMulNBits' compute type) and check; a file already exported in this work
    folder (the runner's phase 1 wrote it, phase 2 only times it) is reused instead of quantizing again."""
    if (workdir / filename).exists():
        return Built(ort_runner(workdir / filename, task.input_names), workdir / filename, 0.0, "")
    qmodel, seconds, notes = quantize_deployable(task, calib, name)
    path = _export(task, qmodel, workdir, filename, compute)
    return _ort_built(task, qmodel, path, seconds, notes, compute)


@register_variant("lowbit-int8-dynamic-ort", family="lowbit", baseline="fp32-ort",
                  description="lowbit W8A8 dynamic (uint8 range per tensor and call), DynamicQuantizeMatMul in "
                              "onnxruntime")
def build_int8_dynamic_ort(task, calib, workdir: Path) -> Built:
    if task.name not in ("minilm", "smollm2"):
        raise NotApplicable("dynamic activations are for matmul-heavy models (MiniLM, SmolLM2): onnxruntime fuses "
                            "DynamicQuantizeLinear only into matmuls, a conv would stay float")
    return _ort_variant(task, calib, workdir, "w8a8-dynamic", "lowbit-int8-dynamic.onnx")


WEIGHT_ONLY = "w4a16-gptq"  # int4 per group of 128 with GPTQ: SmolLM2 perplexity 32.6 against 36.7 rounded to nearest


def _weight_only(task) -> None:
    if task.name != "smollm2" and task.name != "minilm":
        raise NotApplicable("per-group weight-only matmuls (MatMulNBits) are for matmul-heavy models (SmolLM2, MiniLM)")


@register_variant("lowbit-w4a16-ort", family="lowbit", baseline="fp32-ort",
                  description="lowbit W4A16 per-group (GPTQ), MatMulNBits in onnxruntime, float inputs")
def build_w4a16_ort(task, calib, workdir: Path) -> Built:
    _weight_only(task)
    return _ort_variant(task, calib, workdir, WEIGHT_ONLY, "lowbit-w4a16.onnx")


@register_variant("lowbit-w4a8-nbits-ort", family="lowbit", baseline="fp32-ort",
                  description="lowbit-w4a16-ort's model with MatMulNBits' int8 compute: onnxruntime quantizes each "
                              "block of 128 inputs to int8 on the fly (dynamic W4A8)")
def build_w4a8_nbits_ort(task, calib, workdir: Path) -> Built:
    _weight_only(task)
    return _ort_variant(task, calib, workdir, WEIGHT_ONLY, "lowbit-w4a8-nbits.onnx", compute="int8")


@register_variant("lowbit-w8a8-nbits-ort", family="lowbit", baseline="fp32-ort",
                  description="lowbit int8 weights per group of 128 as MatMulNBits with int8 compute (each block of "
                              "128 inputs quantized to int8 on the fly)")
def build_w8a8_nbits_ort(task, calib, workdir: Path) -> Built:
    _weight_only(task)
    return _ort_variant(task, calib, workdir, "w8a16-g128", "lowbit-w8a8-nbits.onnx", compute="int8")


@register_variant("lowbit-int8-pt2e", family="lowbit", baseline="fp32-compile", isolated=False,
                  description="lowbit W8A8 static (repaired recipe) as PT2E, torch.compile x86 inductor (oneDNN int8)")
def build_int8_pt2e(task, calib, workdir: Path) -> Built:
    if task.name == "smollm2":
        raise NotApplicable(LLM_NO_COMPILE)
    return _pt2e_variant(task, calib, workdir, "lowbit-int8.pt2", outliers=True)


@register_variant("lowbit-int8-pt2e-sq", family="lowbit", baseline="fp32-compile", isolated=False,
                  description="lowbit W8A8 static, speed first: SmoothQuant without outlier channels, PT2E")
def build_int8_pt2e_sq(task, calib, workdir: Path) -> Built:
    if task.name != "minilm":
        raise NotApplicable("the speed-first recipe differs from lowbit-int8-pt2e only for transformers with the "
                            "outlier_channels pass (MiniLM)")
    return _pt2e_variant(task, calib, workdir, "lowbit-int8-sq.pt2", outliers=False)


def _pt2e_variant(task, calib, workdir: Path, filename: str, outliers: bool) -> Built:
    from lowbit.export.pt2e import to_exported_program

    qmodel, seconds, notes = quantize_deployable(task, calib, runtime="pt2e", outliers=outliers)
    program = to_exported_program(qmodel, export_inputs(task))  # dynamic axes; compiled per shape
    path = workdir / filename
    torch.export.save(program, str(path))
    runner = compiled_runner(program.module(), len(task.eval[0][0]))
    run = runner(1)
    batch = tuple(t[:PARITY_ROWS] for t in task.eval[0])
    note = (f"parity {parity(task, qmodel, run):.4f} of elements within one step of the simulation"
            f"{one_ulp(qmodel, batch)}; " + "; ".join(notes))
    return Built(runner, path, seconds, note)
