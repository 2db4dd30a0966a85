"""Quantized embedding tables in ONNX: integer initializers, only gathered rows dequantized, onnxruntime equal to
the simulation, and no float table after onnxruntime's own graph optimization (STYLE kind 5)."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import lowbit
from lowbit.config import QuantSpec
from lowbit.core import PerGroup, get_qtype
from lowbit.export import to_onnx
from lowbit.export.gather_nbits import gather_nbits
from lowbit.export.layout import deployable
from lowbit.export.nbits import pack_weight
from tests.graph.embedding_models import DIM, VOCAB, TiedEmbed, TinyEmbed, ids, seeded

W4_G16 = QuantSpec(get_qtype("int4"), PerGroup(16), symmetric=False)
W4A16 = lowbit.preset("w4a16", weight=W4_G16)  # weight-only linears as MatMulNBits (equal to the simulation)


def _session(path, optimized_copy=None):
    opts = ort.SessionOptions()
    if optimized_copy is not None:
        opts.optimized_model_filepath = str(optimized_copy)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run(path, x):
    sess = _session(path)
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})


def _initializers(model):
    return {i.name: (onnx.TensorProto.DataType.Name(i.data_type), tuple(i.dims)) for i in model.graph.initializer}


def _table_sized_floats(model):
    return [i.name for i in model.graph.initializer
            if i.data_type == onnx.TensorProto.FLOAT and np.prod(i.dims) >= VOCAB * DIM // 4]


def _export(qm, tmp_path, name):
    return to_onnx(qm, ids(1, batch=2, t=5)[0], tmp_path / name)


def _check_parity(qm, path, exact_rows=True):
    x = ids(1, batch=4, t=9, seed=11)[0][0]
    out, rows = _run(path, x)
    sim_out, sim_rows = (t.detach().numpy() for t in qm(x))
    np.testing.assert_allclose(rows, sim_rows, atol=1e-6 if exact_rows else 1e-5, rtol=0)
    np.testing.assert_allclose(out, sim_out, atol=1e-5, rtol=0)


def test_per_row_int8_table_is_an_int8_initializer_gathered_then_scaled(tmp_path):
    qm = lowbit.quantize(seeded(TinyEmbed), ids(), W4A16.with_embeddings())
    path = _export(qm, tmp_path, "emb.onnx")
    model = onnx.load(str(path))
    assert _initializers(model)["lowbit_emb_wcodes"] == ("INT8", (VOCAB, DIM))
    assert _table_sized_floats(model) == []
    gather = next(n for n in model.graph.node if n.op_type == "Gather" and n.input[0] == "lowbit_emb_wcodes")
    assert [n.op_type for n in model.graph.node if gather.output[0] in n.input] == ["Cast"]
    _check_parity(qm, path)
    _session(path, tmp_path / "optimized.onnx")  # what onnxruntime keeps in memory after its optimizations
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert _initializers(optimized)["lowbit_emb_wcodes"] == ("INT8", (VOCAB, DIM))
    assert _table_sized_floats(optimized) == [], "onnxruntime folded the table back into float"


def test_quantized_table_shrinks_the_file(tmp_path):
    plain = _export(lowbit.quantize(seeded(TinyEmbed), ids(), W4A16), tmp_path, "plain.onnx")
    quant = _export(lowbit.quantize(seeded(TinyEmbed), ids(), W4A16.with_embeddings()), tmp_path, "emb.onnx")
    saved = plain.stat().st_size - quant.stat().st_size
    assert saved >= VOCAB * DIM * 3 - VOCAB * 4 - 2_000  # 4 -> 1 byte per value, one fp32 scale per row


def test_per_group_int4_table_becomes_gather_block_quantized(tmp_path):
    qm = lowbit.quantize(seeded(TinyEmbed), ids(), W4A16.with_embeddings(W4_G16))
    path = _export(qm, tmp_path, "emb4.onnx")
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node].count("GatherBlockQuantized") == 1
    assert _initializers(model)["lowbit_emb_nb"] == ("UINT8", (VOCAB, DIM // 16, 8))  # two codes per byte
    assert _table_sized_floats(model) == []
    _check_parity(qm, path)


def test_tied_int4_table_is_one_initializer_for_gather_and_matmul_nbits(tmp_path):
    qm = lowbit.quantize(seeded(TiedEmbed), ids(), W4A16.with_embeddings())
    path = _export(qm, tmp_path, "tied4.onnx")
    model = onnx.load(str(path))
    readers = {n.op_type for n in model.graph.node if "lowbit_head_nb" in n.input}
    assert readers == {"GatherBlockQuantized", "MatMulNBits"}
    tables = [n for n, (_, dims) in _initializers(model).items() if np.prod(dims) >= VOCAB * DIM // 2]
    assert tables == ["lowbit_head_nb"]  # the packed int4 table, stored once
    assert _table_sized_floats(model) == []
    _check_parity(qm, path)


def test_tied_int8_table_is_one_initializer_for_gather_and_dequantize_linear(tmp_path):
    cfg, _ = deployable(lowbit.preset("w8a8"), saturating=True)
    qm = lowbit.quantize(seeded(TiedEmbed), ids(), cfg.with_embeddings())
    path = _export(qm, tmp_path, "tied8.onnx")
    model = onnx.load(str(path))
    readers = sorted(n.op_type for n in model.graph.node if "lowbit_head_wcodes" in n.input)
    assert readers == ["DequantizeLinear", "Gather"]
    assert _table_sized_floats(model) == []
    x = ids(1, batch=4, t=9, seed=11)[0][0]
    np.testing.assert_allclose(_run(path, x)[1], qm(x)[1].detach().numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("bits", [4, 8])
def test_gather_nbits_reference_equals_dequantized_rows(bits):
    g = torch.Generator().manual_seed(bits)
    qtype = get_qtype(f"int{bits}")
    codes = torch.randint(qtype.qmin, qtype.qmax + 1, (12, 32), generator=g, dtype=torch.int32)
    scale = torch.rand(12 * 2, generator=g) + 0.1
    zp = torch.randint(qtype.qmin, qtype.qmax + 1, (12 * 2,), generator=g, dtype=torch.int32)
    b, _, _ = pack_weight(codes, scale, zp, bits, 16, signed=True)
    off = 2 ** (bits - 1)
    z = (zp.reshape(12, 2, 1) + off).to(torch.uint8)
    rows = torch.tensor([[3, 0], [11, 3]])
    got = gather_nbits(b, scale.reshape(12, 2, 1), z, rows, bits, 16).flatten(-2)
    ref = ((codes.reshape(12, 2, 16) - zp.reshape(12, 2, 1)) * scale.reshape(12, 2, 1)).reshape(12, 32)[rows]
    assert torch.equal(got, ref.float())


def test_pt2e_program_gathers_int8_codes_and_equals_simulation():
    from lowbit.export.pt2e import to_exported_program

    qm = lowbit.quantize(seeded(TinyEmbed), ids(), W4A16.with_embeddings(W4_G16))  # per-group: plain ops here
    program = to_exported_program(qm, ids(1, batch=2, t=5)[0])
    tensors = {**dict(program.named_buffers()), **program.constants}
    assert any(t.dtype == torch.int8 and tuple(t.shape) == (VOCAB, DIM) for t in tensors.values())
    assert not any(t.is_floating_point() and t.numel() >= VOCAB * DIM for t in tensors.values())
    x = ids(1, batch=4, t=9, seed=2)[0][0]
    for got, want in zip(program.module()(x), qm(x), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
