"""lowbit.save / lowbit.load: exact round trips, packed codes, atomic writes and the errors a bad folder gets."""

import json
import math
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import lowbit
import lowbit.zoo
from lowbit.checkpoint import CheckpointError, files
from lowbit.checkpoint.codes import code_layout, decode_codes, decode_qparams, encode_codes, encode_qparams
from lowbit.config import LayerRule, QuantSpec
from lowbit.core.granularity import MXBlock, PerChannel, PerGroup, PerVector
from lowbit.core.primitives import quantize as int_codes
from lowbit.core.qparams import QParams, double_quantize
from lowbit.core.qtype import QTYPES, get_qtype
from tests.graph.models import TinyAttention, TinyCNN, images, tokens, trained_bn

torch.set_num_threads(1)


def _spec(qtype, gran, symmetric=True):
    return QuantSpec(get_qtype(qtype), gran, symmetric)


CONFIGS = {
    "w8a8": lambda: lowbit.preset("w8a8"),
    "w4a8": lambda: lowbit.preset("w4a8"),
    "w4a16-g8": lambda: lowbit.preset("w4a16", weight=_spec("int4", PerGroup(8), symmetric=False)),
    "w2a8": lambda: lowbit.preset("w8a8", weight=_spec("int2", PerChannel(0))),
    "binary-a8": lambda: lowbit.preset("w8a8", weight=_spec("binary", PerChannel(0))),
}
MODELS = {
    "cnn": (lambda seed: trained_bn(_seeded(TinyCNN, seed), seed), images),
    "attention": (lambda seed: _seeded(TinyAttention, seed), tokens),
}


def _seeded(cls, seed):
    torch.manual_seed(seed)
    return cls()


def _outputs(model, batches):
    with torch.no_grad():
        return [model(*b) for b in batches]


def _same(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("config", sorted(CONFIGS))
@pytest.mark.parametrize("model", sorted(MODELS))
def test_round_trip_is_exact_and_weights_come_from_the_file(tmp_path, model, config):
    make, data = MODELS[model]
    batches = data()
    qmodel = lowbit.quantize(make(0), batches, CONFIGS[config]())
    lowbit.save(qmodel, tmp_path / "ckpt")
    other = make(1)  # another initialisation: every weight must come from the file
    assert not _same(_outputs(other, batches), _outputs(make(0), batches))
    loaded = lowbit.load(tmp_path / "ckpt", other)
    assert _same(_outputs(loaded, batches), _outputs(qmodel, batches))
    assert loaded.summary()["kept_float"] == qmodel.summary()["kept_float"]
    for layer in [i for i in loaded.quantized_layers() if i.weight_quantizer]:  # float weights: dequantized codes
        w_hat = loaded.graph_module.get_submodule(layer.weight_quantizer).w_hat
        assert torch.equal(loaded.weight_of(layer), w_hat)


@pytest.mark.parametrize("config", ["w4a8", "w2a8", "binary-a8"])
def test_weights_are_stored_packed_at_their_bits_without_float_copies(tmp_path, config):
    qmodel = lowbit.quantize(trained_bn(TinyCNN()), images(), CONFIGS[config]())
    lowbit.save(qmodel, tmp_path / "ckpt")
    stored = load_file(tmp_path / "ckpt" / files.TENSORS_FILE)
    meta = json.loads((tmp_path / "ckpt" / files.META_FILE).read_text())
    bits = {"w4a8": 4, "w2a8": 2, "binary-a8": 1}[config]
    assert meta["quantized_weights"], "no weight was stored as codes"
    for path, qname in meta["quantized_weights"].items():
        codes = stored[f"quantizer.{qname}.codes"]
        assert codes.dtype == torch.uint8
        assert codes.numel() == math.ceil(math.prod(meta["quantizers"][qname]["shape"]) * bits / 8)
        assert f"state.{path}" not in stored  # the float weight is not stored
        assert f"quantizer.{qname}.zero_point" not in stored  # symmetric: no zero points stored
    assert not any(k.startswith("state.bn.") for k in stored)  # BN folded: its statistics are not stored


@pytest.mark.parametrize("name", QTYPES.names())
def test_codes_of_every_qtype_round_trip(name):
    qtype = get_qtype(name)
    g = torch.Generator().manual_seed(0)
    lo, hi = (qtype.qmin, qtype.qmax) if qtype.is_integer else (0, qtype.levels().numel() - 1)
    codes = torch.randint(lo, hi + 1, (7, 9), generator=g, dtype=torch.int32)
    stored = encode_codes(codes, qtype)
    width, _ = code_layout(qtype)
    assert stored.numel() == (codes.numel() if width is None else math.ceil(codes.numel() * width / 8))
    assert torch.equal(decode_codes(stored, qtype, (7, 9)), codes)


@pytest.mark.parametrize(
    "make",
    [
        lambda w: QParams.from_range(w.amin(1), w.amax(1), get_qtype("uint4"), PerChannel(0), symmetric=False),
        lambda w: double_quantize(_group_qparams(w), bits=8, block=4),
        lambda w: QParams.from_range(*_block_range(w, 8), get_qtype("fp8_e4m3"), MXBlock(8)),
        lambda w: QParams.from_range(*_block_range(w, 8), get_qtype("int4"), PerVector(8, 4)),
        lambda w: _group_qparams(w, "dynamic_tree_unsigned", lo_zero=True),
    ],
    ids=["uint4-asym", "nf4-double-quant", "mx-fp8", "vs-quant", "dynamic-tree-unsigned"],
)
def test_qparams_with_compressed_scales_round_trip(make):
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(1))
    qp = make(w)
    meta, tensors = encode_qparams(qp, "q")
    assert meta["zero_point"] == ("zeros" if qp.symmetric else "packed")  # zero points at the codes' width
    assert ("q.zero_point" in tensors) == (not qp.symmetric)
    back = decode_qparams(json.loads(json.dumps(meta)), tensors, "q")
    assert back.qtype == qp.qtype and back.granularity == qp.granularity
    assert torch.equal(back.scale, qp.scale) and torch.equal(back.zero_point, qp.zero_point)
    assert type(back.scale_storage) is type(qp.scale_storage)
    assert torch.equal(int_codes(w, back), int_codes(w, qp))


def _block_range(w, size):
    blocks = w.reshape(-1, size)
    return blocks.amin(1), blocks.amax(1)


def _group_qparams(w, qtype="nf4", lo_zero=False):
    lo, hi = _block_range(w.abs() if lo_zero else w, 8)
    return QParams.from_range(lo.clamp(max=0) if lo_zero else lo, hi, get_qtype(qtype), PerGroup(8))


class TiedLM(nn.Module):
    """An embedding whose table is also the (quantized) output projection, as in small LMs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(32, 16)
        self.mid = nn.Linear(16, 16)
        self.head = nn.Linear(16, 32, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.relu(self.mid(self.emb(ids))))


def test_tied_weight_and_kept_float_layer_round_trip(tmp_path):
    torch.manual_seed(0)
    ids = [(torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(i)),) for i in range(2)]
    config = lowbit.preset("w4a8").with_rules(LayerRule(pattern="mid", keep_float=True, reason="test"))
    qmodel = lowbit.quantize(TiedLM(), ids, config)
    lowbit.save(qmodel, tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / files.META_FILE).read_text())
    assert "emb.weight" in meta["float_tensors"]  # the embedding reads it in float: kept as is
    loaded = lowbit.load(tmp_path / "ckpt", _seeded(TiedLM, 5))
    assert _same(_outputs(loaded, ids), _outputs(qmodel, ids))
    assert loaded.layers["mid"].kept_float == "test"


def test_w4_checkpoint_is_far_smaller_than_fp32(tmp_path):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 64))
    qmodel = lowbit.quantize(mlp, [(torch.randn(4, 256),)], "w4a8")
    lowbit.save(qmodel, tmp_path / "ckpt")
    save_file(mlp.state_dict(), tmp_path / "fp32.safetensors")
    ratio = os.path.getsize(tmp_path / "ckpt" / files.TENSORS_FILE) / os.path.getsize(tmp_path / "fp32.safetensors")
    print(f"w4a8 checkpoint / fp32 state dict: {ratio:.3f}")
    assert ratio < 0.16  # 4/32 = 0.125 for the weights, plus fp32 biases and per-channel scales


def test_fashion_cnn_slice_round_trips(tmp_path):
    task = lowbit.zoo.load("fashion-cnn", n_calib=8, n_eval=8)
    qmodel = lowbit.quantize(task.model, task.calib, "w4a8")
    lowbit.save(qmodel, tmp_path / "ckpt")
    blank = lowbit.zoo.load("fashion-cnn", n_calib=1, n_eval=1).model
    for p in blank.parameters():
        p.data.zero_()
    loaded = lowbit.load(tmp_path / "ckpt", blank)
    assert _same(_outputs(loaded, task.eval), _outputs(qmodel, task.eval))


# -- atomic writes ----------------------------------------------------------------------------------------------
@pytest.fixture
def two_models():
    batches = images()
    a = lowbit.quantize(trained_bn(TinyCNN()), batches, "w8a8")
    b = lowbit.quantize(trained_bn(_seeded(TinyCNN, 3), 3), batches, "w4a8")
    return a, b, batches


def _crash(*_args, **_kwargs):
    raise OSError("simulated crash while writing")


def test_crash_while_writing_leaves_the_old_checkpoint(tmp_path, two_models, monkeypatch):
    a, b, batches = two_models
    lowbit.save(a, tmp_path / "ckpt")
    monkeypatch.setattr(files, "write_file", _crash)
    with pytest.raises(OSError, match="simulated crash"):
        lowbit.save(b, tmp_path / "ckpt")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temporary folder left behind
    assert _same(_outputs(lowbit.load(tmp_path / "ckpt", TinyCNN()), batches), _outputs(a, batches))


def test_crash_before_the_swap_leaves_the_old_checkpoint(tmp_path, two_models, monkeypatch):
    a, b, batches = two_models
    lowbit.save(a, tmp_path / "ckpt")
    monkeypatch.setattr(files, "swap_in", _crash)  # every file written and synced, then the process dies
    with pytest.raises(OSError):
        lowbit.save(b, tmp_path / "ckpt")
    monkeypatch.undo()
    assert _same(_outputs(lowbit.load(tmp_path / "ckpt", TinyCNN()), batches), _outputs(a, batches))


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_saving_over_a_checkpoint_replaces_it(tmp_path, two_models, monkeypatch, exchange):
    a, b, batches = two_models
    if not exchange:
        monkeypatch.setattr(files, "_exchange", lambda *_: False)
    lowbit.save(a, tmp_path / "ckpt")
    lowbit.save(b, tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    assert _same(_outputs(lowbit.load(tmp_path / "ckpt", TinyCNN()), batches), _outputs(b, batches))


# -- errors -----------------------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    qmodel = lowbit.quantize(trained_bn(TinyCNN()), images(), "w8a8")
    return lowbit.save(qmodel, tmp_path / "ckpt")


def test_missing_folder_and_files_are_named(tmp_path, saved):
    with pytest.raises(CheckpointError, match="no checkpoint folder"):
        lowbit.load(tmp_path / "nowhere", TinyCNN())
    (saved / files.TENSORS_FILE).unlink()
    with pytest.raises(CheckpointError, match="model.safetensors missing"):
        lowbit.load(saved, TinyCNN())


def test_folder_left_by_a_crash_between_two_renames_is_named(tmp_path, saved):
    saved.rename(tmp_path / ".ckpt.old-0000")  # the fallback swap died after moving the old folder away
    with pytest.raises(CheckpointError, match=r"previous one in .*\.ckpt\.old-0000"):
        lowbit.load(saved, TinyCNN())


def test_truncated_tensor_file_is_reported(saved):
    path = saved / files.TENSORS_FILE
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        lowbit.load(saved, TinyCNN())


def test_flipped_byte_is_reported(saved):
    path = saved / files.TENSORS_FILE
    data = bytearray(path.read_bytes())
    data[-7] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        lowbit.load(saved, TinyCNN())


def test_unparseable_tensor_file_with_matching_hash_is_reported(saved):
    _edit_meta(saved, safetensors_sha256=files.sha256(b"not a safetensors file"))
    (saved / files.TENSORS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot be parsed"):
        lowbit.load(saved, TinyCNN())


def test_truncated_json_is_reported(saved):
    path = saved / files.META_FILE
    path.write_text(path.read_text()[:50])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        lowbit.load(saved, TinyCNN())


def test_newer_format_version_asks_to_upgrade(saved):
    _edit_meta(saved, format_version=lowbit.checkpoint.FORMAT_VERSION + 1)
    with pytest.raises(CheckpointError, match="upgrade lowbit"):
        lowbit.load(saved, TinyCNN())


def test_model_that_does_not_match_is_reported(saved):
    wrong = TinyCNN()
    wrong.conv_b = nn.Conv2d(8, 8, 3, padding=1)  # same names, another kernel size
    with pytest.raises(CheckpointError, match=r"does not match.*conv_b\.weight"):
        lowbit.load(saved, trained_bn(wrong))
    with pytest.raises(CheckpointError, match="does not match"):
        lowbit.load(saved, nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))


def test_save_rejects_a_model_that_is_not_quantized(tmp_path):
    with pytest.raises(CheckpointError, match="QuantizedModel"):
        lowbit.save(TinyCNN(), tmp_path / "ckpt")


def _edit_meta(folder, **changes):
    path = folder / files.META_FILE
    meta = json.loads(path.read_text())
    meta.update(changes)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize("tied", [False, True], ids=["table", "tied-table"])
def test_quantized_embedding_round_trips_from_packed_codes(tmp_path, tied):
    from tests.graph.embedding_models import DIM, VOCAB, TiedEmbed, TinyEmbed, ids

    cls = TiedEmbed if tied else TinyEmbed
    config = lowbit.preset("w4a16", weight=_spec("int4", PerGroup(16), symmetric=False)).with_embeddings()
    batches = ids()
    qmodel = lowbit.quantize(_seeded(cls, 0), batches, config)
    lowbit.save(qmodel, tmp_path / "ckpt")
    stored = load_file(tmp_path / "ckpt" / files.TENSORS_FILE)
    meta = json.loads((tmp_path / "ckpt" / files.META_FILE).read_text())
    qname = qmodel.embeddings["emb"].weight_quantizer
    assert meta["quantized_weights"]["emb.weight"] == qname and "emb.weight" not in meta["float_tensors"]
    bits = 4 if tied else 8  # a tied table holds its LM head's int4 codes; a plain one int8 per row
    assert stored[f"quantizer.{qname}.codes"].numel() == VOCAB * DIM * bits // 8
    assert not [k for k, t in stored.items() if t.is_floating_point() and t.numel() >= VOCAB * DIM // 8]
    loaded = lowbit.load(tmp_path / "ckpt", _seeded(cls, 3))
    for a, b in zip(_outputs(loaded, batches), _outputs(qmodel, batches), strict=True):
        assert _same(a, b)  # both outputs (projection, gathered rows) bit for bit
    assert loaded.embeddings["emb"].weight_quantizer == qname
