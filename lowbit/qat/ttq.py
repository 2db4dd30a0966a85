"""TTQ: trained ternary quantization, with learned positive and negative scales per layer.

Zhu, Han, Mao and Dally, "Trained Ternary Quantization", ICLR 2017. Threshold Delta = t * max |w| (t = 0.05,
equation 9), w_t = W_p where w > Delta, -W_n where w < -Delta, 0 elsewhere (equation 1). Backward
(equations 6-7): dL/dW_p = sum_{I_p} dL/dw_t; dL/dW_n = -sum_{I_n} dL/dw_t (the chain rule's sign, since
w_t = -W_n there; the paper writes the sum without it); dL/dw = W_p dL/dw_t on I_p, dL/dw_t on I_z,
W_n dL/dw_t on I_n. W_p and W_n start at the mean |w| of their sets. The paper's normalisation of w to
[-1, 1] is left out: the threshold is relative, so only the latent weights' scale differs.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.core.granularity import PerTensor
from lowbit.core.qparams import QParams
from lowbit.qat.base import QATMethod, WeightQuantizer, register_method
from lowbit.qat.binary import _ACT
from lowbit.qat.ste_ema import EMAInput
from lowbit.qat.table import TableQType

THRESHOLD = 0.05


def ttq_masks(w: torch.Tensor, t: float = THRESHOLD) -> tuple[torch.Tensor, torch.Tensor]:
    delta = t * w.detach().abs().max()
    return w.detach() > delta, w.detach() < -delta


class _TTQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, w_p, w_n, t: float):
        pos, neg = ttq_masks(w, t)
        ctx.save_for_backward(pos, neg, w_p, w_n)
        return pos * w_p - neg * w_n

    @staticmethod
    def backward(ctx, grad):
        pos, neg, w_p, w_n = ctx.saved_tensors
        grad_w = torch.where(pos, w_p * grad, torch.where(neg, w_n * grad, grad))
        return grad_w, (grad * pos).sum().reshape(w_p.shape), -(grad * neg).sum().reshape(w_n.shape), None


def ttq(w: torch.Tensor, w_p: torch.Tensor, w_n: torch.Tensor, t: float = THRESHOLD) -> torch.Tensor:
    return _TTQ.apply(w, w_p, w_n, t)


class TTQWeight(WeightQuantizer):
    def __init__(self, bits: int, weight: torch.Tensor, t: float = THRESHOLD) -> None:
        super().__init__(bits)
        self.t = t
        pos, neg = ttq_masks(weight, t)
        a = weight.detach().abs()
        self.w_p = nn.Parameter((a * pos).sum() / pos.sum().clamp_min(1))
        self.w_n = nn.Parameter((a * neg).sum() / neg.sum().clamp_min(1))

    def train_forward(self, w):
        return ttq(w, self.w_p, self.w_n, self.t)

    def export(self, w):
        pos, neg = ttq_masks(w, self.t)
        codes = 1 + pos.to(torch.int32) - neg.to(torch.int32)  # 0: -W_n, 1: 0, 2: W_p
        levels = torch.stack([-self.w_n.detach(), torch.zeros(()), self.w_p.detach()])
        table, codes = TableQType.from_levels(levels, codes)
        return codes, QParams(torch.ones(1), torch.zeros(1, dtype=torch.int32), table, PerTensor())


register_method(
    QATMethod(
        name="ttq",
        weight=TTQWeight,
        input=EMAInput,
        paper="Zhu et al., Trained Ternary Quantization, ICLR 2017",
        weight_bits=(2,),
        act_bits=_ACT,
    )
)
