"""Export a quantized model next to its fp32 original and measure both in onnxruntime: the real gain.

    result = deploy(float_model, qmodel, example_batch, "model.onnx", eval_batches, score)

Writes the int8 QDQ model and an fp32 ONNX reference (`<name>.fp32.onnx`), times both in onnxruntime (alternating,
medians, same batch, same threads), profiles the int8 one for its share of integer kernels (warning when float
kernels dominate), scores it on the evaluation batches and checks parity with the torch simulation: at the output
(`parity`), layer by layer, each quantizer fed the runtime's own inputs (`layer_parity.layer_parity`), and at the
output against the emulation of onnxruntime's integer arithmetic (`emulate.emulate_onnxruntime`; `parity_emulated`,
and `emulated_equal`: the share of output elements bit-identical).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lowbit.export.emulate import emulate_onnxruntime
from lowbit.export.layer_parity import layer_parity
from lowbit.export.onnx import strip_debug_info, to_onnx
from lowbit.export.profile import integer_share

log = logging.getLogger(__name__)
REPEATS = 10


class OrtModel:
    """An onnxruntime session called like the torch model (positional tensors in, one tensor out)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # fair alternating timings
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in self.session.get_inputs()]

    def feeds(self, batch) -> dict[str, np.ndarray]:
        return {n: t.numpy() for n, t in zip(self.names, batch, strict=True)}

    def __call__(self, *batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.session.run(None, self.feeds(batch))[0])


def export_fp32(model: torch.nn.Module, example: tuple, path: Path) -> Path:
    shapes = tuple({i: torch.export.Dim.AUTO for i in range(t.dim())} for t in example)
    import onnx

    program = torch.onnx.export(model.eval(), example, dynamo=True, dynamic_shapes=shapes, verbose=False)
    proto = program.model_proto
    strip_debug_info(proto)  # as the int8 file, so that sizes compare like for like
    onnx.save_model(proto, str(path))
    return path


def compare_latency(fp32: OrtModel, int8: OrtModel, batch, repeats: int = REPEATS) -> dict:
    """Median ms per batch of each session, timed alternately after one warm-up run of each."""
    times: dict[str, list[float]] = {"fp32": [], "int8": []}
    for sess in (fp32, int8):
        sess.session.run(None, sess.feeds(batch))
    for _ in range(repeats):
        for key, sess in (("fp32", fp32), ("int8", int8)):
            feeds = sess.feeds(batch)
            t0 = time.perf_counter()
            sess.session.run(None, feeds)
            times[key].append(time.perf_counter() - t0)
    fp32_ms, int8_ms = (1e3 * statistics.median(times[k]) for k in ("fp32", "int8"))
    return {"fp32_ms": fp32_ms, "int8_ms": int8_ms, "speedup": fp32_ms / int8_ms, "batch_size": len(batch[0]),
            "threads": 1, "repeats": repeats, "runtime": "onnxruntime"}


def parity(qmodel, runtime: Callable, batch) -> float:
    """Share of output elements of `runtime(*batch)` (an onnxruntime session, a compiled module: tensors or numpy
    arrays) within one step of an 8-bit grid spanning the simulation's output (issue 5's parity measure)."""
    with torch.inference_mode():
        sim = qmodel(*batch).float()
        got = torch.as_tensor(runtime(*batch)).float()
    step = (sim.max() - sim.min()) / 255
    return float(((got - sim).abs() <= step).float().mean())


def emulated_parity(qmodel, runtime: Callable, batch, nbits_compute: str = "float") -> dict:
    """`parity` of the runtime against the emulation of onnxruntime's integer arithmetic (`parity_emulated`) and the
    share of output elements the two compute bit for bit alike (`emulated_equal`)."""
    emulated = emulate_onnxruntime(qmodel, nbits_compute)(*batch).float()
    got = torch.as_tensor(runtime(*batch)).float()
    return {"parity_emulated": parity(lambda *_: emulated, lambda *_: got, batch),
            "emulated_equal": float((emulated == got).float().mean())}


def deploy(float_model, qmodel, example: tuple, path: str | Path, evals: Sequence[tuple] | None = None,
           score: Callable | None = None, nbits_compute: str = "float") -> dict:
    """Export (`nbits_compute`: see `to_onnx`), time against fp32 in onnxruntime, profile, score
    (`score(model) -> metrics`) and check parity."""
    path = Path(path)
    example = tuple(t[: max(2, min(len(t), 8))] for t in example)
    to_onnx(qmodel, example, path, nbits_compute=nbits_compute)
    fp32_path = export_fp32(float_model, example, path.with_suffix(".fp32.onnx"))
    fp32, int8 = OrtModel(fp32_path), OrtModel(path)
    batch = tuple(evals[0]) if evals else example
    share = integer_share(path, int8.feeds(batch), runs=2)
    out = int8(*batch)
    ran = lambda *_: out  # noqa: E731 - one onnxruntime run serves both parity measures
    out = {
        "path": str(path),
        "onnx_bytes": path.stat().st_size,
        "fp32_onnx_bytes": fp32_path.stat().st_size,
        "latency": compare_latency(fp32, int8, batch),
        "integer_share": share.to_json(),
        "parity_within_one_step": parity(qmodel, ran, batch),
        **emulated_parity(qmodel, ran, batch, nbits_compute),
        "layer_parity": layer_parity(qmodel, path, batch).to_json(),
    }
    warning = share.warning()
    if warning:
        log.warning(warning)
        out["warning"] = warning
    if score is not None:
        out["metrics"] = score(int8)
    return out
