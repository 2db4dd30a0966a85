"""bench/kernel_split.py's section: kernel kinds, the table beside onnxruntime's quantizer's file, and whether the
two int8 graphs run the same kernels."""

from bench.kernel_split import kind, model_lines


def test_kind_splits_depthwise_convs_and_groups_matmuls():
    assert kind("QLinearConv", 32) == "conv, depthwise/grouped"
    assert kind("Conv", 1) == "conv, other"
    assert kind("MatMulIntegerToFloat", 1) == kind("Gemm", 1) == "matmul/gemm"
    assert kind("BiasGelu", 1) == "BiasGelu"


def _result(peer_kernels):
    return {"fp32": {"conv, other": 300.0, "ReduceMean": 1.0}, "int8": {"conv, other": 100.0, "QuantizeLinear": 2.0},
            "ort-int8": {"conv, other": 110.0, "QuantizeLinear": 2.5},
            "int8 kernels": {"QLinearConv": 49, "QuantizeLinear": 1, "Transpose": 2}, "ort-int8 kernels": peer_kernels}


def test_model_lines_compare_with_the_peer_file():
    lines = model_lines("net", _result({"QLinearConv": 49, "QuantizeLinear": 2}))  # conversions do not count
    assert lines[0] == ("net: total 301.0 ms fp32, 102.0 ms int8 (2.95x); onnxruntime's quantizer's int8 file "
                        "112.5 ms (2.68x).")
    assert "| conv, other | 300.0 | 100.0 | 98% | 3.00x | 110.0 |" in lines
    assert "| ReduceMean | 1.0 | 0.0 | 0% |  |  |" in lines
    assert "Both int8 files run the same compute kernels: 49 QLinearConv." in lines
    other = model_lines("net", _result({"QLinearConv": 48, "Conv": 1, "QuantizeLinear": 1}))
    assert ("The int8 files run different compute kernels: lowbit's 49 QLinearConv; onnxruntime's quantizer's "
            "48 QLinearConv, 1 Conv.") in other


def test_model_lines_without_the_peer_file():
    r = _result({})
    del r["ort-int8"], r["int8 kernels"], r["ort-int8 kernels"]
    lines = model_lines("net", r)
    assert lines[0] == "net: total 301.0 ms fp32, 102.0 ms int8 (2.95x)."
    assert not any(line.startswith(("Both int8", "The int8")) for line in lines)
