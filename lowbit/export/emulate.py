"""onnxruntime's integer kernels emulated in torch: the deployed model's output, predicted bit for bit.

    emu = emulate_onnxruntime(qmodel)   # a torch module over the QDQ graph the ONNX file is written from
    emu(images)                         # what onnxruntime computes for that file, on x86 with VNNI or AMX

The simulation (`qmodel(x)`) computes each layer in float on dequantized values; onnxruntime fuses the same QDQ
graph into integer kernels that accumulate in int32 and requantize in float32 with their own order of rounding. The
two agree on nearly every code of every layer (`layer_parity`), but a code within an ulp of a rounding boundary
flips between the two orders, each flip moves the next layer's sums, and in a deep network the flips compound
(EfficientNet-Lite0: 0.94 of output elements within one step). This module runs the QDQ graph (`to_qdq`) with each
pattern onnxruntime fuses computed as its kernel does (read from MLAS's source; onnxruntime 1.32):

- QuantizeLinear of a float tensor: `clamp(x / s, qmin - z, qmax - z)` rounded half to even, plus `z`;
- QLinearConv and QGemm (DQ -> Conv/Gemm -> [Relu/Clip] -> Q): exact int32 sums of `(x - z_x) * w` plus the
  int32 bias, then `float32(acc) * float32(float32(s_x * s_w[c]) / s_y)`, clamped to the code range, rounded half
  to even, plus `z_y`; a Relu/Clip before the Q clamps the codes (onnxruntime drops it where the Q's range lies
  inside it);
- QGemm with a float output (a final classifier): `float32(acc) * float32(s_x * s_w[c])`;
- QLinearAdd (DQ + DQ -> Q; the AVX2 kernel x86 dispatches to): `fma(a, r_a, fma(b, r_b, z_c - fma(z_a, r_a,
  r_b * z_b)))` on the raw codes in float32, r = s / s_c (the compiler contracts the constant part into an fma
  too), rounded half to even, saturated;
- MatMulIntegerToFloat / DynamicQuantizeMatMul (a 3-d linear layer or an attention matmul not read by a Q):
  `float32(acc) * float32(s_x * s_w[c])`, plus a bias in float; QLinearMatMul (read by a Q) requantizes as above;
  DynamicQuantizeLinear's range per call as `lowbit.export.dynamic.qparams`;
- MatMulNBits with int8 compute (`nbits_compute="int8"`): its input quantized per block
  (`lowbit.export.nbits.int8_input_blocks`), then the float reference (close, not bit-exact).

- LayerNorm, the exact GELU (onnxruntime's BiasGelu) and Softmax between the integer kernels: as MLAS computes
  them, `lowbit.export.mlas_float` (LayerNorm rows of 8 or more; Softmax's sum order is the AVX512F kernel's).

Everything else (pooling, reshapes, elementwise float ops) runs as the QDQ graph runs it, in float on dequantized
values; onnxruntime's other reductions (ReduceMean, ReduceSum, norms) and unfused float kernels (SiLU, RMSNorm's
decomposition) sum in their own order, so after them the prediction is close but not exact. Integer sums are exact
here on any CPU (float64 sums of integers); onnxruntime's are on CPUs with VNNI or AMX (u8s8 dot products into
int32). `bench/parity.py` scores both the simulation and this emulation against the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import fx

from lowbit.export import dynamic, mlas_float
from lowbit.export import nbits as nbits_ops
from lowbit.export.qdq import to_qdq

qd = torch.ops.quantized_decomposed
aten = torch.ops.aten
F32 = torch.float32

CONV, LINEAR = aten.conv2d.default, aten.linear.default
QUANT, DEQUANT = qd.quantize_per_tensor.default, qd.dequantize_per_tensor.default
DEQUANT_CH = qd.dequantize_per_channel.default
# a Relu/Clip between a kernel and its Q: default (lo, hi) bounds
CLIPS = {aten.hardtanh.default: (-1.0, 1.0), aten.relu.default: (0.0, None), aten.clamp.default: (None, None)}
FLOAT_BIAS = "float"
# ops that move or reshape dequantized values without changing them (the codes they hold stay codes)
SAME_CODES = {aten.view.default, aten.reshape.default, aten.flatten.using_ints, aten.dropout.default,
              aten.permute.default, aten.transpose.int, aten.contiguous.default, aten.clone.default,
              aten.pad.default, aten.squeeze.dim, aten.unsqueeze.default}


@dataclass(frozen=True)
class _Grid:
    """A float tensor that holds dequantized codes: value = (code - zero_point) * scale."""

    scale: float
    zero_point: int


@dataclass
class _Pending:
    """An integer kernel's result waiting for its QuantizeLinear: `requant(q)` gives the codes; `value()` the float
    result of the op as the QDQ graph computes it, for any other reader."""

    requant: object
    value: object
    clip: tuple[float | None, float | None] = field(default=(None, None))

    def clipped(self, lo, hi, value) -> _Pending:
        """The result of a Relu/Clip with bounds (lo, hi) read by its Q; `value`: the clip's float result."""
        a, b = self.clip
        return replace(self, value=value, clip=(lo if a is None else a if lo is None else max(a, lo),
                                                hi if b is None else b if hi is None else min(b, hi)))


def _f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=F32)


def _centered(x: torch.Tensor, grid: _Grid) -> torch.Tensor:
    """code - zero_point of a dequantized tensor, exactly (as float64 integers)."""
    return torch.round(x.double() / grid.scale)


def _requantize(v: torch.Tensor, zp: int, qmin: int, qmax: int) -> torch.Tensor:
    """MLAS's requantization of a float32 `v` about zero point `zp`: clamp(v, qmin - z, qmax - z), rounded half to
    even, plus z (float64 codes)."""
    return (torch.round(torch.clamp(v, qmin - zp, qmax - zp)) + zp).double()


def _clip_codes(codes: torch.Tensor, clip, scale: float, zp: int, qmin: int, qmax: int, dtype) -> torch.Tensor:
    """A Relu/Clip's bounds applied to the codes (quantization is monotone: clip-then-quantize equals
    quantize-then-clip), stored as `dtype`."""
    lo, hi = (None if b is None else float(torch.clamp(torch.round(_f32(b) / _f32(scale)) + zp, qmin, qmax))
              for b in clip)
    if lo is not None or hi is not None:
        codes = torch.clamp(codes, lo, hi)
    return codes.to(dtype)


def quantize_linear(x: torch.Tensor, scale: float, zp: int, qmin: int, qmax: int, dtype) -> torch.Tensor:
    """onnxruntime's QuantizeLinear (MLAS): x / s in float32 (a division, not a multiply by 1/s)."""
    return _requantize(x.to(F32) / _f32(scale), zp, qmin, qmax).to(dtype)


DYNAMIC, MATMUL_NBITS = torch.ops.lowbit.dynamic_quantize.default, torch.ops.lowbit.matmul_nbits.default


class _Emulator(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule, nbits_compute: str = "float") -> None:
        super().__init__(gm)
        self.grids: dict[fx.Node, _Grid] = {}
        self.int8_blocks = nbits_compute == "int8"

    # -- helpers ---------------------------------------------------------------------------------------------
    def _grid(self, a) -> _Grid | None:
        return self.grids.get(a) if isinstance(a, fx.Node) else None

    def _weight(self, a):
        """(integer codes as float64, per-output-channel scales as float32) of a dequantized constant weight."""
        if not (isinstance(a, fx.Node) and a.target in (DEQUANT, DEQUANT_CH) and a.args[0].op == "get_attr"):
            return None
        codes = self.fetch_attr(a.args[0].target)
        if a.target is DEQUANT:
            scale, zp = _f32(a.args[1]).reshape(1), torch.tensor([a.args[2]])
        else:
            scale, zp = self.fetch_attr(a.args[1].target).to(F32), self.fetch_attr(a.args[2].target)
            if a.args[3] != 0:
                return None
        if bool((zp != 0).any()):
            return None  # onnxruntime's u8s8 kernels take symmetric weights; anything else: float path
        return codes.double(), scale

    def _bias(self, a):
        """None (no bias), its int32 codes (a dequantized int32 constant), or FLOAT_BIAS (any other tensor)."""
        if a is None:
            return None
        if (isinstance(a, fx.Node) and a.target is DEQUANT_CH and a.args[0].op == "get_attr"
                and a.args[-1] == torch.int32):
            return self.fetch_attr(a.args[0].target).double()
        return FLOAT_BIAS

    # -- the fused patterns ----------------------------------------------------------------------------------
    def _conv_or_linear(self, n: fx.Node, args, value):
        grid, weight = self._grid(n.args[0]), self._weight(n.args[1])
        bias = self._bias(n.args[2] if len(n.args) > 2 else None)
        matmul = n.target is LINEAR and args[0].dim() > 2  # MatMul (+ Add) in ONNX, not Gemm
        if grid is None or weight is None or (bias is FLOAT_BIAS and not matmul):
            return value()  # onnxruntime does not fuse it into an integer kernel: float, as the QDQ graph runs it
        w, s_w = weight
        x = _centered(args[0], grid)
        if n.target is CONV:
            stride, padding, dilation, groups = [*args[3:7], *(1, 0, 1, 1)[len(args[3:7]):]]
            acc = F.conv2d(x, w, None, stride, padding, dilation, groups)
            ch = (1, -1, 1, 1)
        else:
            acc = x @ w.T
            ch = (1,) * (x.dim() - 1) + (-1,)
        s_in = (_f32(grid.scale) * s_w).reshape(ch)  # float32(s_x * s_w[c])
        unfused = value if n.target is CONV else None  # a conv read by anything but its Q runs in float
        if bias is None:
            return self._pending(acc, s_in, unfused)
        if not matmul:  # QLinearConv, QGemm: the int32 bias joins the sums
            return self._pending(acc + bias.reshape(ch), s_in, unfused)
        # MatMulIntegerToFloat (DynamicQuantizeMatMul), its bias added in float, then a QuantizeLinear if any
        with_bias = acc.to(F32) * s_in + args[2]
        return _Pending(lambda q, clip: self._quantize(q, with_bias, clip), lambda: with_bias)

    def _matmul(self, n: fx.Node, args, value):
        """Two quantized activations multiplied (attention): QLinearMatMul before a Q, else MatMulIntegerToFloat."""
        ga, gb = self._grid(n.args[0]), self._grid(n.args[1])
        if ga is None or gb is None:
            return value()
        acc = torch.matmul(_centered(args[0], ga), _centered(args[1], gb))
        return self._pending(acc, _f32(ga.scale) * _f32(gb.scale), None)

    @staticmethod
    def _quantize(q: fx.Node, v: torch.Tensor, clip) -> torch.Tensor:
        s_y, zp, qmin, qmax, dtype = q.args[1:6]
        return _clip_codes(_requantize(v.to(F32) / _f32(s_y), zp, qmin, qmax), clip, s_y, zp, qmin, qmax, dtype)

    @staticmethod
    def _pending(acc: torch.Tensor, s_in: torch.Tensor, value) -> _Pending:
        """int32 sums `acc` at scale `s_in`: requantized by the Q that reads them (float32(acc) * float32(s_in / s_y),
        MLAS's requantization); any other reader gets `value()` (a conv: onnxruntime runs it in float as the QDQ
        graph does) or, by default, float32(acc) * s_in (QGemm's and MatMulIntegerToFloat's float output)."""

        def requant(q: fx.Node, clip):
            s_y, zp, qmin, qmax, dtype = q.args[1:6]
            codes = _requantize(acc.to(F32) * (s_in / _f32(s_y)), zp, qmin, qmax)
            return _clip_codes(codes, clip, s_y, zp, qmin, qmax, dtype)

        return _Pending(requant, value or (lambda: acc.to(F32) * s_in))

    def _add(self, n: fx.Node, args, value):
        ga, gb = self._grid(n.args[0]), self._grid(n.args[1])
        if ga is None or gb is None or args[0].shape != args[1].shape:
            return value()
        a, b = (_centered(t, g) + g.zero_point for t, g in ((args[0], ga), (args[1], gb)))

        def requant(q: fx.Node, clip):
            s_c, z_c, qmin, qmax, dtype = q.args[1:6]
            r_a, r_b = _f32(ga.scale) / _f32(s_c), _f32(gb.scale) / _f32(s_c)
            fma = lambda x, y, z: (x * y.double() + z.double()).to(F32)  # noqa: E731 - exact product, one rounding
            fixed = _f32(z_c) - fma(torch.tensor(float(ga.zero_point)).double(), r_a, r_b * gb.zero_point)
            v = fma(a, r_a, fma(b, r_b, fixed))
            return _clip_codes(_requantize(v, 0, qmin, qmax), clip, s_c, z_c, qmin, qmax, dtype)

        return _Pending(requant, value)

    # -- the interpreter -------------------------------------------------------------------------------------
    def run_node(self, n: fx.Node):
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            flat: list = []
            fx.node.map_aggregate(args, flat.append)
            pending = next((a for a in flat if isinstance(a, _Pending)), None)

            def floats(args=args):  # a pending input by its float value
                return fx.node.map_aggregate(args, lambda a: a.value() if isinstance(a, _Pending) else a)

            def value(args=args):  # the node as the QDQ graph computes it
                return getattr(self, n.op)(n.target, floats(args), kwargs)

            if n.op != "call_function":
                return value()
            if n.target in FLOAT_KERNELS and not kwargs:
                out = _float_kernel(n.target, floats())
                if out is not None:
                    return out
            if n.target is QUANT:
                return pending.requant(n, pending.clip) if pending else quantize_linear(args[0], *args[1:6])
            if pending is not None:
                if n.target in CLIPS and not kwargs:
                    return pending.clipped(*(*args[1:3], *CLIPS[n.target][len(args[1:3]):]), value)
                return value()
            if n.target is DEQUANT and not torch.is_floating_point(args[0]) and args[0].dim() > 0:
                self.grids[n] = _Grid(float(args[1]), int(args[2]))
            elif n.target is DYNAMIC:  # DynamicQuantizeLinear: this call's own range
                scale, zp = dynamic.qparams(args[0].float())
                self.grids[n] = _Grid(float(scale), int(zp))
            elif n.target is MATMUL_NBITS and self.int8_blocks:
                return value((nbits_ops.int8_input_blocks(args[0], args[7]), *args[1:]))
            elif n.target in SAME_CODES and self._grid(n.args[0]) is not None and _keeps_zero(n, args):
                self.grids[n] = self.grids[n.args[0]]
            elif n.target in (CONV, LINEAR):
                return self._conv_or_linear(n, args, value)
            elif n.target is aten.matmul.default and not kwargs:
                return self._matmul(n, args, value)
            elif n.target is aten.add.Tensor and len(n.args) == 2 and not kwargs:
                return self._add(n, args, value)
            return value()


FLOAT_KERNELS = {aten.layer_norm.default, aten.gelu.default, aten.softmax.int, aten._softmax.default}


def _float_kernel(target, args) -> torch.Tensor | None:
    """onnxruntime's float kernel for a LayerNorm, exact GELU or Softmax as MLAS computes it
    (`lowbit.export.mlas_float`), or None where MLAS has no kernel of that shape (the QDQ graph's op runs)."""
    x = args[0]
    if not (isinstance(x, torch.Tensor) and x.dtype == F32 and x.dim() > 0):
        return None
    if target is aten.layer_norm.default:
        shape, weight, bias, eps = (*args[1:5], *(None, None, 1e-5)[len(args[2:5]):])
        if len(shape) != 1 or x.shape[-1] < mlas_float.LAYER_NORM_MIN:
            return None
        return mlas_float.layer_norm(x, weight, bias, eps)
    if target is aten.gelu.default:
        return mlas_float.gelu(x) if args[1:] in ((), ("none",)) else None  # "tanh" (FastGelu): not emulated
    dim = args[1]
    if dim % x.dim() != x.dim() - 1 or (target is aten._softmax.default and args[2]):
        return None
    return mlas_float.softmax(x)


def _keeps_zero(n: fx.Node, args) -> bool:
    """A pad keeps the grid only when it pads with 0.0 (code zero_point); other shape ops always do."""
    if n.target is not aten.pad.default:
        return True
    mode = args[2] if len(args) > 2 else "constant"
    return mode == "constant" and not (args[3] if len(args) > 3 else None)


class OnnxruntimeEmulation(torch.nn.Module):
    """The QDQ graph run with onnxruntime's integer kernels' arithmetic (module docstring)."""

    def __init__(self, qdq: fx.GraphModule, nbits_compute: str = "float") -> None:
        super().__init__()
        self.qdq, self.nbits_compute = qdq.eval(), nbits_compute

    def forward(self, *inputs):
        with torch.inference_mode():
            out = _Emulator(self.qdq, self.nbits_compute).run(*inputs)
        return out[0] if isinstance(out, (tuple, list)) and len(out) == 1 else out


def emulate_onnxruntime(qmodel, nbits_compute: str = "float", nbits: bool = True) -> OnnxruntimeEmulation:
    """A torch module computing what onnxruntime computes for the file `to_onnx(qmodel, ..., nbits=nbits,
    nbits_compute=nbits_compute)` writes (module docstring)."""
    if nbits_compute not in nbits_ops.COMPUTE:
        raise ValueError(f"nbits_compute {nbits_compute!r} is not one of {sorted(nbits_ops.COMPUTE)}, to_onnx's "
                         "choices")
    return OnnxruntimeEmulation(to_qdq(qmodel, nbits=nbits), nbits_compute)
