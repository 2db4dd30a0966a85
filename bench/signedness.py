#!/usr/bin/env python
"""Which integer encoding onnxruntime runs fastest on this CPU: lowbit's export re-encoded three ways.

    .venv/bin/python bench/signedness.py [--models efficientnet-lite0 minilm] [--runs 7]

lowbit exports uint8 activations and int8 weights with zero point 0 (U8S8, `lowbit/export/layout.py`). The same
integers can be written two other ways that mean the same values: U8U8, the weights as uint8 with zero point 128
(w + 128), and S8S8, the activations as int8 with their zero point lowered by 128 (x - 128). Each picks a different
onnxruntime kernel family (U8S8 meets MLAS's symmetric-weight convolution and VNNI/AMX GEMMs; U8U8 its generic
kernels; S8S8 its signed ones), so timing the three files side by side on one CPU shows whether lowbit's choice is
still the fastest there. Each file is also run against the U8S8 one on the same batch: the largest output difference
says whether the kernel family computes the same result. Batch 32, one thread, alternated runs after a warm-up.
Writes results/signedness.json and the "Integer encodings in onnxruntime" section of BENCHMARKS.md.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import json  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import numpy_helper  # noqa: E402

from bench.common import per_model_script, provenance  # noqa: E402
from bench.markdown import write_section  # noqa: E402

SECTION = "## Integer encodings in onnxruntime (U8S8 against U8U8 and S8S8)"
# onnxruntime's QDQ propagation copies a QuantizeLinear across Reshape/Transpose with the uint8 output type of the
# original; with int8 zero points that copy fails type inference, so the S8S8 session runs without that transform
# (it only moves Q/DQ pairs, no kernel changes).
S8S8_DISABLED = ("QDQPropagationTransformer",)


def _zero_point(init: dict, node: onnx.NodeProto) -> np.ndarray | None:
    return numpy_helper.to_array(init[node.input[2]]) if len(node.input) > 2 and node.input[2] in init else None


def _new_initializer(model: onnx.ModelProto, name: str, value: np.ndarray) -> str:
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def weights_u8(model: onnx.ModelProto) -> onnx.ModelProto:
    """U8U8: every int8 weight DequantizeLinear (constant codes, zero point 0) as uint8 codes + 128, zero point 128."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    init = {i.name: i for i in model.graph.initializer}
    for k, node in enumerate(n for n in model.graph.node if n.op_type == "DequantizeLinear"):
        codes, zp = init.get(node.input[0]), _zero_point(init, node)
        if codes is None or zp is None or zp.dtype != np.int8 or (zp != 0).any():
            continue
        shifted = (numpy_helper.to_array(codes).astype(np.int16) + 128).astype(np.uint8)
        node.input[0] = _new_initializer(model, f"u8u8_codes_{k}", shifted)
        node.input[2] = _new_initializer(model, f"u8u8_zp_{k}", np.full(zp.shape, 128, np.uint8))
    return model


def activations_s8(model: onnx.ModelProto) -> onnx.ModelProto:
    """S8S8: every uint8 zero point of a QuantizeLinear/DequantizeLinear (the activations) lowered by 128 as int8."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    init = {i.name: i for i in model.graph.initializer}
    for k, node in enumerate(n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        zp = _zero_point(init, node)
        if zp is None or zp.dtype != np.uint8:
            continue
        node.input[2] = _new_initializer(model, f"s8s8_zp_{k}", (zp.astype(np.int16) - 128).astype(np.int8))
        for a in node.attribute:
            if a.name == "output_dtype":
                a.i = onnx.TensorProto.INT8
    return model


def sessions(model: onnx.ModelProto) -> dict:
    """One-thread onnxruntime sessions of the export and its two re-encodings, U8S8 first."""
    from bench.onnx_io import session

    return {"U8S8 (lowbit)": session(model.SerializeToString(), 1),
            "U8U8": session(weights_u8(model).SerializeToString(), 1),
            "S8S8": session(activations_s8(model).SerializeToString(), 1, disabled_optimizers=S8S8_DISABLED)}


def measure(name: str, runs: int, work: Path) -> dict:
    from bench.kernel_split import exports
    from bench.onnx_io import feeds
    from bench.timing import alternate

    task, batch, files = exports(name, work, fp32=False)
    runners = sessions(onnx.load(str(files["int8"])))
    first = next(iter(runners.values()))
    inputs = feeds([i.name for i in first.get_inputs()], task.input_names, batch)
    ref = first.run(None, inputs)[0]
    out = alternate({label: (lambda s=s: s.run(None, inputs)) for label, s in runners.items()}, runs, warmup=1)
    for label, s in runners.items():
        out[label]["max_abs_diff"] = float(np.abs(s.run(None, inputs)[0] - ref).max())
    print(name, json.dumps({k: (v["median_ms"], v["max_abs_diff"]) for k, v in out.items()}), flush=True)
    return out


def main() -> None:
    command, results, runs = per_model_script(__doc__, "bench/signedness.py", measure, 7,
                                              ROOT / "results" / "signedness.json")
    lines = [*provenance(command),
             "lowbit's int8 export (deployable layout, mse ranges) and two re-encodings of the same integers: "
             "U8U8 (weights + 128, zero point 128) and S8S8 (activations - 128). onnxruntime, batch 32, 1 thread, "
             f"median of {runs} alternated runs; largest output difference against the U8S8 file on the same "
             "batch.", "",
             "| model | encoding | ms | against U8S8 | largest output difference |", "|---|---|---|---|---|"]
    for model, r in results.items():
        base = r["U8S8 (lowbit)"]["median_ms"]
        for label, v in r.items():
            lines.append(f"| {model} | {label} | {v['median_ms']:.1f} | {v['median_ms'] / base:.2f}x | "
                         f"{v['max_abs_diff']:.3g} |")
    fastest = {m: min(r, key=lambda k: r[k]["median_ms"]) for m, r in results.items()}
    lines += ["", "Fastest here: " + "; ".join(f"{m} {k}" for m, k in fastest.items()) + "."]
    write_section(ROOT / "BENCHMARKS.md", SECTION, "\n".join(lines))


if __name__ == "__main__":
    main()
