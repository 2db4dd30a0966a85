"""The shared machinery of the 8-bit optimizers: optimizer states kept as block-wise quantized codes.

Dettmers et al., "8-bit Optimizers via Block-wise Quantization" (ICLR 2022): each state tensor is split
into blocks of `block_size` elements; a block stores one float32 absmax and one uint8 code per element, the
index of the nearest level of the dynamic tree map (signed for states that change sign, unsigned for the
second moment).
A step dequantizes a state to float32, updates it, uses it, and requantizes it. Tensors with fewer than
`min_8bit_size` elements (biases, norms) keep plain float32 states: their absmax overhead would be large and
they hold little memory.

State layout per parameter, for a state called NAME: either ``NAME_codes`` (uint8, [numel]) and
``NAME_absmax`` (float32, [ceil(numel / block_size)]), or ``NAME`` (float32, the parameter's shape). Which
one a parameter uses is read from the keys present, so a loaded checkpoint is used as it was written.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch.optim import Optimizer

from lowbit.core.codebook import CodeTable, blockwise_dequantize, blockwise_quantize, dynamic_map
from lowbit.registry import Registry

OPTIMIZERS: Registry[type[Optimizer]] = Registry("8-bit optimizer")

DEFAULT_BLOCK_SIZE = 2048
DEFAULT_MIN_8BIT_SIZE = 4096
#: torch.optim switches that change how a step is executed, not what it computes; lowbit has one path.
UNSUPPORTED_SWITCHES = ("capturable", "differentiable", "fused")


def check_positive_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, not {value!r}")
    return value


class Optimizer8bit(Optimizer):
    """A torch Optimizer whose per-parameter states may be stored as 8-bit block-wise codes.

    Subclasses put their hyperparameters into `defaults`, and in `_update` read states with `read_state`,
    update them in float32, and store them back with `write_state`.
    """

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        for switch in UNSUPPORTED_SWITCHES:
            if defaults.get(switch):
                raise ValueError(f"{type(self).__name__} does not support {switch}=True; leave it False/None")
        defaults.setdefault("block_size", DEFAULT_BLOCK_SIZE)
        defaults.setdefault("min_8bit_size", DEFAULT_MIN_8BIT_SIZE)
        # the code tables are derived, not state: they are rebuilt here, never saved
        self._maps = {signed: CodeTable.build(dynamic_map(signed=signed)) for signed in (True, False)}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One step for every parameter with a gradient (`_update` is the method's rule); returns closure()."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_positive_int("block_size", group["block_size"])
        check_positive_int("min_8bit_size", group["min_8bit_size"], minimum=0)
        for p in group["params"]:
            if torch.is_complex(p):
                raise ValueError(
                    f"{type(self).__name__} does not support complex parameters (got {p.dtype}); "
                    "optimize torch.view_as_real(p) as a real parameter instead"
                )

    def grad_of(self, p: torch.Tensor, maximize: bool) -> torch.Tensor:
        """The parameter's gradient as float32 (negated when maximizing), after the bad-input checks."""
        grad = p.grad
        if grad.is_sparse:
            raise RuntimeError(
                f"{type(self).__name__} does not support sparse gradients; use torch.optim.SparseAdam, or "
                "sparse=False in nn.Embedding"
            )
        if torch.is_complex(grad):
            raise ValueError(f"{type(self).__name__} does not support complex gradients (got {grad.dtype})")
        grad = grad.detach().to(torch.float32)
        return -grad if maximize else grad

    # ---- quantized state --------------------------------------------------------------------------
    def init_state(self, state: dict, name: str, p: torch.Tensor, group: dict, signed: bool) -> None:
        """A zero state: 8-bit codes when p has at least min_8bit_size elements, else float32."""
        if p.numel() < group["min_8bit_size"]:
            state[name] = torch.zeros_like(p, dtype=torch.float32, memory_format=torch.preserve_format)
            return
        n_blocks = math.ceil(p.numel() / group["block_size"])
        zero_code = int((self._maps[signed].values == 0).nonzero())
        state[f"{name}_codes"] = torch.full((p.numel(),), zero_code, dtype=torch.uint8, device=p.device)
        state[f"{name}_absmax"] = torch.zeros(n_blocks, dtype=torch.float32, device=p.device)

    def read_state(self, state: dict, name: str, p: torch.Tensor, group: dict, signed: bool) -> torch.Tensor:
        """The state as a float32 tensor shaped like p (the stored tensor itself when kept in float32)."""
        if name in state:
            return state[name]
        values = self._maps[signed]
        codes, absmax = state[f"{name}_codes"], state[f"{name}_absmax"]
        return blockwise_dequantize(codes, absmax, values, p.shape, group["block_size"])

    def write_state(self, state: dict, name: str, value: torch.Tensor, group: dict, signed: bool) -> None:
        if name in state:
            if state[name] is not value:
                state[name].copy_(value)
            return
        codes, absmax = blockwise_quantize(value, self._maps[signed], group["block_size"])
        state[f"{name}_codes"], state[f"{name}_absmax"] = codes, absmax

    # ---- checkpoints ------------------------------------------------------------------------------
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """As torch's, but state tensors keep their saved dtypes: torch casts every floating-point
        parameter's state to the parameter's dtype, which would turn uint8 codes into floats."""
        super().load_state_dict(state_dict)
        saved_ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        for pid, (p, group) in zip(saved_ids, self._params_with_groups(), strict=True):
            saved = state_dict["state"].get(pid)
            if saved is None:
                continue
            self.state[p] = {
                k: v.detach().clone().to(p.device) if torch.is_tensor(v) else v for k, v in saved.items()
            }
            self._check_loaded(p, self.state[p], group)

    def _params_with_groups(self):
        return [(p, g) for g in self.param_groups for p in g["params"]]

    def _check_loaded(self, p: torch.Tensor, state: dict, group: dict) -> None:
        n_blocks = math.ceil(p.numel() / group["block_size"])
        for key, value in state.items():
            if key.endswith("_codes") and (value.dtype != torch.uint8 or value.numel() != p.numel()):
                raise ValueError(
                    f"state {key!r} holds {value.numel()} {value.dtype} codes for a parameter of "
                    f"{p.numel()} elements; the checkpoint belongs to another model"
                )
            if key.endswith("_absmax") and value.numel() != n_blocks:
                raise ValueError(
                    f"state {key!r} holds {value.numel()} block scales, block_size {group['block_size']} "
                    f"needs {n_blocks}; load it with the param groups (block_size) it was saved with"
                )
