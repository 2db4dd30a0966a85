"""fp32 ONNX export (dynamic batch and sequence axes); onnxruntime sessions and readers for the ONNX variants."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bench.common import Batch, Runner

log = logging.getLogger(__name__)
FP32_ONNX = "fp32.onnx"
ONNX_OUTPUT_PREFIX = "output_"
MIN_DYNAMIC_SIZE = 2  # torch.export specializes sizes 0 and 1


def export_inputs(task) -> tuple[torch.Tensor, ...]:
    """task.example_inputs grown (rows repeated) to at least MIN_DYNAMIC_SIZE along every dynamic axis.

    torch.export specializes any dimension whose example size is 0 or 1 to that constant: SmolLM2's example
    of batch 1 gave a graph whose attention reshapes were hard-wired to batch 1 (`[1, -1, 3, 64]`), so batches
    of 4 failed in onnxruntime with a broadcast error in the rotary-embedding Mul.
    """
    grown = []
    for name, t in zip(task.input_names, task.example_inputs, strict=True):
        for axis in task.dynamic_axes.get(name, {}):
            if t.shape[axis] < MIN_DYNAMIC_SIZE:
                reps = [1] * t.dim()
                reps[axis] = -(-MIN_DYNAMIC_SIZE // t.shape[axis])
                t = t.repeat(*reps)
        grown.append(t)
    return tuple(grown)


def dynamic_shapes(task) -> tuple[dict[int, object], ...]:
    """Dim.DYNAMIC on every axis of task.dynamic_axes, per input in positional order.

    Dim.DYNAMIC, unlike Dim.AUTO, makes torch.export fail if the model forces an axis to a constant; unlike a
    named Dim it accepts the bounds a model implies (BERT's position table: sequence <= 512).
    """
    return tuple(dict.fromkeys(task.dynamic_axes.get(name, {}), torch.export.Dim.DYNAMIC) for name in task.input_names)


def static_dynamic_axes(path: Path, task) -> list[str]:
    """Axes that task.dynamic_axes calls dynamic but that the ONNX file at `path` fixes to a number."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    axes = {i.name: i for i in graph.input}
    axes.update({o.name.removeprefix(ONNX_OUTPUT_PREFIX): o for o in graph.output})
    baked = []
    for name, spec in task.dynamic_axes.items():
        dims = axes[name].type.tensor_type.shape.dim
        baked += [f"{name}[{i}] = {dims[i].dim_value}" for i in spec if not dims[i].dim_param]
    return baked


def export_fp32(task, workdir: Path) -> Path:
    """Export task.model to workdir/fp32.onnx once (dynamo exporter, dynamic batch/sequence axes)."""
    path = workdir / FP32_ONNX
    if path.exists():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / f"tmp-{FP32_ONNX}"
    # The task's output names can clash with value names inside the exported graph (MiniLM's "embedding"):
    # the ONNX outputs get a prefix; runners take the first output anyway.
    outputs = [ONNX_OUTPUT_PREFIX + name for name in task.output_names]
    start = time.perf_counter()
    torch.onnx.export(
        task.model.eval(),
        export_inputs(task),
        str(tmp),
        input_names=list(task.input_names),
        output_names=outputs,
        dynamic_shapes=dynamic_shapes(task),
        dynamo=True,
        optimize=True,
        external_data=False,
    )
    baked = static_dynamic_axes(tmp, task)
    if baked:
        raise RuntimeError(f"{task.name}: the ONNX export fixed axes that should be dynamic: {', '.join(baked)}")
    tmp.replace(path)
    log.info("exported %s to ONNX in %.1f s", task.name, time.perf_counter() - start)
    return path


def feeds(session_inputs: list[str], input_names: tuple[str, ...], batch: Batch) -> dict[str, np.ndarray]:
    """onnxruntime feed dict: the task's positional batch matched by name to the session's inputs."""
    by_name = dict(zip(input_names, batch, strict=True))
    return {name: by_name[name].numpy() for name in session_inputs}


def session(path: Path | bytes, threads: int, optimize: bool = True, disabled_optimizers: tuple[str, ...] = (),
            spinning: bool = False):
    """A CPU session with fixed threads, for an ONNX file or a serialized model; `disabled_optimizers` names
    onnxruntime graph transforms to skip. `spinning`: onnxruntime's default, worker threads spin between parallel
    sections instead of sleeping (what a deployment gets; `bench.timing.alternate` leaves a gap between variants so
    that one variant's spinning threads do not steal the next one's cores); off by default here for the benches
    that time one session at a time beside other work.

    optimize=False turns every graph optimization off: a QDQ model then runs as float DequantizeLinear ->
    Conv/MatMul -> QuantizeLinear (quantization emulated in fp32) instead of being fused into int8 kernels.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    model = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=list(disabled_optimizers))


def ort_runner(path: Path, input_names: tuple[str, ...], optimize: bool = True):
    """Runner factory for an ONNX file: one session per thread count, created on first use, with onnxruntime's
    default thread spinning (as torch's OpenMP threads keep theirs in bench/run.py)."""
    cache: dict[int, object] = {}

    def make(threads: int) -> Runner:
        if threads not in cache:
            cache[threads] = session(path, threads, optimize, spinning=True)
        sess = cache[threads]
        names = [i.name for i in sess.get_inputs()]

        def run(*batch: torch.Tensor) -> np.ndarray:
            return sess.run(None, feeds(names, input_names, batch))[0]

        return run

    return make


def equal_batches(calib: list[Batch]) -> list[Batch]:
    """The same calibration rows in batches of one size: the gcd of the batch sizes (512 rows as 5 x 100 + 12
    become 128 x 4). onnxruntime's histogram collectors (Entropy, Percentile) stack each tensor's batches with
    np.asarray and fail on a shorter last batch."""
    size = math.gcd(*(len(batch[0]) for batch in calib))
    rows = [torch.cat(parts) for parts in zip(*calib, strict=True)]
    return [tuple(t[i : i + size] for t in rows) for i in range(0, len(rows[0]), size)]


class CalibReader:
    """onnxruntime CalibrationDataReader over the task's calibration batches (same rows as every peer).

    equal=True re-batches them with `equal_batches` (for onnxruntime's histogram calibrators).
    """

    def __init__(self, path: Path, input_names: tuple[str, ...], calib: list[Batch], equal: bool = False) -> None:
        import onnx

        graph_inputs = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
        self._names = graph_inputs
        self._input_names = input_names
        self._calib = equal_batches(calib) if equal else calib
        self._it: Iterator[Batch] = iter(self._calib)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else feeds(self._names, self._input_names, batch)

    def rewind(self) -> None:
        self._it = iter(self._calib)
