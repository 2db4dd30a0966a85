"""SmoothQuant: migrate the difficulty of activation outliers into the weights.

Xiao, Lin, Seznec, Wu, Demouth, Han, "SmoothQuant: Accurate and Efficient Post-Training Quantization for
Large Language Models" (ICML 2023, arXiv:2211.10438). LLM activations have a few input channels with
magnitudes 10-100x the rest, so a per-token int8 scale wastes its range on them, while weights are flat. With
per-input-channel factors
    s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)
(max|W_j| over every linear layer reading X), X diag(s)^-1 and W diag(s) are both easy to quantize and their
product is unchanged; the division folds into the preceding norm or linear layer (`lowbit.llm.smoothing`).
alpha = 0.5 is the paper's default; `search=True` picks alpha per group from `ALPHAS`, minimising the group's
quantized output error on calibration rows (the paper searches one alpha per model on a validation set).
Registered as the float-stage pass "smoothquant"; pair it with W8A8 per-token dynamic activations and
per-channel weights (preset "w8a8-smoothquant").
"""

from __future__ import annotations

import logging

import torch
from torch import fx

from lowbit.config import QuantConfig
from lowbit.llm import smoothing
from lowbit.llm.walk import flat_inputs, subsample, walk
from lowbit.ptq import register_pass

log = logging.getLogger(__name__)
DEFAULT_ALPHA = 0.5
ALPHAS = tuple(i / 20 for i in range(4, 19))  # 0.2 .. 0.9
MAX_ROWS = 1024  # calibration rows (tokens) that score a candidate alpha


def smooth_scales(amax_x: torch.Tensor, amax_w: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1-alpha) (eq. 4 of the paper); 1 for channels that are all zero."""
    floor = smoothing.MIN_SMOOTH_SCALE
    s = amax_x.clamp_min(floor).pow(alpha) / amax_w.clamp_min(floor).pow(1 - alpha)
    return torch.where((amax_x > 0) & (amax_w > 0), s, torch.ones_like(s)).clamp_min(floor)


@register_pass("smoothquant", "float", paper="Xiao et al. 2023, arXiv:2211.10438")
def smoothquant(gm: fx.GraphModule, batches, *, config: QuantConfig, progress=None, alpha: float = DEFAULT_ALPHA,
                search: bool = False, max_rows: int = MAX_ROWS, explicit: bool = False,
                after_activations: bool = False) -> dict[str, float]:
    """Fold per-channel smoothing factors into norms/linears and the linear layers' weights; returns the alpha
    used per group (named by its first layer). `explicit`: producers with nowhere to fold 1/s (BERT's LayerNorm,
    also read by the residual) get a per-channel multiply before their linears (`smoothing.insert_muls`);
    `after_activations` adds one after activation functions (GELU) too, which costs run time and measured worse
    on MiniLM (PTQ table: cosine 0.9939 against 0.9958 without)."""
    if explicit:
        smoothing.insert_muls(gm, config, after_activations=after_activations)
    groups = smoothing.find_groups(gm, config)
    chosen: dict[str, float] = {}
    if not groups:
        return chosen

    def after(node: fx.Node, values: list) -> list | None:
        group = groups.get(node)
        if group is None:
            return None
        x = flat_inputs(values)
        ws = smoothing.weights(gm, group)
        amax_x = x.abs().amax(0)
        amax_w = torch.stack([w.abs().amax(0) for w in ws]).amax(0)
        a = alpha
        if search:
            rows = subsample(x, max_rows)
            errors = [smoothing.group_error(rows, ws, smooth_scales(amax_x, amax_w, c), config, True)
                      for c in ALPHAS]
            a = ALPHAS[min(range(len(ALPHAS)), key=errors.__getitem__)]
        chosen[group.names[0]] = a
        return smoothing.apply(gm, group, smooth_scales(amax_x, amax_w, a), values)

    walk(gm, batches, after=after, last=next(reversed(groups), None))  # groups are in graph order
    log.info("smoothquant: %d groups smoothed, alpha %s", len(chosen),
             f"searched, mean {sum(chosen.values()) / max(len(chosen), 1):.2f}" if search else alpha)
    return chosen


__all__ = ["ALPHAS", "smooth_scales", "smoothquant"]
