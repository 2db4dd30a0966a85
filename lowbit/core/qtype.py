"""Quantized types: the set of values a code can stand for, before scaling.

Every QType maps a scaled real `u = x / scale (+ zero_point)` to integer codes (`encode`) and back (`decode`).
Integer types use the code itself as the value; the others (binary, ternary, power-of-two, floating point,
codebooks) index a sorted table of levels. `max_level` is the largest representable magnitude; a range
`[-amax, amax]` maps onto it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

from lowbit.core import codebook
from lowbit.registry import Registry

INT_BITS = (2, 3, 4, 5, 6, 7, 8, 16)


@dataclass(frozen=True)
class QType:
    """Base class. Subclasses are frozen dataclasses with a `name` and `bits` (fields or properties) and
    `levels()`; integer types override `encode`/`decode` with the arithmetic form."""

    @property
    def is_integer(self) -> bool:
        return False

    @property
    def max_level(self) -> float:
        return float(self.levels().abs().max())

    def levels(self) -> torch.Tensor:
        """Sorted float32 values the codes stand for (code i -> levels()[i])."""
        raise NotImplementedError  # pragma: no cover - abstract

    def encode(self, u: torch.Tensor, stochastic: bool = False, generator: torch.Generator | None = None):
        return _nearest_level(u, self.levels(), stochastic, generator)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.levels()[codes.long()]


@dataclass(frozen=True)
class IntQType(QType):
    """Two's-complement (`signed`) or unsigned integers. `narrow` drops the most negative code ([-127, 127])."""

    bits: int
    signed: bool = True
    narrow: bool = False

    def __post_init__(self) -> None:
        if self.bits not in INT_BITS:
            hint = " (use BinaryQType for 1 bit)" if self.bits == 1 else ""
            raise ValueError(f"integer qtypes have {list(INT_BITS)} bits, not {self.bits}{hint}")
        if self.narrow and not self.signed:
            raise ValueError("narrow range applies to signed integers only")

    @property
    def name(self) -> str:
        return f"{'int' if self.signed else 'uint'}{self.bits}{'_narrow' if self.narrow else ''}"

    @property
    def is_integer(self) -> bool:
        return True

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(2 ** (self.bits - 1)) + int(self.narrow)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @property
    def max_level(self) -> float:
        return float(self.qmax)

    def levels(self) -> torch.Tensor:
        return torch.arange(self.qmin, self.qmax + 1, dtype=torch.float32)

    def encode(self, u, stochastic=False, generator=None):
        if stochastic:
            r = torch.rand(u.shape, generator=generator, device=u.device, dtype=u.dtype)
            q = torch.floor(u + r)
        else:
            q = torch.round(u)  # round half to even
        return q.clamp(self.qmin, self.qmax).to(torch.int32)

    def decode(self, codes):
        return codes.to(torch.float32)


@dataclass(frozen=True)
class BinaryQType(QType):
    """{-1, +1} (BinaryConnect, XNOR-Net). Zero encodes to +1, as sign() with sign(0) = +1."""

    bits: int = field(default=1, init=False)
    name: str = field(default="binary", init=False)

    def levels(self):
        return torch.tensor([-1.0, 1.0])

    def encode(self, u, stochastic=False, generator=None):
        if stochastic:
            return _nearest_level(u, self.levels(), True, generator)
        return (u >= 0).to(torch.int32)


@dataclass(frozen=True)
class TernaryQType(QType):
    """{-1, 0, +1} (TWN, TTQ): nearest level, so |u| < 0.5 becomes 0."""

    bits: int = field(default=2, init=False)
    name: str = field(default="ternary", init=False)

    def levels(self):
        return torch.tensor([-1.0, 0.0, 1.0])


@dataclass(frozen=True)
class Pow2QType(QType):
    """Logarithmic levels {0, ±2^-k : k = 0 .. 2^(bits-1) - 2} (Miyashita et al. 2016): one sign bit,
    the remaining codes exponents. Rounding is nearest in the linear domain."""

    bits: int = 4

    def __post_init__(self) -> None:
        if not 2 <= self.bits <= 8:
            raise ValueError(f"power-of-two qtypes have 2 to 8 bits, not {self.bits}")

    @property
    def name(self) -> str:
        return f"pow2_{self.bits}"

    def levels(self):
        n_exp = 2 ** (self.bits - 1) - 1  # magnitudes besides zero
        mags = torch.tensor([2.0 ** (-k) for k in range(n_exp - 1, -1, -1)])
        return torch.cat([-mags.flip(0), torch.zeros(1), mags])


@dataclass(frozen=True)
class FloatQType(QType):
    """A small IEEE-like float: 1 sign bit, `exp_bits` exponent, `man_bits` mantissa, with subnormals.
    `finite_max` is the format's largest value (E4M3: 448, with no infinities; E5M2: 57344; E2M1: 6).
    Rounding is to nearest, ties to even mantissa, saturating at `finite_max`."""

    exp_bits: int
    man_bits: int
    finite_max: float

    @property
    def name(self) -> str:
        prefix = "fp8" if self.bits == 8 else f"fp{self.bits}"
        return f"{prefix}_e{self.exp_bits}m{self.man_bits}"

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def max_level(self) -> float:
        return self.finite_max

    @cached_property
    def _magnitudes(self) -> torch.Tensor:
        bias = 2 ** (self.exp_bits - 1) - 1
        vals = []
        for e in range(2**self.exp_bits):
            for m in range(2**self.man_bits):
                frac = m / 2**self.man_bits
                v = frac * 2.0 ** (1 - bias) if e == 0 else (1 + frac) * 2.0 ** (e - bias)
                if v <= self.finite_max:
                    vals.append(v)
        return torch.tensor(vals, dtype=torch.float64).unique().to(torch.float32)  # sorted magnitudes

    def levels(self):
        mags = self._magnitudes
        return torch.cat([-mags[1:].flip(0), mags])

    def encode(self, u, stochastic=False, generator=None):
        mags = self._magnitudes
        idx = _nearest_level(u.abs(), mags, stochastic, generator)  # ties to the even index = even mantissa
        n = mags.numel() - 1
        return torch.where(u < 0, n - idx, n + idx).to(torch.int32)


@dataclass(frozen=True)
class CodebookQType(QType):
    """A table of levels in [-1, 1] (or [0, 1] unsigned): NF4 (QLoRA), the dynamic tree map (8-bit optimizers)."""

    name: str
    bits: int
    signed: bool = True

    def levels(self):
        return _CODEBOOKS[(self.name, self.signed)]()

    @property
    def max_level(self) -> float:
        return 1.0


_CODEBOOKS = {
    ("nf4", True): codebook.nf4_values,
    ("dynamic_tree", True): lambda: codebook.dynamic_map(signed=True),
    ("dynamic_tree", False): lambda: codebook.dynamic_map(signed=False),
}


LEVEL_CHUNK = 1 << 22  # values per pass of the nearest-level search (an LLM head holds 28M weights)


def _nearest_level(u, levels, stochastic=False, generator=None, chunk=LEVEL_CHUNK):
    """Index of the nearest level (ties to the even index), or stochastic rounding between the two
    neighbours with P(upper) = (u - lower) / (upper - lower), which is unbiased inside the range. The
    deterministic search runs `chunk` values at a time: its int64 indices and distances would otherwise take
    ~12x the memory of `u`."""
    if not stochastic and u.numel() > chunk:
        parts = [_nearest_level(c, levels) for c in u.reshape(-1).split(chunk)]
        return torch.cat(parts).reshape(u.shape)
    levels = levels.to(u.device, u.dtype)
    n = levels.numel()
    u = u.clamp(levels[0], levels[-1])
    upper = torch.bucketize(u, levels).clamp(1, n - 1)  # first level >= u
    lower = upper - 1
    lo, hi = levels[lower], levels[upper]
    if stochastic:
        p_up = (u - lo) / (hi - lo)
        r = torch.rand(u.shape, generator=generator, device=u.device, dtype=u.dtype)
        return torch.where(r < p_up, upper, lower).to(torch.int32)
    d_lo, d_hi = u - lo, hi - u
    pick_up = (d_hi < d_lo) | ((d_hi == d_lo) & (upper % 2 == 0))
    return torch.where(pick_up, upper, lower).to(torch.int32)


QTYPES: Registry[QType] = Registry("qtype")
for _b in INT_BITS:
    QTYPES.register(f"int{_b}")(IntQType(_b, signed=True))
    QTYPES.register(f"uint{_b}")(IntQType(_b, signed=False))
QTYPES.register("int8_narrow")(IntQType(8, signed=True, narrow=True))
QTYPES.register("binary")(BinaryQType())
QTYPES.register("ternary")(TernaryQType())
for _b in (3, 4, 5):
    QTYPES.register(f"pow2_{_b}")(Pow2QType(_b))
QTYPES.register("fp8_e4m3")(FloatQType(4, 3, 448.0))
QTYPES.register("fp8_e5m2")(FloatQType(5, 2, 57344.0))
QTYPES.register("fp4_e2m1")(FloatQType(2, 1, 6.0))
QTYPES.register("nf4")(CodebookQType("nf4", 4))
QTYPES.register("dynamic_tree")(CodebookQType("dynamic_tree", 8))
QTYPES.register("dynamic_tree_unsigned")(CodebookQType("dynamic_tree", 8, signed=False))


def get_qtype(name: str) -> QType:
    """The QType registered under `name` (e.g. "int8", "uint4", "nf4", "fp8_e4m3", "binary")."""
    return QTYPES.get(name)


def qtype_names() -> list[str]:
    return QTYPES.names()

