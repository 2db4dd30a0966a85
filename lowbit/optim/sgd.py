"""SGD with momentum, the momentum buffer stored as 8-bit block-wise codes.

Polyak's heavy ball / Sutskever et al.'s Nesterov form exactly as torch.optim.SGD computes them; the buffer is
stored with the signed dynamic tree map, as in Dettmers et al., "8-bit Optimizers via Block-wise Quantization"
(2022), which evaluates 8-bit Momentum alongside 8-bit Adam.
"""

from __future__ import annotations

from typing import Any

import torch

from lowbit.optim.base import DEFAULT_BLOCK_SIZE, DEFAULT_MIN_8BIT_SIZE, OPTIMIZERS, Optimizer8bit

BUFFER = "momentum_buffer"


@OPTIMIZERS.register("sgd8bit")
class SGD8bit(Optimizer8bit):
    """Drop-in for torch.optim.SGD (same arguments and param groups) keeping the momentum buffer in 8 bits.

    With momentum 0 there is no state at all, as in torch. Extra arguments: block_size (2048) and
    min_8bit_size (4096). `foreach` is accepted and ignored; differentiable and fused are not supported.
    """

    def __init__(
        self,
        params: Any,
        lr: float | torch.Tensor = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        differentiable: bool = False,
        fused: bool | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        min_8bit_size: int = DEFAULT_MIN_8BIT_SIZE,
    ) -> None:
        if float(lr) < 0.0:
            raise ValueError(f"Invalid learning rate: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = dict(
            lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay, nesterov=nesterov,
            maximize=maximize, foreach=foreach, differentiable=differentiable, fused=fused,
            block_size=block_size, min_8bit_size=min_8bit_size,
        )  # fmt: skip
        super().__init__(params, defaults)

    def _update(self, p: torch.Tensor, group: dict) -> None:
        grad = self.grad_of(p, group["maximize"])
        momentum = group["momentum"]
        param = p.detach() if p.dtype == torch.float32 else p.detach().to(torch.float32)
        if group["weight_decay"] != 0:
            grad = grad.add(param, alpha=group["weight_decay"])
        if momentum != 0:
            state = self.state[p]
            if not state:  # the first step: the buffer starts as the gradient itself, as in torch
                fresh: dict = {}
                self.init_state(fresh, BUFFER, p, group, signed=True)
                buf = grad.clone()
                self.write_state(fresh, BUFFER, buf, group, signed=True)  # refuses NaN/Inf before any change
                state.update(fresh)
            else:
                buf = self.read_state(state, BUFFER, p, group, signed=True)
                buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
                self.write_state(state, BUFFER, buf, group, signed=True)
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        param.add_(grad, alpha=-float(group["lr"]))
        if param is not p:
            p.copy_(param)
