"""onnxruntime's float kernels between the integer ones, computed in torch as MLAS computes them (x86-64).

`lowbit.export.emulate` predicts what onnxruntime computes for a QDQ file. Its integer kernels are exact integer
sums plus a few float32 roundings; the float kernels between them (a transformer's LayerNorm, GELU and Softmax) are
vectorised polynomials and lane-wise sums whose last-ulp results differ from torch's. The next QuantizeLinear turns
an ulp on a rounding boundary into a flipped code and the flips compound layer by layer (MiniLM: 0.91 of output
elements within one step with torch's kernels in the emulation). The kernels here follow MLAS's order of operations
(onnxruntime 1.32, read from its source and checked element by element against onnxruntime in
tests/export/test_mlas_float.py):

- `layer_norm`: `MlasLayerNormKernelAvx2` (CPUs with AVX2; the kernel onnxruntime's LayerNormalization dispatches
  to): the mean from a double sum in 4 lanes, the centred sum of squares in float32 in 8 lanes with fma, reduced
  pairwise, `1 / sqrtf(var / n + eps)`, then `fma((x - mean) * inv, scale, bias)`;
- `erf`: `MlasErfKernelFma3`: an odd polynomial in |x| below 0.921875, `1 - exp(-poly(|x|))` above, every step
  an fma, |x| clamped to 3.925 (the older erf.cpp tables read 3.725; the runtime's 1.0 beyond 3.78 settled it);
- `gelu`: the com.microsoft BiasGelu kernel onnxruntime fuses `Add(bias) + Gelu` into:
  `(v * 0.5) * (erf(v * (1 / sqrt(2))) + 1)`;
- `softmax`: `MlasComputeSumExpF32KernelAvx512F` (CPUs with AVX512F): the exponential's polynomial with
  `vscalefps`, summed in 16 lanes in row order and reduced as the kernel's shuffles do, then multiplied by
  `1 / sum`. CPUs with AVX2 only run `MlasComputeSumExpF32KernelFma3`, which sums in another order: there the
  result is within an ulp of onnxruntime's, not equal.

An fma is emulated as a float64 product (exact for float32 operands) plus a float64 add, rounded once to float32;
it differs from a true fma only when the float64 sum lies exactly half way between two float32 values (about one
operation in 2^29).
"""

from __future__ import annotations

import torch

F32, F64 = torch.float32, torch.float64
LAYER_NORM_MIN = 8  # shorter rows take onnxruntime's scalar path, not emulated here


def _c(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=F32)


def fma(a: torch.Tensor, b, c) -> torch.Tensor:
    """float32 fused multiply-add `a * b + c`, one rounding (see the module docstring for its one exception)."""
    return (a.to(F64) * torch.as_tensor(b).to(F64) + torch.as_tensor(c).to(F64)).to(F32)


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """The correctly rounded float32 square root (sqrtps). torch's vectorised float32 sqrt is not always: with it
    `1 / sqrt(var / n + eps)` was 2 ulps off onnxruntime's on 0.7% of 384-wide LayerNorm rows. Rounding the float64
    root to float32 is exact (53 >= 2 * 24 + 2 bits)."""
    return torch.sqrt(x.to(F64)).to(F32)


def _pairwise8(acc: torch.Tensor) -> torch.Tensor:
    """The AVX 8-lane horizontal sum (extract high 128 + low, movehl, movehdup): ((a0+a4)+(a2+a6))+((a1+a5)+(a3+a7))."""
    r4 = acc[..., :4] + acc[..., 4:]
    r2 = r4[..., :2] + r4[..., 2:]
    return r2[..., 0] + r2[..., 1]


def layer_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    """LayerNormalization over the last axis as `MlasLayerNormKernelAvx2` computes it (module docstring), for rows
    of at least LAYER_NORM_MIN elements."""
    x = x.to(F32)
    n, lead = x.shape[-1], x.shape[:-1]
    n4, n8 = n - n % 4, n - n % 8
    lanes = torch.zeros(*lead, 4, dtype=F64)
    for i in range(0, n4, 4):
        lanes = lanes + x[..., i:i + 4].to(F64)
    total = (lanes[..., 0] + lanes[..., 2]) + (lanes[..., 1] + lanes[..., 3])
    for i in range(n4, n):
        total = total + x[..., i].to(F64)
    mean = (total / n).to(F32)
    d = x - mean[..., None]
    acc = torch.zeros(*lead, 8, dtype=F32)
    for i in range(0, n8, 8):
        acc = fma(d[..., i:i + 8], d[..., i:i + 8], acc)
    var = _pairwise8(acc)
    for i in range(n8, n):  # the scalar tail as compiled: its first four steps unfused, the rest fma
        var = var + d[..., i] * d[..., i] if i < n4 else fma(d[..., i], d[..., i], var)
    inv = _c(1.0) / _sqrt(var / _c(float(n)) + _c(eps))
    y = d * inv[..., None]
    if weight is None:
        return y
    if bias is None:
        return y * weight.to(F32)
    return fma(y, weight.to(F32), bias.to(F32))


_ERF_SMALL = (-5.99104969e-4, 4.99339588e-3, -2.67667342e-2, 1.12818025e-1, -3.76124859e-1, 1.28379151e-1)
_ERF_BIG = (1.72948930e-5, -3.83208680e-4, 3.88393435e-3, -2.42545605e-2, 1.06777847e-1, 6.34846687e-1,
            1.28717512e-1)
_ERF_EXP = (1.38319808e-3, 8.37550033e-3, 4.16689515e-2, 1.66664466e-1, 4.99999851e-1, 1.0, 1.0)
_ROUNDING_BIAS = 12582912.0  # 1.5 * 2^23: adding and subtracting it rounds to an integer
_LOG2E, _LN2_HI, _LN2_LO = 1.44269504088896341, -6.93145752e-1, -1.42860677e-6


def _poly(coefficients, x: torch.Tensor) -> torch.Tensor:
    p = _c(coefficients[0]).expand_as(x)
    for k in coefficients[1:]:
        p = fma(p, x, _c(k))
    return p


def _reduce(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MLAS's exp range reduction: (m, f) with m = round(v / ln 2) and f = v - m * ln 2 (two fma steps)."""
    m = fma(v, _c(_LOG2E), _c(_ROUNDING_BIAS)) - _c(_ROUNDING_BIAS)
    return m, fma(m, _c(_LN2_LO), fma(m, _c(_LN2_HI), v))


def erf(x: torch.Tensor) -> torch.Tensor:
    """erf as `MlasErfKernelFma3` (module docstring)."""
    x = x.to(F32)
    a = torch.minimum(x.abs(), _c(3.925))
    small = fma(_poly(_ERF_SMALL, a * a), a, a)
    big = a >= _c(0.921875)
    b = torch.where(big, a, torch.zeros_like(a))
    r = torch.maximum(-fma(_poly(_ERF_BIG, b), b, b), _c(-88.3762626647949))
    m, f = _reduce(r)
    e = _poly(_ERF_EXP, f) * torch.ldexp(torch.ones_like(m), m.to(torch.int32)).to(F32)  # 2^m exactly
    return torch.copysign(torch.where(big, _c(1.0) - e, small), x)


def gelu(v: torch.Tensor) -> torch.Tensor:
    """The exact (erf) GELU as onnxruntime's BiasGelu kernel computes it on `v = x + bias` (module docstring)."""
    v = v.to(F32)
    return (v * _c(0.5)) * (erf(v * (_c(1.0) / _c(2.0 ** 0.5))) + _c(1.0))


_EXP_POLY = tuple(float.fromhex(h) for h in ("0x1.694000p-10", "0x1.125edcp-7", "0x1.555b5ap-5", "0x1.555450p-3",
                                              "0x1.fffff6p-2", "0x1.000000p+0", "0x1.000000p+0"))


def softmax(x: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis as `MlasComputeSoftmax` with the AVX512F kernels (module docstring)."""
    x = x.to(F32)
    v = torch.maximum(_c(-103.9720840454), x - x.max(-1, keepdim=True).values)
    m, f = _reduce(v)
    e = torch.ldexp(_poly(_EXP_POLY, f).to(F64), m.to(F64)).to(F32)  # vscalefps: p * 2^m, one rounding
    d, lead = x.shape[-1], x.shape[:-1]
    acc = torch.zeros(*lead, 16, dtype=F32)
    for i in range(0, d, 16):
        chunk = e[..., i:i + 16]
        acc[..., :chunk.shape[-1]] += chunk  # a masked tail leaves the other lanes as they are
    b = acc[..., 8:] + acc[..., :8]
    total = ((b[..., 0] + b[..., 1]) + (b[..., 2] + b[..., 3])) + ((b[..., 4] + b[..., 5]) + (b[..., 6] + b[..., 7]))
    return e * (_c(1.0) / total)[..., None]
