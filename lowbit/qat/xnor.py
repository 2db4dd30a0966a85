"""XNOR-Net: binary weights and binary inputs, each with a scale.

Rastegari et al., "XNOR-Net: ImageNet Classification Using Binary Convolutional Neural Networks", ECCV 2016,
section 3.2. Weights: alpha_c sign(W_c) with alpha_c = mean |W_c| (as BWN). Inputs: sign(I), and the output is
multiplied by K = A * k, A = mean over channels of |I|, k a (kernel-size) averaging filter with the
conv's stride
and padding (per sample for a linear layer): I * W ~ (sign(I) (*) sign(W)) . K alpha. Gradient of sign:
1_{|r| <= 1} (equation 9).

Deviation, stated: the paper reorders blocks so that BatchNorm output (signed) feeds the binarization. In a
standard conv-BN-ReLU network the inputs are non-negative and sign(I) would be all +1, so each
input channel is
binarized around a learned threshold tau_c (initialised to the channel's mean on the first batch),
I -> I - tau,
as ReActNet's RSign does (Liu et al., ECCV 2020). tau is part of the exported input data.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lowbit.core.granularity import PerTensor
from lowbit.core.qparams import QParams
from lowbit.qat.base import InputQuantizer, QATMethod, register_method
from lowbit.qat.binary import BINARY, sign_ste
from lowbit.qat.bwn import BWNWeight


def input_shape(x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """tau (C,) broadcast against x: (1, C, 1, 1) for NCHW, (1, C) for (N, C)."""
    return channels.reshape((1, -1) + (1,) * (x.dim() - 2))


def activation_scale(centered: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """K: the mean over channels of |I|, averaged over each receptive field of `layer` (a conv or a
    linear layer)."""
    a = centered.abs().mean(dim=1, keepdim=True)  # (N, 1, H, W) or (N, 1)
    if hasattr(layer, "kernel_size"):  # a Conv2d or a converted conv
        if layer.groups != 1 or layer.dilation != (1, 1) or not isinstance(layer.padding, tuple):
            raise ValueError(
                "XNOR scaling supports convolutions with groups=1, dilation=1 and numeric padding"
            )
        return F.avg_pool2d(a, layer.kernel_size, layer.stride, layer.padding, count_include_pad=True)
    return a  # (N, 1): one scale per sample


class XNORInput(InputQuantizer):
    dynamic_output_scale = True

    def __init__(self, bits: int, channels: int | None = None) -> None:
        super().__init__(bits)
        if channels is None:
            raise ValueError("XNORInput needs the layer's number of input channels")
        self.tau = nn.Parameter(torch.zeros(channels))

    def init_from(self, x):
        dims = [d for d in range(x.dim()) if d != 1]
        self.tau.copy_(x.mean(dim=dims))  # (C,)

    def center(self, x):
        return x - input_shape(x, self.tau)

    def train_forward(self, x):
        return sign_ste(self.center(x))

    def output_scale(self, x, layer):
        return activation_scale(self.center(x), layer)

    def qparams(self):
        return QParams(torch.ones(1), torch.zeros(1, dtype=torch.int32), BINARY, PerTensor())


register_method(
    QATMethod(
        name="xnor",
        weight=BWNWeight,
        input=XNORInput,
        paper="Rastegari et al., XNOR-Net, ECCV 2016",
        weight_bits=(1,),
        act_bits=(1,),
    )
)
