"""fp32 ONNX export (dynamic batch axis); onnxruntime sessions and readers for the ONNX variants."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from bench.common import Batch, Runner

log = logging.getLogger(__name__)
FP32_ONNX = "fp32.onnx"
ONNX_OUTPUT_PREFIX = "output_"


def export_fp32(task, workdir: Path) -> Path:
    """Export task.model to workdir/fp32.onnx once (dynamo exporter, dynamic batch/sequence axes)."""
    path = workdir / FP32_ONNX
    if path.exists():
        return path
    workdir.mkdir(parents=True, exist_ok=True)
    tmp = workdir / f"tmp-{FP32_ONNX}"
    # The task's output names can clash with value names inside the exported graph (MiniLM's "embedding"):
    # the ONNX outputs get a prefix; runners take the first output anyway.
    outputs = {name: ONNX_OUTPUT_PREFIX + name for name in task.output_names}
    axes = {outputs.get(name, name): spec for name, spec in task.dynamic_axes.items()}
    start = time.perf_counter()
    torch.onnx.export(
        task.model.eval(),
        tuple(task.example_inputs),
        str(tmp),
        input_names=list(task.input_names),
        output_names=list(outputs.values()),
        dynamic_axes=axes,
        dynamo=True,
        optimize=True,
        external_data=False,
    )
    tmp.replace(path)
    log.info("exported %s to ONNX in %.1f s", task.name, time.perf_counter() - start)
    return path


def feeds(session_inputs: list[str], input_names: tuple[str, ...], batch: Batch) -> dict[str, np.ndarray]:
    """onnxruntime feed dict: the task's positional batch matched by name to the session's inputs."""
    by_name = dict(zip(input_names, batch, strict=True))
    return {name: by_name[name].numpy() for name in session_inputs}


def session(path: Path, threads: int):
    """A CPU session with fixed threads and no spinning (idle spinning distorts alternated timings)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_runner(path: Path, input_names: tuple[str, ...]):
    """Runner factory for an ONNX file: one session per thread count, created on first use."""
    cache: dict[int, object] = {}

    def make(threads: int) -> Runner:
        if threads not in cache:
            cache[threads] = session(path, threads)
        sess = cache[threads]
        names = [i.name for i in sess.get_inputs()]

        def run(*batch: torch.Tensor) -> np.ndarray:
            return sess.run(None, feeds(names, input_names, batch))[0]

        return run

    return make


class CalibReader:
    """onnxruntime CalibrationDataReader over the task's calibration batches (same batches as every peer)."""

    def __init__(self, path: Path, input_names: tuple[str, ...], calib: list[Batch]) -> None:
        import onnx

        graph_inputs = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
        self._names = graph_inputs
        self._input_names = input_names
        self._calib = calib
        self._it: Iterator[Batch] = iter(calib)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._it, None)
        return None if batch is None else feeds(self._names, self._input_names, batch)

    def rewind(self) -> None:
        self._it = iter(self._calib)
