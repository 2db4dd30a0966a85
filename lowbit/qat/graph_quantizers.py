"""Trainable stand-ins for a QuantizedModel's quantizers, used by `rescue` to fine-tune a PTQ result in place.

Each wraps one pipeline quantizer (lowbit.graph.quantizers) and starts from its PTQ QParams:
- "ste": the QParams stay fixed; the weights train through the straight-through estimator (Bengio et al. 2013;
  gradient 1 inside the clipping range, 0 outside: `lowbit.core.ste.fake_quantize_ste`).
- "lsq": the scales are learned too, as in LSQ (Esser et al., "Learned Step Size Quantization", ICLR 2020),
  with the PTQ zero point kept fixed (v_hat = (round(clip(v / s + z, qmin, qmax)) - z) s, whose step
  gradient is LSQ's equation 3 when z = 0) and LSQ's gradient scale 1 / sqrt(N Q_P). Only integer qtypes
  per tensor or per channel learn a scale; other quantizers fall back to "ste".
In eval mode a stand-in computes `fake_quantize(x, qparams())` exactly as the pipeline quantizer would with
those QParams, so `materialize` writes them back without changing the forward.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import nn

from lowbit.core.granularity import PerChannel, PerTensor
from lowbit.core.primitives import dynamic_qparams, fake_quantize
from lowbit.core.qparams import MIN_SCALE, QParams
from lowbit.core.qtype import IntQType
from lowbit.core.ste import fake_quantize_ste, round_ste
from lowbit.graph.quantizers import ActQuantizer, WeightQuantizer
from lowbit.qat.lsq import grad_scale

RESCUE_METHODS = ("lsq", "ste")


def learnable(qp: QParams) -> bool:
    return (
        isinstance(qp.qtype, IntQType)
        and isinstance(qp.granularity, (PerTensor, PerChannel))
        and qp.scale_storage is None
    )


def _broadcast(t: torch.Tensor, qp: QParams, x: torch.Tensor) -> torch.Tensor:
    if isinstance(qp.granularity, PerChannel):
        shape = [1] * x.dim()
        shape[qp.granularity.axis] = -1
        return t.reshape(shape)
    return t.reshape(())


def lsq_zero_point(x: torch.Tensor, step: torch.Tensor, qp: QParams) -> torch.Tensor:
    """(round(clip(x / s + z, qmin, qmax)) - z) * s with LSQ's gradients for x and s (z fixed)."""
    qt = qp.qtype
    n = x.numel() // step.numel()
    s = _broadcast(grad_scale(step, 1.0 / math.sqrt(n * max(qt.qmax, 1))), qp, x)
    z = _broadcast(qp.zero_point.to(x.dtype), qp, x)
    return (round_ste(torch.clamp(x / s + z, qt.qmin, qt.qmax)) - z) * s


class _Trainable(nn.Module):
    def __init__(self, original: nn.Module, qp: QParams | None, method: str) -> None:
        super().__init__()
        self.original, self.base = [original], qp  # a list: not registered as a submodule
        self.enabled = original.enabled
        learn = method == "lsq" and qp is not None and learnable(qp)
        self.step = nn.Parameter(qp.scale.detach().clone().float()) if learn else None

    def qparams(self) -> QParams | None:
        if self.step is None:
            return self.base
        return replace(self.base, scale=self.step.detach().clamp_min(MIN_SCALE).clone())

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return fake_quantize(x, self.qparams())
        if self.step is None:
            return fake_quantize_ste(x, self.base)
        return lsq_zero_point(x, self.step.clamp_min(MIN_SCALE), self.base)


class TrainableWeight(_Trainable):
    def __init__(self, original: WeightQuantizer, method: str) -> None:
        if original.qparams is None:
            raise ValueError(
                f"weight quantizer of {original.layer} has no QParams; run prepare_weights first"
            )
        super().__init__(original, original.qparams, method)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantize(w) if self.enabled else w


class TrainableAct(_Trainable):
    def __init__(self, original: ActQuantizer, method: str) -> None:
        if not original.dynamic and original.qparams is None:
            raise ValueError("an activation quantizer has no range: calibrate the QuantizedModel first")
        super().__init__(original, None if original.dynamic else original.qparams, method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not x.is_floating_point():
            return x
        if self.base is None:  # dynamic: ranges from each input, straight-through gradient
            spec = self.original[0].spec
            qp = dynamic_qparams(x, spec.qtype, spec.granularity, spec.symmetric)
            return fake_quantize_ste(x, qp) if self.training else fake_quantize(x, qp)
        return self.quantize(x)


def install(gm: torch.fx.GraphModule, method: str) -> dict[str, _Trainable]:
    """Replace every pipeline quantizer of `gm` by a trainable stand-in (same name: same graph)."""
    if method not in RESCUE_METHODS:
        raise ValueError(f"rescue method must be one of {RESCUE_METHODS}, not {method!r}")
    stand_ins: dict[str, _Trainable] = {}
    for name, m in list(gm.named_children()):
        if isinstance(m, WeightQuantizer):
            stand_ins[name] = TrainableWeight(m, method)
        elif isinstance(m, ActQuantizer):
            stand_ins[name] = TrainableAct(m, method)
        else:
            continue
        setattr(gm, name, stand_ins[name])
    return stand_ins


def set_training(stand_ins: dict[str, _Trainable], mode: bool) -> None:
    """Switch the stand-ins only (an exported GraphModule refuses .train())."""
    for m in stand_ins.values():
        m.training = mode


def materialize(gm: torch.fx.GraphModule, stand_ins: dict[str, _Trainable]) -> None:
    """Put the pipeline quantizers back, holding the learned QParams and the fine-tuned weights."""
    weights = {
        str(n.target): n.args[0] for n in gm.graph.nodes if n.op == "call_module" and n.target in stand_ins
    }
    for name, s in stand_ins.items():
        original = s.original[0]
        if isinstance(original, WeightQuantizer):
            owner, _, attr = str(weights[name].target).rpartition(".")
            w = getattr(gm.get_submodule(owner) if owner else gm, attr)
            original.set_qparams(w.detach(), s.qparams())
        elif s.base is not None:
            original.qparams = s.qparams()
        setattr(gm, name, original)
