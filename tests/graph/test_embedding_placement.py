"""Embedding tables quantized weight-only in the simulation (QuantConfig.embedding), tied tables included."""

import json

import pytest
import torch

import lowbit
from lowbit.config import EMBEDDING_INT8, LayerRule, QuantConfig, QuantSpec
from lowbit.core import PerGroup, get_qtype
from tests.graph.embedding_models import DIM, VOCAB, TiedEmbed, TinyEmbed, ids, seeded

W4_G16 = QuantSpec(get_qtype("int4"), PerGroup(16), symmetric=False)


def _per_row_int8(table: torch.Tensor) -> torch.Tensor:
    """Hand-written reference: one scale max|row| / 127 per row, codes round-half-even, clamped."""
    s = table.abs().amax(dim=1, keepdim=True) / 127
    return torch.clamp(torch.round(table / s), -128, 127) * s


def test_gathered_rows_are_the_dequantized_per_row_int8_table():
    model = seeded(TinyEmbed)
    qm = lowbit.quantize(model, ids(), lowbit.preset("w8a16").with_embeddings())
    x = ids(1, batch=4, t=9, seed=3)[0][0]
    _, rows = qm(x)
    ref = _per_row_int8(model.emb.weight.detach())[x]
    assert torch.equal(rows, ref)
    assert not torch.equal(rows, model.emb.weight.detach()[x])  # quantization changed something
    info = qm.embeddings["emb"]
    assert info.weight_quantizer and qm.graph_module.get_submodule(info.weight_quantizer).spec == EMBEDDING_INT8
    assert qm.summary()["embeddings"] == {"emb": "quantized"}


def test_without_the_switch_tables_stay_float():
    model = seeded(TinyEmbed)
    qm = lowbit.quantize(model, ids(), "w8a16")
    x = ids(1, seed=4)[0][0]
    assert torch.equal(qm(x)[1], model.emb.weight.detach()[x])
    assert qm.embeddings == {} and qm.quantized_embeddings() == []


def test_table_counted_at_8_bits_in_weight_bytes():
    qm = lowbit.quantize(seeded(TinyEmbed), ids(), lowbit.preset("w8a16").with_embeddings())
    plain = lowbit.quantize(seeded(TinyEmbed), ids(), "w8a16")
    saved = plain.weight_bytes()["total"] - qm.weight_bytes()["total"]
    assert saved == VOCAB * DIM * 4 - (VOCAB * DIM + VOCAB * 4)  # fp32 table -> int8 codes + one fp32 scale per row


def test_keep_float_rule_and_rule_spec_apply_to_embeddings():
    cfg = lowbit.preset("w8a16").with_embeddings().with_rules(LayerRule(pattern="emb", keep_float=True, reason="t"))
    qm = lowbit.quantize(seeded(TinyEmbed), ids(), cfg)
    assert qm.embeddings["emb"].kept_float == "t" and not qm.embeddings["emb"].weight_quantizer
    cfg = lowbit.preset("w8a16").with_embeddings().with_rules(LayerRule(pattern="emb", weight=W4_G16))
    qm = lowbit.quantize(seeded(TinyEmbed), ids(), cfg)
    wq = qm.graph_module.get_submodule(qm.embeddings["emb"].weight_quantizer)
    assert wq.qparams.qtype.name == "int4" and wq.qparams.scale.numel() == VOCAB * DIM // 16
    with pytest.raises(ValueError, match="matches no layer"):  # without the switch, embeddings are not layers
        lowbit.quantize(seeded(TinyEmbed), ids(), lowbit.preset("w8a16").with_rules(LayerRule(pattern="emb")))


def test_tied_table_is_quantized_once_by_its_linear_layer():
    model = seeded(TiedEmbed)
    cfg = lowbit.preset("w4a16", weight=W4_G16).with_embeddings()
    qm = lowbit.quantize(model, ids(), cfg)
    head_wq = qm.layers["head"].weight_quantizer
    assert qm.embeddings["emb"].weight_quantizer == head_wq and "tied to head" in qm.embeddings["emb"].note
    x = ids(1, seed=5)[0][0]
    w_hat = qm.graph_module.get_submodule(head_wq).w_hat
    assert torch.equal(qm(x)[1], w_hat[x])  # the gather reads the head's int4 table
    assert not torch.equal(w_hat, model.emb.weight.detach())
    once = qm.weight_bytes()
    assert once["float"] < VOCAB * DIM * 4 / 10  # no float copy of the table is counted


def test_config_json_round_trip_and_old_configs():
    cfg = lowbit.preset("w4a16").with_embeddings(W4_G16)
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    old = json.loads(lowbit.preset("w8a8").to_json())
    del old["embedding"]  # written before the field existed
    assert QuantConfig.from_json(json.dumps(old)) == lowbit.preset("w8a8")
