"""Quantizer modules inserted into the captured graph.

A quantizer fake-quantizes one tensor edge with a QuantSpec. It is float pass-through while observing
(calibration), fixed once frozen (static), or computes its range from each input (dynamic).
"""

from __future__ import annotations

import torch

from lowbit.config import QuantSpec
from lowbit.core.primitives import dynamic_qparams, fake_quantize
from lowbit.core.qparams import QParams, double_quantize

# Values this large are masks (BERT-style attention masks add float32-min), not data: a quantizer range
# stretched to them would put every real value in one bin.
MASK_MAGNITUDE = 1e9


def make_estimator(spec: QuantSpec):
    from lowbit.calib import make_estimator as _make  # calib registers estimators on import

    return _make(spec.estimator, granularity=spec.granularity, **dict(spec.estimator_options))


class ActQuantizer(torch.nn.Module):
    """Fake-quantizes an activation edge. `consumers` lists the layers that read it (for reports)."""

    def __init__(self, spec: QuantSpec, dynamic: bool = False, consumers: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.spec, self.dynamic, self.consumers = spec, dynamic, consumers
        self.enabled = True
        self.observing = False
        self.qparams: QParams | None = None
        self.estimator = None
        self.kept_float = ""

    def start_observing(self) -> None:
        if not self.dynamic:
            self.estimator = make_estimator(self.spec)
            self.observing = True

    def freeze(self) -> None:
        if not self.observing:
            return
        self.observing = False
        peak = max(abs(float(self.estimator.min.min())), abs(float(self.estimator.max.max())))
        if peak >= MASK_MAGNITUDE:
            self.enabled = False
            self.kept_float = f"observed |x| up to {peak:.3g}: a masking value, not data; edge kept float"
            return
        self.qparams = self.estimator.qparams(self.spec.qtype, symmetric=self.spec.symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or not x.is_floating_point():
            return x
        if self.observing:
            self.estimator.observe(x.detach())
            return x
        if self.dynamic:
            return fake_quantize(x, dynamic_qparams(x, self.spec.qtype, self.spec.granularity, self.spec.symmetric))
        if self.qparams is None:
            raise RuntimeError("this activation quantizer has no range yet: calibrate the model first")
        return fake_quantize(x, self.qparams)

    def extra_repr(self) -> str:
        mode = "dynamic" if self.dynamic else ("frozen" if self.qparams is not None else "uncalibrated")
        return f"{self.spec.qtype.name}, {self.spec.granularity}, {mode}"


class WeightQuantizer(torch.nn.Module):
    """Fake-quantizes a weight. The quantized weight is computed once and cached (the weight is constant)."""

    def __init__(self, spec: QuantSpec, layer: str) -> None:
        super().__init__()
        self.spec, self.layer = spec, layer
        self.enabled = True
        self.qparams: QParams | None = None
        self.register_buffer("w_hat", None, persistent=False)

    def set_qparams(self, w: torch.Tensor, qparams: QParams | None = None) -> None:
        """Fix the weight's QParams (from the spec's estimator unless given) and cache the fake-quantized weight."""
        if qparams is None:
            est = make_estimator(self.spec)
            est.observe(w.detach())
            qparams = est.qparams(self.spec.qtype, symmetric=self.spec.symmetric)
            if getattr(self.spec, "double_quant", False):
                qparams = double_quantize(qparams)
        self.qparams = qparams
        self.w_hat = fake_quantize(w.detach(), qparams)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return w
        if self.w_hat is None:
            self.set_qparams(w)
        return self.w_hat

    def extra_repr(self) -> str:
        return f"{self.layer}: {self.spec.qtype.name}, {self.spec.granularity}"
