"""Building blocks shared by the QAT methods: quantizer base classes and the method registry.

A method is a pair of factories: one weight quantizer per layer (per output channel, built from the layer's
weight) and one input quantizer per layer (per tensor, initialised from the first batch it sees;
built with the layer's input channel count). In eval mode
every quantizer computes exactly what `lowbit.core` computes from its exported codes and QParams, so a
converted model reproduces the trained forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lowbit.core.primitives import dequantize, fake_quantize
from lowbit.core.qparams import MIN_SCALE, QParams
from lowbit.core.qtype import IntQType
from lowbit.registry import Registry


class WeightQuantizer(nn.Module):
    """Fake-quantizes a weight. Subclasses define `train_forward(w)` (the method's gradient) and
    `export(w) -> (codes, QParams)`; eval mode returns `dequantize(*export(w))`."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.training:
            return self.train_forward(w)
        codes, qp = self.export(w)
        return dequantize(codes, qp, dtype=w.dtype)

    def train_forward(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def export(self, w: torch.Tensor) -> tuple[torch.Tensor, QParams]:
        raise NotImplementedError  # pragma: no cover - abstract

    def set_progress(self, progress: float) -> None:
        """Training progress in [0, 1] (schedules such as DSQ's annealing); most methods ignore it."""


class InputQuantizer(nn.Module):
    """Fake-quantizes a layer input per tensor. Subclasses define `init_from(x)` (called once, on the first
    batch), `train_forward(x)` and `qparams()`; eval mode returns `fake_quantize(x, qparams())`."""

    dynamic_output_scale = False  # True when output_scale() returns a factor (XNOR-Net's K)

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            with torch.no_grad():
                self.init_from(x.detach())
            self.initialized.fill_(True)
        if self.training:
            return self.train_forward(x)
        return fake_quantize(self.center(x), self.qparams())

    def center(self, x: torch.Tensor) -> torch.Tensor:
        """What is quantized: x itself, or x minus a learned offset (XNOR's threshold)."""
        return x

    def output_scale(self, x: torch.Tensor, layer: nn.Module) -> torch.Tensor | None:
        """A factor multiplying the layer's output (XNOR-Net's K); None for plain quantizers."""
        return None

    def init_from(self, x: torch.Tensor) -> None:
        raise NotImplementedError  # pragma: no cover - abstract

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def qparams(self) -> QParams:
        raise NotImplementedError  # pragma: no cover - abstract

    def set_progress(self, progress: float) -> None:
        """See WeightQuantizer.set_progress."""


@dataclass(frozen=True)
class QATMethod:
    """A registered method: factories `weight(bits, weight)` and `input(bits, channels)` (channels: the
    layer's input channels or features), the bit widths it accepts
    (None: any integer width) and the paper it implements."""

    name: str
    weight: Callable[[int, torch.Tensor], WeightQuantizer]
    input: Callable[..., InputQuantizer]
    paper: str
    weight_bits: tuple[int, ...] | None = None
    act_bits: tuple[int | None, ...] | None = None

    def check(self, weight_bits: int, act_bits: int | None) -> None:
        if self.weight_bits is not None and weight_bits not in self.weight_bits:
            raise ValueError(
                f"method {self.name!r} quantizes weights to {self.weight_bits} bits; "
                f"set weight_bits={self.weight_bits[0]}"
            )
        if self.act_bits is not None and act_bits not in self.act_bits:
            raise ValueError(f"method {self.name!r} takes act_bits in {self.act_bits}, not {act_bits}")


METHODS: Registry[QATMethod] = Registry("QAT method")


def register_method(method: QATMethod) -> QATMethod:
    return METHODS.register(method.name)(method)


def weight_int(bits: int) -> IntQType:
    """Weights use narrow signed integers ([-(2^(b-1) - 1), 2^(b-1) - 1]): symmetric, so BN folding can
    negate a channel's codes when its BatchNorm scale is negative."""
    return IntQType(bits, signed=True, narrow=True)


def channel_shape(w: torch.Tensor) -> tuple[int, ...]:
    """(C, 1, 1, ...) for broadcasting one value per output channel against a weight."""
    return (w.shape[0],) + (1,) * (w.dim() - 1)


def per_channel_absmax(w: torch.Tensor) -> torch.Tensor:
    return w.detach().reshape(w.shape[0], -1).abs().amax(dim=1).clamp_min(MIN_SCALE)  # (C,)


def per_channel_absmean(w: torch.Tensor) -> torch.Tensor:
    return w.reshape(w.shape[0], -1).abs().mean(dim=1)  # (C,)


def set_progress(model: nn.Module, progress: float) -> None:
    """Tell every quantizer how far training has got (0 at the start, 1 at the end): DSQ anneals with it."""
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"progress is a fraction of training in [0, 1], got {progress}")
    for m in model.modules():
        if isinstance(m, (WeightQuantizer, InputQuantizer)):
            m.set_progress(progress)
