"""QuantConfig: what to quantize and how. Typed and frozen; JSON at the edges with a format version.

A config holds objects (QTypes, granularities, estimator classes); names appear only in JSON and the CLI,
resolved through the registries.
"""

from __future__ import annotations

import enum
import fnmatch
import json
from dataclasses import dataclass, fields, replace
from typing import Any

from lowbit.core.granularity import MXBlock, PerChannel, PerGroup, PerTensor, PerToken, PerVector
from lowbit.core.qtype import QType, get_qtype

CONFIG_VERSION = 1
GRANULARITIES = {c.__name__: c for c in (PerTensor, PerChannel, PerGroup, PerToken, PerVector, MXBlock)}


class Mode(enum.Enum):
    """STATIC: activation ranges calibrated once. DYNAMIC: computed per batch at run time.
    WEIGHT_ONLY: activations stay float."""

    STATIC = "static"
    DYNAMIC = "dynamic"
    WEIGHT_ONLY = "weight_only"


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized: element type, granularity, symmetry and the range estimator.
    `double_quant` (per-group weights): store the group scales with QLoRA's double quantization (8-bit codes
    in blocks of 256 scales, `lowbit.core.qparams.double_quantize`; Dettmers et al. 2023)."""

    qtype: QType
    granularity: Any = PerTensor()
    symmetric: bool = True
    estimator: str = "minmax"
    estimator_options: tuple[tuple[str, Any], ...] = ()
    double_quant: bool = False

    def with_bits(self, bits: int) -> QuantSpec:
        signed = getattr(self.qtype, "signed", True)
        return replace(self, qtype=get_qtype(f"{'int' if signed else 'uint'}{bits}"))


@dataclass(frozen=True)
class LayerRule:
    """Overrides for the layers whose name matches `pattern` (fnmatch glob) or whose module type name equals
    `module_type` (e.g. "Linear", "Conv2d"). `keep_float` leaves the layer unquantized. `weight` and
    `activation`, when given, replace the config's specs for those layers. A rule that matches no layer is an
    error (a mistyped name), unless `optional`: a layout rule for a kind of layer the model may not have (as
    `lowbit.export.layout.deployable`'s float attention matmuls on a CNN)."""

    pattern: str | None = None
    module_type: str | None = None
    keep_float: bool = False
    weight: QuantSpec | None = None
    activation: QuantSpec | None = None
    reason: str = ""
    optional: bool = False

    def __post_init__(self) -> None:
        if self.pattern is None and self.module_type is None:
            raise ValueError("a LayerRule needs a name pattern or a module type")

    def matches(self, name: str, module_type: str | None) -> bool:
        if self.pattern is not None and not fnmatch.fnmatchcase(name, self.pattern):
            return False
        return self.module_type is None or self.module_type == module_type


@dataclass(frozen=True)
class PassSpec:
    """One post-training pass of `lowbit.ptq.PASSES` by name, with its options (e.g. AdaRound's iterations).
    Text form, as the CLI takes it: `name` or `name:key=value,key=value` (values parsed as JSON when they can be)."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str) -> PassSpec:
        name, _, rest = text.partition(":")
        options = []
        for item in filter(None, rest.split(",")):
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"pass option {item!r} in {text!r} is not key=value (e.g. adaround:iters=500)")
            try:
                options.append((key.strip(), json.loads(value)))
            except json.JSONDecodeError:
                options.append((key.strip(), value))
        return cls(name.strip(), tuple(options))


@dataclass(frozen=True)
class QuantConfig:
    """The whole recipe. `weight` None keeps weights float; `activation` is ignored in WEIGHT_ONLY mode.
    `fully_quantized` also quantizes the outputs of add, concat, pooling, activations and layer norm.
    `passes` name post-training passes (equalization, bias correction, AdaRound, SmoothQuant, GPTQ...).
    `embedding`: weight-only quantization of embedding tables (`aten.embedding`; None keeps them float): the table
    is stored as codes and only the gathered rows are dequantized (`EMBEDDING_INT8`: int8 per row, symmetric)."""

    weight: QuantSpec | None
    activation: QuantSpec | None
    mode: Mode = Mode.STATIC
    fully_quantized: bool = False
    rules: tuple[LayerRule, ...] = ()
    calibration: str = "estimator"  # or "easyquant"
    fold_bn: bool = True
    passes: tuple[PassSpec, ...] = ()  # run in order; see lowbit.ptq.PASSES for what each does and when
    embedding: QuantSpec | None = None
    version: int = CONFIG_VERSION

    def for_layer(self, name: str, module_type: str | None) -> tuple[QuantSpec | None, QuantSpec | None, str]:
        """(weight spec, activation spec, why-kept-float) for one layer after applying the rules in order."""
        w, a = self.weight, (None if self.mode is Mode.WEIGHT_ONLY else self.activation)
        for r in self.rules:
            if r.matches(name, module_type):
                if r.keep_float:
                    return None, None, r.reason or f"rule {r.pattern or r.module_type}: keep float"
                w, a = r.weight or w, r.activation or a
        return w, a, ""

    def for_embedding(self, name: str, module_type: str | None) -> tuple[QuantSpec | None, str]:
        """(table spec, why-kept-float) for one embedding: `embedding`, then the matching rules in order (keep_float,
        or a rule's weight spec)."""
        spec = self.embedding
        for r in self.rules:
            if spec is not None and r.matches(name, module_type):
                if r.keep_float:
                    return None, r.reason or f"rule {r.pattern or r.module_type}: keep float"
                spec = r.weight or spec
        return spec, "" if spec is not None else "no embedding spec"

    def with_embeddings(self, spec: QuantSpec | None = None) -> QuantConfig:
        """This config with its embedding tables quantized (`EMBEDDING_INT8` unless `spec` is given)."""
        return replace(self, embedding=spec or EMBEDDING_INT8)

    def with_matching_embeddings(self) -> QuantConfig:
        """This config with its embedding tables quantized at the weights' width: `EMBEDDING_INT4` (int4 per group
        of 32) when the weights have 4 bits or fewer, else `EMBEDDING_INT8`. An int4 model with int8 tables misses
        its size: MiniLM's word table is half its weights (W4A16 file 17.93 MB with int8 tables, 0.20 of fp32;
        13.71 MB, 1/6.6, with int4 ones). A table tied to a quantized LM head shares the head's codes either way."""
        bits = self.weight.qtype.bits if self.weight is not None else 8  # every QType has `bits`
        return self.with_embeddings(EMBEDDING_INT4 if bits <= 4 else EMBEDDING_INT8)

    def with_rules(self, *rules: LayerRule) -> QuantConfig:
        return replace(self, rules=self.rules + tuple(rules))

    def to_json(self) -> str:
        return json.dumps(_encode(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> QuantConfig:
        data = json.loads(text)
        version = data.get("version")
        if version is None or version > CONFIG_VERSION:
            raise ValueError(
                f"config format version {version} is not supported by this lowbit (reads up to {CONFIG_VERSION}); "
                "upgrade lowbit or re-create the config"
            )
        return _decode_config(data)


def _spec(qtype: str, gran=PerTensor(), symmetric=True, estimator="minmax") -> QuantSpec:
    return QuantSpec(get_qtype(qtype), gran, symmetric, estimator)


# Embedding tables: one scale per token row (the rows a gather reads), int8 symmetric.
EMBEDDING_INT8 = _spec("int8", PerChannel(0))
# For int4 models: groups of 32 along each row (onnxruntime's GatherBlockQuantized reads them; measured on MiniLM
# W4A16 GPTQ, onnxruntime cosine on 200 sentences 0.9829 with int8 tables -> 0.9774 with these, 0.9744 with groups
# of 64; bench/run.py's 1000 sentences: 0.9767).
EMBEDDING_INT4 = _spec("int4", PerGroup(32))

PRESETS: dict[str, QuantConfig] = {
    # uint8 asymmetric activations + int8 per-channel weights: onnxruntime's fast U8S8 path on x86.
    "w8a8": QuantConfig(_spec("int8", PerChannel(0)), _spec("uint8", symmetric=False)),
    "w8a8-dynamic": QuantConfig(_spec("int8", PerChannel(0)), _spec("int8", PerToken()), mode=Mode.DYNAMIC),
    "w4a8": QuantConfig(_spec("int4", PerChannel(0)), _spec("uint8", symmetric=False)),
    "w4a16": QuantConfig(_spec("int4", PerGroup(128), symmetric=False), None, mode=Mode.WEIGHT_ONLY),
    "w8a16": QuantConfig(_spec("int8", PerChannel(0)), None, mode=Mode.WEIGHT_ONLY),
    # int8 per group of 128: exported as MatMulNBits; with to_onnx(nbits_compute="int8") onnxruntime quantizes each
    # block of inputs to int8 too (SmolLM2-135M: perplexity 25.4 against 25.2 fp32, faster than fp32).
    "w8a16-g128": QuantConfig(_spec("int8", PerGroup(128)), None, mode=Mode.WEIGHT_ONLY),
    # Large language models (lowbit.llm registers the passes named here).
    "w4a16-gptq": QuantConfig(_spec("int4", PerGroup(128), symmetric=False), None, mode=Mode.WEIGHT_ONLY,
                              passes=(PassSpec("gptq"),)),
    "w4a16-awq": QuantConfig(_spec("int4", PerGroup(128), symmetric=False), None, mode=Mode.WEIGHT_ONLY,
                             passes=(PassSpec("awq"),)),
    "w8a8-smoothquant": QuantConfig(_spec("int8", PerChannel(0)), _spec("int8", PerToken()), mode=Mode.DYNAMIC,
                                    passes=(PassSpec("smoothquant", (("alpha", 0.5),)),)),
    "w8a8-llm-int8": QuantConfig(_spec("int8", PerChannel(0)), _spec("int8", PerToken()), mode=Mode.DYNAMIC,
                                 passes=(PassSpec("llm_int8", (("threshold", 6.0),)),)),
    "nf4-dq": QuantConfig(QuantSpec(get_qtype("nf4"), PerGroup(64), double_quant=True), None,
                          mode=Mode.WEIGHT_ONLY),
}


def preset(name: str, **changes: Any) -> QuantConfig:
    """A copy of a named preset, optionally with fields replaced."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; choose one of: {', '.join(sorted(PRESETS))}")
    return replace(PRESETS[name], **changes)


def _encode(obj: Any) -> Any:
    if isinstance(obj, QType):
        return obj.name
    if isinstance(obj, enum.Enum):
        return obj.value
    if type(obj).__name__ in GRANULARITIES and hasattr(obj, "__dataclass_fields__"):
        return {"type": type(obj).__name__, **{f.name: getattr(obj, f.name) for f in fields(obj)}}
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _encode(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple):
        return [_encode(v) for v in obj]
    return obj


def _decode_spec(d: dict | None) -> QuantSpec | None:
    if d is None:
        return None
    g = dict(d["granularity"])
    gran = GRANULARITIES[g.pop("type")](**g)
    opts = tuple((k, v) for k, v in d.get("estimator_options", []))
    return QuantSpec(get_qtype(d["qtype"]), gran, d["symmetric"], d["estimator"], opts,
                     d.get("double_quant", False))


def _decode_config(d: dict) -> QuantConfig:
    rules = tuple(
        LayerRule(
            r.get("pattern"), r.get("module_type"), r.get("keep_float", False),
            _decode_spec(r.get("weight")), _decode_spec(r.get("activation")), r.get("reason", ""),
            r.get("optional", False),
        )
        for r in d.get("rules", [])
    )
    return QuantConfig(
        weight=_decode_spec(d.get("weight")),
        activation=_decode_spec(d.get("activation")),
        mode=Mode(d.get("mode", "static")),
        fully_quantized=d.get("fully_quantized", False),
        rules=rules,
        calibration=d.get("calibration", "estimator"),
        fold_bn=d.get("fold_bn", True),
        passes=tuple(PassSpec(p["name"], tuple(map(tuple, p.get("options", [])))) for p in d.get("passes", [])),
        embedding=_decode_spec(d.get("embedding")),
        version=d["version"],
    )


__all__ = ["CONFIG_VERSION", "EMBEDDING_INT4", "EMBEDDING_INT8", "LayerRule", "Mode", "PRESETS", "PassSpec",
           "QuantConfig", "QuantSpec", "preset"]
