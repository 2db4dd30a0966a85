"""BWN: binary-weight networks with a scale, alpha_c = mean |w_c| per output channel.

Rastegari et al., "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks", ECCV 2016,
section 3.1: W ~ alpha B with B = sign(W), alpha = ||W||_l1 / n (equation 4). Backward (section 3.2):
dC/dW_i = dC/dW~_i (1/n + alpha * 1_{|W_i| <= 1}), which autograd produces from alpha(W) * sign_ste(W).
"""

from __future__ import annotations

from lowbit.core.qparams import MIN_SCALE
from lowbit.qat.base import QATMethod, WeightQuantizer, channel_shape, per_channel_absmean, register_method
from lowbit.qat.binary import _ACT, binary_export, sign_ste
from lowbit.qat.ste_ema import EMAInput


class BWNWeight(WeightQuantizer):
    def __init__(self, bits: int, weight) -> None:
        super().__init__(bits)

    def train_forward(self, w):
        alpha = per_channel_absmean(w).reshape(channel_shape(w))  # (C, 1, ...), differentiable
        return alpha * sign_ste(w)

    def export(self, w):
        alpha = per_channel_absmean(w.detach()).clamp_min(MIN_SCALE)  # (C,)
        return binary_export(w, alpha)


register_method(
    QATMethod(
        name="bwn",
        weight=BWNWeight,
        input=EMAInput,
        paper="Rastegari et al., XNOR-Net (BWN), ECCV 2016",
        weight_bits=(1,),
        act_bits=_ACT,
    )
)
