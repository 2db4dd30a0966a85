"""fp32 baselines: eager torch, torch.compile (inductor, freezing) and onnxruntime on the exported ONNX."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import Built, NotApplicable, register_variant, torch_runner
from bench.onnx_io import export_fp32, ort_runner

FP32_CHECKPOINT = "fp32.pt"


def save_state(model: torch.nn.Module, workdir: Path) -> Path:
    """The deployable file of a torch variant: its state_dict (size on disk)."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / FP32_CHECKPOINT
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        torch.save(model.state_dict(), tmp)
        tmp.replace(path)
    return path


def compile_frozen(module: torch.nn.Module) -> torch.nn.Module:
    """torch.compile with the inductor backend and weight freezing (needed for oneDNN int8/fp32 prepacking).

    The global inductor flag is set on purpose: with torch 2.13, `torch.compile(options={"freezing": True})`
    left PT2E's onednn.qconv/qlinear_prepack unfolded and compilation failed (UnsupportedOperatorException),
    while `torch._inductor.config.freezing = True` lowers them. This is benchmark code, not the library.
    """
    torch._inductor.config.freezing = True
    return torch.compile(module, backend="inductor", dynamic=False)


def compiled_runner(module: torch.nn.Module, full_rows: int):
    """Runner factory for a compiled module with static shapes: compiles once per batch size and thread count.

    Inductor writes the thread count of the moment into its C++ kernels (`#pragma omp parallel num_threads(N)`,
    `torch._inductor.utils.parallel_num_threads`), so a graph compiled under 1 thread and run under 2 leaves its
    fused kernels on one thread while oneDNN's use two (MiniLM b32, 2 threads, 2026-12-03: fp32 159.9 ms and
    lowbit PT2E 51.7 ms compiled under 1 thread, 150.4 and 50.5 ms compiled under 2). Each thread count therefore
    gets its own torch.compile wrapper (a wrapper of its own misses the other's cache: dynamo's guards check the
    backend), compiled on its first call, which runs under that count (`torch_runner` sets it).
    A shorter last evaluation batch is padded (repeating its rows) to `full_rows` and the padding's outputs
    dropped, so that scoring reuses the batch-`full_rows` graph instead of compiling a third shape.
    """
    compiled: dict[int, Callable[[int], Callable]] = {}

    def factory(threads: int):
        if threads not in compiled:
            compiled[threads] = torch_runner(compile_frozen(module))
        run = compiled[threads](threads)

        def padded(*batch: torch.Tensor) -> torch.Tensor:
            n = len(batch[0])
            if n in (1, full_rows) or n > full_rows:
                return run(*batch)
            reps = -(-full_rows // n)
            grown = tuple(t.repeat(reps, *([1] * (t.dim() - 1)))[:full_rows] for t in batch)
            return run(*grown)[:n]

        return padded

    return factory


LLM_NO_COMPILE = (
    "not run on the 135M causal LM: compiling 30 layers takes minutes per shape on this shared 2-core "
    "machine, beyond the benchmark's time box; the eager and onnxruntime rows are the fp32 references"
)


@register_variant("fp32-torch", family="fp32", description="fp32, eager PyTorch", in_quick=True)
def build_eager(task, calib, workdir: Path) -> Built:
    return Built(torch_runner(task.model.eval()), save_state(task.model, workdir), 0.0)


@register_variant(
    "fp32-compile",
    family="fp32",
    description="fp32, torch.compile (inductor, freezing)",
    baseline="fp32-torch",
    isolated=False,
)
def build_compiled(task, calib, workdir: Path) -> Built:
    if task.name == "smollm2":
        raise NotApplicable(LLM_NO_COMPILE)
    runner = compiled_runner(task.model.eval(), len(task.eval[0][0]))
    return Built(runner, save_state(task.model, workdir), 0.0)


@register_variant(
    "fp32-ort",
    family="fp32",
    description="fp32, onnxruntime (ONNX, dynamic batch)",
    baseline="fp32-torch",
    in_quick=True,
)
def build_ort(task, calib, workdir: Path) -> Built:
    start = time.perf_counter()
    path = export_fp32(task, workdir)
    return Built(ort_runner(path, task.input_names), path, 0.0, note=f"export {time.perf_counter() - start:.0f} s")
