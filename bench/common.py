"""The variant registry and the small types the runner and every variant file share.

A variant file registers a builder with `@register_variant(...)`. A builder gets the task, the calibration
batches and a work folder, and returns a `Built`: a factory of runners (one per thread count), the deployable
file (its size on disk is reported) and the seconds spent calibrating/quantizing. A builder that cannot
handle a task raises `NotApplicable(reason)`; the runner then writes a row with that reason.
"""

from __future__ import annotations

import datetime
import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lowbit.registry import Registry

Batch = tuple[torch.Tensor, ...]
Runner = Callable[..., object]  # run(*batch) -> torch Tensor or numpy array, like task.model(*batch)
VARIANT_PACKAGES = ("bench.variants", "bench.peers")


class NotApplicable(Exception):
    """The variant does not run on this task; the message says why (it goes into the table)."""


@dataclass(frozen=True)
class Built:
    """A variant ready to run. `make_runner(threads)` returns `run(*batch)` at that thread count."""

    make_runner: Callable[[int], Runner]
    path: Path | None
    calib_s: float
    note: str = ""


@dataclass(frozen=True)
class VariantSpec:
    """How to build one variant. `baseline` names the fp32 variant of the same runtime (for speed ratios)."""

    name: str
    build: Callable[..., Built]
    family: str  # "fp32", "peer" or "lowbit"
    description: str
    baseline: str = "fp32-torch"
    in_quick: bool = False
    isolated: bool = True  # False: built once in the runner's process (torch.compile'd code cannot be handed over)


VARIANTS: Registry[VariantSpec] = Registry("benchmark variant")


def register_variant(
    name: str,
    *,
    family: str,
    description: str,
    baseline: str = "fp32-torch",
    in_quick: bool = False,
    isolated: bool = True,
) -> Callable[[Callable[..., Built]], Callable[..., Built]]:
    """Decorator: register `build(task, calib, workdir) -> Built` under `name`."""

    def deco(build: Callable[..., Built]) -> Callable[..., Built]:
        spec = VariantSpec(name, build, family, description, baseline, in_quick, isolated)
        VARIANTS.register(name)(spec)
        return build

    return deco


def load_variants() -> Registry[VariantSpec]:
    """Import every module of bench/variants and bench/peers, so that each registers its variants."""
    for package_name in VARIANT_PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package_name}.{info.name}")
    return VARIANTS


def file_bytes(path: Path | None) -> int | None:
    """Bytes on disk of a deployable file, with its ONNX external-data file if any."""
    if path is None or not path.exists():
        return None
    extra = path.with_name(path.name + ".data")
    return path.stat().st_size + (extra.stat().st_size if extra.exists() else 0)


def cpu_flags() -> dict[str, object]:
    """CPU model and the instruction-set flags int8 speed depends on, read from /proc/cpuinfo."""
    wanted = (
        "avx2",
        "fma",
        "avx512f",
        "avx512bw",
        "avx512_vnni",
        "avx_vnni",
        "avx512_bf16",
        "amx_int8",
        "amx_bf16",
    )
    model, flags = "unknown", set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": model, "flags": [], "cpus": 0}
    for line in text.splitlines():
        if line.startswith("model name") and model == "unknown":
            model = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    cpus = text.count("processor\t:")
    return {"model": model, "flags": [f for f in wanted if f in flags], "cpus": cpus}


def torch_runner(module: Callable[..., torch.Tensor]) -> Callable[[int], Runner]:
    """Runner factory for a torch callable: sets torch's thread count, runs under inference_mode."""

    def make(threads: int) -> Runner:
        def run(*batch: torch.Tensor) -> torch.Tensor:
            if torch.get_num_threads() != threads:
                torch.set_num_threads(threads)
            with torch.inference_mode():
                return module(*batch)

        return run

    return make


def provenance(command: str) -> list[str]:
    """A benchmark section's first two lines: the command, then the date, the CPU and its flags and the load."""
    cpu = cpu_flags()
    return [f"Command: `{command}`  ",
            f"Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; CPU: {cpu['model']}, flags "
            f"{', '.join(cpu['flags'])}; load average at the end {os.getloadavg()[0]:.1f}.  "]


def per_model_script(doc: str, script: str, measure: Callable[[str, int, Path], dict], runs: int, results: Path,
                     models: tuple[str, ...] = ("efficientnet-lite0", "minilm")) -> tuple[str, dict, int]:
    """The shared main() of a per-model profiling script (bench/kernel_split.py, bench/signedness.py): parse
    `--models` and `--runs`, call `measure(model, runs, work folder)` per model, write {"command", "models"} to
    `results`; returns (command, {model: measurement}, runs)."""
    import argparse
    import json
    import sys
    import tempfile

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(models))
    ap.add_argument("--runs", type=int, default=runs)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix=f"lowbit-{Path(script).stem}-"))
    out = {m: measure(m, args.runs, work / m) for m in args.models}
    command = f"python {script} " + " ".join(sys.argv[1:])
    results.write_text(json.dumps({"command": command, "models": out}, indent=1))
    return command, out, args.runs
