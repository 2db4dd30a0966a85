"""NNCF's weight compression needs MatMul weights as initializers: a tied weight read through Transpose is
folded into a transposed copy, and the model computes the same thing afterwards."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from bench.onnx_io import session
from bench.peers.nncf_onnx import fold_weight_transposes

VOCAB, HIDDEN = 11, 4


def tied_lm() -> onnx.ModelProto:
    """ids -> Gather(table) -> MatMul(Transpose(table)): an embedding and an LM head sharing one weight."""
    table = np.random.default_rng(0).standard_normal((VOCAB, HIDDEN)).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("Transpose", ["table"], ["table_t"], perm=[1, 0]),
        helper.make_node("MatMul", ["emb", "table_t"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tied",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["b"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["b", VOCAB])],
        [numpy_helper.from_array(table, "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_fold_unties_the_head_and_keeps_the_outputs(tmp_path) -> None:
    model = tied_lm()
    ids = {"ids": np.array([0, 3, 10], dtype=np.int64)}
    onnx.save(model, str(tmp_path / "a.onnx"))
    before = session(tmp_path / "a.onnx", 1).run(None, ids)[0]
    assert fold_weight_transposes(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Gather", "MatMul"]
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert inits["table_t"].shape == (HIDDEN, VOCAB) and np.array_equal(inits["table_t"], inits["table"].T)
    onnx.save(model, str(tmp_path / "b.onnx"))
    after = session(tmp_path / "b.onnx", 1).run(None, ids)[0]
    np.testing.assert_array_equal(after, before)
    assert fold_weight_transposes(model) == 0
