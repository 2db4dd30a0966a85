"""Layer parity: each activation quantizer of the simulation against onnxruntime, fed the runtime's own inputs.

    result = layer_parity(qmodel, "model.onnx", batch)
    result.worst, result.median, result.rows  # share of integer codes equal to onnxruntime's, per quantizer

The end-to-end parity (`deploy.parity`) of a deep model is bounded by compounding: a code that lies within an ulp
of a rounding boundary flips between two float orders of rounding (the simulation's float convolution against the
kernel's int32 accumulation and float requantization), each flip moves the next layer's sums by a whole input step,
and the share of differing codes grows with depth. That says nothing about whether one exported op computes what
its simulated layer does. Here onnxruntime runs once with the output of every activation QuantizeLinear exposed (its
codes), then the simulation runs with every such quantizer returning the runtime's codes instead of its own
(teacher forcing): the codes the simulation computes at a quantizer then come from exactly the inputs the runtime's
kernel had, and their agreement measures that layer's arithmetic alone.

A QuantizeLinear is matched to its quantizer's call by its scale (bit for bit; codes are compared about each side's
own zero point, as the export may move a signed grid to uint8); calls sharing a scale (a concat's inputs share one
quantizer) are matched in graph order when the file has as many QuantizeLinear nodes with that scale. A call left
without a match, or whose tensor has another shape in the file, is neither forced nor scored (`unmatched`).
Exposing the codes as outputs must not change the runtime's fusions: `output_unchanged` checks that the model's
output is bit-identical with and without them.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import fx

from lowbit.graph.quantizers import ActQuantizer


@dataclass
class LayerParity:
    """Per matched quantizer (graph order): share of codes equal to the runtime's, and the largest gap in steps."""

    rows: list[dict] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)
    output_unchanged: bool = True

    @property
    def worst_row(self) -> dict | None:
        return min(self.rows, key=lambda r: r["equal"], default=None)

    @property
    def worst(self) -> float:
        return self.worst_row["equal"] if self.rows else float("nan")

    @property
    def median(self) -> float:
        return statistics.median(r["equal"] for r in self.rows) if self.rows else float("nan")

    def to_json(self) -> dict:
        worst = self.worst_row
        return {"quantizers": len(self.rows), "worst_equal": self.worst, "median_equal": self.median,
                "worst_quantizer": worst["quantizer"] if worst else None, "unmatched": self.unmatched,
                "output_unchanged": self.output_unchanged}


def _per_tensor(q: ActQuantizer) -> tuple[float, int] | None:
    """(scale, zero point) of a static per-tensor quantizer, else None."""
    if not q.enabled or q.dynamic or q.kept_float or q.qparams is None or q.qparams.scale.numel() != 1:
        return None
    return float(q.qparams.scale.reshape(-1)[0]), int(q.qparams.zero_point.reshape(-1)[0])


def _constants(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            values[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return values


def _quantize_outputs(graph) -> dict[float, list[tuple[str, int, int]]]:
    """scale -> [(output name, element type, zero point)] of the per-tensor QuantizeLinear nodes."""
    from onnx import helper

    consts, found = _constants(graph), {}
    for n in graph.node:
        if n.op_type != "QuantizeLinear" or len(n.input) < 3 or n.input[1] not in consts or n.input[2] not in consts:
            continue
        scale, zp = consts[n.input[1]], consts[n.input[2]]
        if scale.size != 1:
            continue
        key = float(np.float32(scale.reshape(-1)[0]))
        found.setdefault(key, []).append((n.output[0], helper.np_dtype_to_tensor_dtype(zp.dtype),
                                          int(zp.reshape(-1)[0])))
    return found


class _Forced(fx.Interpreter):
    """The simulation, with each forced quantizer returning the runtime's codes after scoring its own."""

    def __init__(self, gm: fx.GraphModule, forced: dict[fx.Node, tuple[np.ndarray, float, int, int]]) -> None:
        super().__init__(gm)
        self.forced, self.rows, self.unmatched = forced, [], []

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if n not in self.forced:
            return out
        codes, scale, zp, their_zp = self.forced[n]
        theirs = torch.from_numpy(codes.astype(np.float32)) - their_zp + zp
        if tuple(theirs.shape) != tuple(out.shape):
            self.unmatched.append(f"{n.name} (shape {tuple(codes.shape)} in the file, {tuple(out.shape)} here)")
            return out
        mine = torch.round(out.float() / scale) + zp
        gap = (mine - theirs).abs()
        self.rows.append({"quantizer": n.name, "elements": gap.numel(),
                          "equal": float((gap == 0).float().mean()), "max_steps": float(gap.max())})
        return ((theirs - zp) * scale).to(out.dtype)


def layer_parity(qmodel, path: str | Path, batch: tuple, threads: int = 1) -> LayerParity:
    """Run the exported model `path` (onnxruntime, optimizations as deployed) and the simulation on `batch` with
    teacher forcing at every activation quantizer (module docstring)."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load(str(path))
    by_key = _quantize_outputs(proto.graph)
    gm = qmodel.graph_module
    calls: dict[float, list[tuple[fx.Node, int]]] = {}  # scale -> the quantizer calls with it, in graph order
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), ActQuantizer):
            qp = _per_tensor(gm.get_submodule(n.target))
            if qp is not None:
                calls.setdefault(qp[0], []).append((n, qp[1]))
    result, exposed = LayerParity(), {}
    for scale, nodes in calls.items():
        outputs = by_key.get(scale, [])
        if len(outputs) == len(nodes):
            exposed.update({n: (*out, scale, zp) for (n, zp), out in zip(nodes, outputs, strict=True)})
        elif outputs:
            result.unmatched += [f"{n.name} ({len(nodes)} calls, {len(outputs)} QuantizeLinear nodes with its scale)"
                                 for n, _ in nodes]
    # a quantizer the export removed (nothing read it) has no QuantizeLinear: neither forced nor listed
    present = {o.name for o in proto.graph.output}
    for name, elem, *_ in exposed.values():
        if name not in present:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    plain = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: t.numpy() for i, t in zip(plain.get_inputs(), batch, strict=True)}
    session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = dict(zip(names, session.run(None, feeds), strict=True))
    first = plain.get_outputs()[0].name
    result.output_unchanged = bool(np.array_equal(plain.run([first], feeds)[0], values[first]))
    forced = {n: (values[name], scale, zp, their_zp) for n, (name, _, their_zp, scale, zp) in exposed.items()}
    interp = _Forced(gm, forced)
    with torch.inference_mode():
        interp.run(*batch)
    result.rows = interp.rows
    result.unmatched += interp.unmatched
    return result
