"""Adam and AdamW with 8-bit block-wise quantized moments.

Kingma & Ba, "Adam: A Method for Stochastic Optimization" (2015); Loshchilov & Hutter, "Decoupled Weight Decay
Regularization" (2019); states stored as in Dettmers et al., "8-bit Optimizers via Block-wise Quantization"
(2022): the first moment m with the signed dynamic map, the second moment v (and AMSGrad's running maximum)
with the unsigned one. The update itself follows torch.optim.Adam line by line in float32, using the moments
freshly updated from the dequantized ones; only what is stored between steps is quantized.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lowbit.optim.base import DEFAULT_BLOCK_SIZE, DEFAULT_MIN_8BIT_SIZE, OPTIMIZERS, Optimizer8bit


@OPTIMIZERS.register("adam8bit")
class Adam8bit(Optimizer8bit):
    """Drop-in for torch.optim.Adam (same arguments and param groups) keeping m and v in 8 bits.

    Extra arguments: block_size (elements per absmax block, 2048) and min_8bit_size (parameters with fewer
    elements keep float32 states, 4096). `foreach` is accepted and ignored; capturable, differentiable and
    fused are not supported.
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        foreach: bool | None = None,
        maximize: bool = False,
        capturable: bool = False,
        differentiable: bool = False,
        fused: bool | None = None,
        decoupled_weight_decay: bool = False,
        block_size: int = DEFAULT_BLOCK_SIZE,
        min_8bit_size: int = DEFAULT_MIN_8BIT_SIZE,
    ) -> None:
        if not 0.0 <= float(lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i, beta in enumerate(betas):
            if not 0.0 <= float(beta) < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, foreach=foreach,
            maximize=maximize, capturable=capturable, differentiable=differentiable, fused=fused,
            decoupled_weight_decay=decoupled_weight_decay, block_size=block_size, min_8bit_size=min_8bit_size,
        )  # fmt: skip
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, group: dict) -> None:
        grad = self.grad_of(p, group["maximize"])
        lr, wd, eps = float(group["lr"]), group["weight_decay"], group["eps"]
        beta1, beta2 = (float(b) for b in group["betas"])
        state = self.state[p]
        if not state:
            state["step"] = torch.tensor(0.0, dtype=torch.float32)
            self.init_state(state, "exp_avg", p, group, signed=True)
            self.init_state(state, "exp_avg_sq", p, group, signed=False)
            if group["amsgrad"]:
                self.init_state(state, "max_exp_avg_sq", p, group, signed=False)
        step = float(state["step"]) + 1
        param = p.detach() if p.dtype == torch.float32 else p.detach().to(torch.float32)
        if wd != 0 and not group["decoupled_weight_decay"]:
            grad = grad.add(param, alpha=wd)

        exp_avg = self.read_state(state, "exp_avg", p, group, signed=True)
        exp_avg_sq = self.read_state(state, "exp_avg_sq", p, group, signed=False)
        exp_avg.lerp_(grad, 1 - beta1)  # m = beta1 m + (1 - beta1) g
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)  # v = beta2 v + (1 - beta2) g^2
        second = exp_avg_sq
        if group["amsgrad"]:
            second = self.read_state(state, "max_exp_avg_sq", p, group, signed=False)
            torch.maximum(second, exp_avg_sq, out=second)
        # store first: a NaN/Inf gradient is refused there, before the parameter is touched
        self.write_state(state, "exp_avg", exp_avg, group, signed=True)
        self.write_state(state, "exp_avg_sq", exp_avg_sq, group, signed=False)
        if group["amsgrad"]:
            self.write_state(state, "max_exp_avg_sq", second, group, signed=False)

        if wd != 0 and group["decoupled_weight_decay"]:
            param.mul_(1 - lr * wd)
        step_size = lr / (1 - beta1**step)
        bias_correction2_sqrt = math.sqrt(1 - beta2**step)
        denom = (second.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
        if param is not p:
            p.copy_(param)
        state["step"] += 1


@OPTIMIZERS.register("adamw8bit")
class AdamW8bit(Adam8bit):
    """Drop-in for torch.optim.AdamW: Adam8bit with decoupled weight decay (default 1e-2)."""

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        **kwargs: Any,
    ) -> None:
        if kwargs.pop("decoupled_weight_decay", True) is not True:
            raise ValueError("AdamW8bit always decouples weight decay; use Adam8bit for L2 regularisation")
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, decoupled_weight_decay=True, **kwargs)
