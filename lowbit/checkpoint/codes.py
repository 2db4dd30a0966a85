"""QParams and integer codes as flat named tensors plus JSON metadata (the checkpoint's quantized payload).

Codes are packed at the narrowest width of `lowbit.core.packing` that holds the qtype's bits: int8 one per byte,
int4 two, int2 (and ternary) four, binary eight; int3 takes a 4-bit slot and int5..int7 a byte. Codebook and float
qtypes (NF4, FP4, FP8, power-of-two) store their level indices the same way. Wider codes stay int32 tensors.
"""

from __future__ import annotations

from dataclasses import fields

import torch

from lowbit.config import GRANULARITIES
from lowbit.core.packing import PACK_BITS, pack, unpack
from lowbit.core.qparams import DoubleQuantScales, Pow2Scales, QParams, SubScales
from lowbit.core.qtype import QTYPES, QType

SCALE_STORAGES = {cls.__name__: cls for cls in (SubScales, Pow2Scales, DoubleQuantScales)}
Tensors = dict[str, torch.Tensor]


def qtype_key(qtype: QType) -> str:
    """The registry name of `qtype` (by value: `dynamic_tree_unsigned` and `dynamic_tree` share `.name`)."""
    for name in QTYPES.names():
        if QTYPES.get(name) == qtype:
            return name
    raise ValueError(f"qtype {qtype!r} is not registered in lowbit.core.qtype.QTYPES; register it to save it")


def code_layout(qtype: QType) -> tuple[int | None, bool]:
    """(packing width in bits or None for raw int32, signed): signed integers store two's complement codes,
    every other qtype stores unsigned level indices."""
    signed = bool(getattr(qtype, "signed", False)) and qtype.is_integer
    width = next((w for w in PACK_BITS if w >= qtype.bits), None)
    return width, signed


def encode_codes(codes: torch.Tensor, qtype: QType) -> torch.Tensor:
    width, signed = code_layout(qtype)
    return codes.reshape(-1).to(torch.int32) if width is None else pack(codes, width, signed=signed)


def decode_codes(stored: torch.Tensor, qtype: QType, shape: tuple[int, ...]) -> torch.Tensor:
    width, signed = code_layout(qtype)
    numel = 1
    for d in shape:
        numel *= d
    flat = stored.to(torch.int32) if width is None else unpack(stored, width, numel, signed=signed)
    if flat.numel() != numel:
        raise ValueError(f"{flat.numel()} stored codes for a tensor of shape {shape}")
    return flat.reshape(shape)


def encode_granularity(g) -> dict:
    return {"type": type(g).__name__, **{f.name: getattr(g, f.name) for f in fields(g)}}


def decode_granularity(d: dict):
    d = dict(d)
    return GRANULARITIES[d.pop("type")](**d)


def encode_qparams(qp: QParams, prefix: str) -> tuple[dict, Tensors]:
    """(JSON metadata, tensors named under `prefix`) holding `qp` exactly."""
    tensors = {f"{prefix}.scale": qp.scale}
    meta = {
        "qtype": qtype_key(qp.qtype),
        "granularity": encode_granularity(qp.granularity),
        "symmetric": qp.symmetric,
        "zero_point": _encode_zero_point(qp, tensors, f"{prefix}.zero_point"),
        "scale_storage": None,
    }
    s = qp.scale_storage
    if s is not None:
        values = {f.name: getattr(s, f.name) for f in fields(s)}
        meta["scale_storage"] = {"type": type(s).__name__}
        for name, v in values.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{prefix}.scale_storage.{name}"] = v
            else:
                meta["scale_storage"][name] = v
    return meta, tensors


def decode_qparams(meta: dict, tensors: Tensors, prefix: str) -> QParams:
    storage = None
    if meta.get("scale_storage"):
        s = dict(meta["scale_storage"])
        cls = SCALE_STORAGES[s.pop("type")]
        for f in fields(cls):
            key = f"{prefix}.scale_storage.{f.name}"
            if key in tensors:
                s[f.name] = tensors[key]
        storage = cls(**s)
    scale = tensors[f"{prefix}.scale"]
    return QParams(
        scale=scale,
        zero_point=_decode_zero_point(meta, tensors, f"{prefix}.zero_point", scale.shape),
        qtype=QTYPES.get(meta["qtype"]),
        granularity=decode_granularity(meta["granularity"]),
        scale_storage=storage,
    )


def _encode_zero_point(qp: QParams, tensors: Tensors, key: str) -> str:
    """How the zero points are stored: "zeros" (symmetric: nothing stored), "packed" (at the codes' width, as
    every zero point lies in the code range) or "int32"."""
    zp = qp.zero_point
    if not zp.any():
        return "zeros"
    levels = (qp.qtype.qmin, qp.qtype.qmax) if qp.qtype.is_integer else (0, qp.qtype.levels().numel() - 1)
    if levels[0] <= int(zp.min()) and int(zp.max()) <= levels[1]:
        tensors[key] = encode_codes(zp, qp.qtype)
        return "packed"
    tensors[key] = zp
    return "int32"


def _decode_zero_point(meta: dict, tensors: Tensors, key: str, shape: torch.Size) -> torch.Tensor:
    how = meta.get("zero_point", "int32")
    if how == "zeros":
        return torch.zeros(shape, dtype=torch.int32)
    if how == "packed":
        return decode_codes(tensors[key], QTYPES.get(meta["qtype"]), tuple(shape))
    return tensors[key]
