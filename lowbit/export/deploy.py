"""Export a quantized model next to its fp32 original and measure both in onnxruntime: the real gain.

    result = deploy(float_model, qmodel, example_batch, "model.onnx", eval_batches, score)

Writes the int8 QDQ model and an fp32 ONNX reference (`<name>.fp32.onnx`), times both in onnxruntime (alternating,
medians, same batch, same threads), profiles the int8 one for its share of integer kernels (warning when float
kernels dominate), scores it on the evaluation batches and checks parity with the torch simulation: at the output
(`parity`), layer by layer, each quantizer fed the runtime's own inputs (`layer_parity.layer_parity`), and at the
output against the emulation of onnxruntime's integer arithmetic (`emulate.emulate_onnxruntime`; `parity_emulated`,
and `emulated_equal`: the share of output elements bit-identical), and the simulation against itself with one ulp
moved at every quantizer's input (`rounding_parity`, `parity_one_ulp`): how far float rounding alone moves
this model's output, the scale to read the other parities on.

`nbits_compute="fastest"` (per-group weight-only models, MatMulNBits): exports the file with each compute type
onnxruntime offers, float inputs (W4A16, as simulated) and int8 inputs per block (dynamic W4A8), times both on this
CPU and keeps the faster; the result's `nbits_compute` names the choice and both timings. Which one wins depends
on the CPU and the weights (on an AMD EPYC int8 compute ran 1.21x (int4) and 1.50x (int8 weights) over fp32; on
an Intel Xeon with AMX float compute is the faster for int4 weights, int8 compute for int8 weights: BENCHMARKS.md,
"MatMulNBits compute type"), and int8 compute moves the outputs a little (SmolLM2 perplexity 31.82 -> 32.07).
"""

from __future__ import annotations

import contextlib
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
FASTEST = "fastest"


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


def median_ms(sessions: dict[str, OrtModel], batch, repeats: int = REPEATS) -> dict[str, float]:
    """Median ms per batch of each session, timed alternately after one warm-up run of each."""
    times: dict[str, list[float]] = {key: [] for key in sessions}
    for sess in sessions.values():
        sess.session.run(None, sess.feeds(batch))
    for _ in range(repeats):
        for key, sess in sessions.items():
            feeds = sess.feeds(batch)
            t0 = time.perf_counter()
            sess.session.run(None, feeds)
            times[key].append(time.perf_counter() - t0)
    return {key: 1e3 * statistics.median(t) for key, t in times.items()}


def compare_latency(fp32: OrtModel, int8: OrtModel, batch, repeats: int = REPEATS) -> dict:
    """Median ms per batch of the fp32 and the int8 session (`median_ms`)."""
    ms = median_ms({"fp32": fp32, "int8": int8}, batch, repeats)
    return {"fp32_ms": ms["fp32"], "int8_ms": ms["int8"], "speedup": ms["fp32"] / ms["int8"],
            "batch_size": len(batch[0]), "threads": 1, "repeats": repeats, "runtime": "onnxruntime"}


def _has_matmul_nbits(path: Path) -> bool:
    import onnx

    return any(n.op_type == "MatMulNBits" for n in onnx.load(str(path), load_external_data=False).graph.node)


def fastest_nbits_compute(qmodel, example: tuple, path: Path, batch, repeats: int = REPEATS, **export) -> dict:
    """Write `path` with the MatMulNBits compute type onnxruntime runs faster on this CPU (module docstring):
    {"chosen": "float" | "int8", "ms": {compute: median ms on `batch`}}; a file without MatMulNBits keeps "float"
    (nothing to choose) with "ms" empty. `export`: further `to_onnx` arguments (names, dynamic shapes)."""
    path = Path(path)
    to_onnx(qmodel, example, path, nbits_compute="float", **export)
    if not _has_matmul_nbits(path):
        return {"chosen": "float", "ms": {}, "reason": "no MatMulNBits in the file"}
    other = path.with_name(path.stem + ".int8-compute" + path.suffix)
    to_onnx(qmodel, example, other, nbits_compute="int8", **export)
    ms = median_ms({"float": OrtModel(path), "int8": OrtModel(other)}, batch, repeats)
    chosen = min(ms, key=ms.get)
    if chosen == "int8":
        other.replace(path)
    else:
        other.unlink()
    log.info("MatMulNBits compute: float %.1f ms, int8 %.1f ms per batch on this CPU; kept %s", ms["float"],
             ms["int8"], chosen)
    return {"chosen": chosen, "ms": ms}


def parity(qmodel, runtime: Callable, batch) -> float:
    """Share of output elements of `runtime(*batch)` (an onnxruntime session, a compiled module: tensors or numpy
    arrays) within one step of an 8-bit grid spanning the simulation's output (issue 5's parity measure)."""
    with torch.inference_mode():
        sim = qmodel(*batch).float()
        got = torch.as_tensor(runtime(*batch)).float()
    step = (sim.max() - sim.min()) / 255
    return float(((got - sim).abs() <= step).float().mean())


def _grid_quantizers(qmodel) -> list:
    """The activation quantizers that put values on an integer grid (enabled, not kept float)."""
    from lowbit.graph.quantizers import ActQuantizer

    return [m for m in qmodel.modules() if isinstance(m, ActQuantizer) and m.enabled and not m.kept_float]


@contextlib.contextmanager
def one_ulp_nudge(qmodel, seed: int = 0):
    """Within the block, the input of every enabled activation quantizer of `qmodel` moves one float ulp up or down
    at random (seeded) on each call: the simulation as a runtime computing in another float order might see it."""
    gen = torch.Generator().manual_seed(seed)

    def nudge(_module, args):
        x = args[0]
        if not x.is_floating_point():
            return None
        up = torch.rand(x.shape, generator=gen) < 0.5
        toward = torch.where(up, torch.tensor(float("inf"), dtype=x.dtype), torch.tensor(float("-inf"), dtype=x.dtype))
        return (torch.nextafter(x, toward), *args[1:])

    hooks = [q.register_forward_pre_hook(nudge) for q in _grid_quantizers(qmodel)]
    try:
        yield qmodel
    finally:
        for h in hooks:
            h.remove()


def rounding_parity(qmodel, batch, seed: int = 0) -> float | None:
    """`parity` of the simulation against itself under `one_ulp_nudge`: what a runtime whose float arithmetic (sums
    in another order, fused kernels) differs from torch's by as little as one ulp where values meet the integer
    grid could reach. A code within an ulp of a rounding boundary flips, the flip moves the next layer's sums, and a
    deep model compounds the flips; where this parity is already below the 99.9% target, no runtime that does not
    reproduce torch's float rounding bit for bit can meet it, and the output parity measures that sensitivity
    rather than the export. None for a model without an enabled activation quantizer (nothing to flip)."""
    if not _grid_quantizers(qmodel):
        return None
    with torch.inference_mode():
        reference = qmodel(*batch).float()
        with one_ulp_nudge(qmodel, seed):
            nudged = qmodel(*batch).float()
    return parity(lambda *_: reference, lambda *_: nudged, batch)


def emulated_parity(qmodel, runtime: Callable, batch, nbits_compute: str = "float") -> dict:
    """`parity` of the runtime against the emulation of onnxruntime's integer arithmetic (`parity_emulated`) and the
    share of output elements the two compute bit for bit alike (`emulated_equal`)."""
    emulated = emulate_onnxruntime(qmodel, nbits_compute)(*batch).float()
    got = torch.as_tensor(runtime(*batch)).float()
    return {"parity_emulated": parity(lambda *_: emulated, lambda *_: got, batch),
            "emulated_equal": float((emulated == got).float().mean())}


def deploy(float_model, qmodel, example: tuple, path: str | Path, evals: Sequence[tuple] | None = None,
           score: Callable | None = None, nbits_compute: str = "float") -> dict:
    """Export (`nbits_compute`: see `to_onnx`, or "fastest": the faster one on this CPU, see the module
    docstring), time against fp32 in onnxruntime, profile, score (`score(model) -> metrics`) and check parity."""
    path = Path(path)
    example = tuple(t[: max(2, min(len(t), 8))] for t in example)
    batch = tuple(evals[0]) if evals else example
    choice = None
    if nbits_compute == FASTEST:
        choice = fastest_nbits_compute(qmodel, example, path, batch)
        nbits_compute = choice["chosen"]
    else:
        to_onnx(qmodel, example, path, nbits_compute=nbits_compute)
    fp32_path = export_fp32(float_model, example, path.with_suffix(".fp32.onnx"))
    fp32, int8 = OrtModel(fp32_path), OrtModel(path)
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
        "parity_one_ulp": rounding_parity(qmodel, batch),
        **emulated_parity(qmodel, ran, batch, nbits_compute),
        "layer_parity": layer_parity(qmodel, path, batch).to_json(),
    }
    if choice is not None:
        out["nbits_compute"] = choice
    warning = share.warning()
    if warning:
        log.warning(warning)
        out["warning"] = warning
    if score is not None:
        out["metrics"] = score(int8)
    return out
