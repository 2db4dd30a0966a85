"""Proof of integer execution: run an exported model in onnxruntime with profiling and split the time between
integer kernels and float ones.

    share = integer_share("model.onnx", feeds)
    print(share.integer_fraction, share.float_nodes[:5])

onnxruntime's profiler records every kernel run with its op type (after graph optimization, so the fused
QLinearConv / MatMulIntegerToFloat / QGemm / MatMulNBits appear, not the QDQ pattern they came from).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Kernels that compute on integer codes (their inputs are quantized; accumulation in int32).
INTEGER_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat", "ConvInteger", "QGemm",
    "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul", "QLinearConcat", "QLinearAveragePool",
    "QLinearGlobalAveragePool", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearSoftmax", "QAttention",
    "MatMulNBits", "QLinearReduceMean", "QLinearWhere",
})
# Conversions between float and integer: neither compute kind, counted apart.
CONVERSION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
# Ops that are float compute kernels when they run (Conv, MatMul, Gemm on float inputs).
FLOAT_COMPUTE_OPS = frozenset({"Conv", "MatMul", "Gemm", "FusedConv", "FusedGemm", "FusedMatMul", "Attention"})


@dataclass
class IntegerShare:
    """Kernel time by kind, in microseconds summed over the profiled runs."""

    integer_us: float
    float_us: float
    conversion_us: float
    by_op: dict[str, float]
    float_nodes: list[tuple[str, str, float]] = field(default_factory=list)  # (node, op, us), slowest first

    @property
    def total_us(self) -> float:
        return self.integer_us + self.float_us + self.conversion_us

    @property
    def integer_fraction(self) -> float:
        return self.integer_us / self.total_us if self.total_us else 0.0

    @property
    def float_compute_nodes(self) -> list[tuple[str, str, float]]:
        """Float conv/matmul/gemm kernels: layers that onnxruntime did not fuse into an integer kernel."""
        return [n for n in self.float_nodes if n[1] in FLOAT_COMPUTE_OPS]

    def warning(self) -> str:
        """A warning when float kernels take more time than integer ones, saying where that float time goes: conv
        and matmul layers that onnxruntime did not fuse into integer kernels (named, slowest first), and ops that
        have no integer kernel in onnxruntime (GELU, LayerNorm, Softmax, float adds: by op type). The first is
        fixable in the export; the second is the float share every quantized model of that architecture keeps."""
        if self.float_us <= self.integer_us:
            return ""
        msg = (f"float kernels take {self.float_us / self.total_us:.0%} of the time and integer kernels "
               f"{self.integer_fraction:.0%}")
        compute = self.float_compute_nodes
        if compute:
            names = ", ".join(f"{n} ({op})" for n, op, _ in compute[:8])
            msg += (f"; onnxruntime did not fuse these layers into integer kernels "
                    f"({sum(t for *_, t in compute) / self.total_us:.0%} of the time): {names}")
        other: dict[str, float] = defaultdict(float)
        for _, op, t in self.float_nodes:
            if op not in FLOAT_COMPUTE_OPS:
                other[op] += t
        if other:
            top = sorted(other.items(), key=lambda kv: -kv[1])[:5]
            msg += "; ops with no integer kernel take " + ", ".join(f"{op} {t / self.total_us:.0%}" for op, t in top)
        return msg

    def to_json(self) -> dict:
        return {"integer_fraction": self.integer_fraction, "integer_us": self.integer_us, "float_us": self.float_us,
                "conversion_us": self.conversion_us, "by_op": self.by_op,
                "float_compute_nodes": [n for n, _, _ in self.float_compute_nodes]}


def integer_share(path: str | os.PathLike, feeds: dict[str, np.ndarray], runs: int = 3,
                  threads: int = 1) -> IntegerShare:
    """Profile `runs` runs of the model on `feeds` (after one warm-up) and split kernel time by kind."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="lowbit-profile-") as tmp:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tmp) / "ort")
        opts.intra_op_num_threads = threads
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        sess.run(None, feeds)
        for _ in range(runs):
            sess.run(None, feeds)
        events = json.loads(Path(sess.end_profiling()).read_text())
    return _split(events, skip_first_run=True)


def _split(events: list[dict], skip_first_run: bool) -> IntegerShare:
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[tuple[str, str], float] = defaultdict(float)
    runs_seen = 0
    for ev in events:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            runs_seen += 1
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        if skip_first_run and runs_seen == 0:
            continue  # the warm-up run (its model_run event comes after its node events)
        op = ev.get("args", {}).get("op_name", "?")
        by_op[op] += float(ev.get("dur", 0))
        by_node[(ev["name"].removesuffix("_kernel_time"), op)] += float(ev.get("dur", 0))
    integer = sum(t for op, t in by_op.items() if op in INTEGER_OPS)
    conversion = sum(t for op, t in by_op.items() if op in CONVERSION_OPS)
    flt = sum(by_op.values()) - integer - conversion
    nodes = sorted(((n, op, t) for (n, op), t in by_node.items()
                    if op not in INTEGER_OPS and op not in CONVERSION_OPS), key=lambda r: -r[2])
    return IntegerShare(integer, flt, conversion, dict(sorted(by_op.items(), key=lambda kv: -kv[1])), nodes)
