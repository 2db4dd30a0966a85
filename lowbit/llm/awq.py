"""AWQ: activation-aware weight quantization by per-channel scaling.

Lin, Tang, Tang, Yang, Chen, Wang, Xiao, Dang, Gan, Han, "AWQ: Activation-aware Weight Quantization for LLM
Compression and Acceleration" (MLSys 2024, arXiv:2306.00978). A few input channels with large activations
carry the salient weights; scaling those weight columns up by s before quantization (and the activations down
by s, folded into the preceding op) shrinks their relative rounding error. The scale is
    s = s_X^alpha,   s_X = mean_tokens |X_j|,
normalised by sqrt(max(s) * min(s)), with alpha searched on a grid of `n_grid` points in [0, 1) to minimise
    || Q(W diag(s)) (diag(s)^-1 X) - W X ||^2
summed over the linear layers reading X (section 3.2; alpha = 0 is plain round-to-nearest, so the search never
does worse than it on the scored rows). Q is the config's own weight quantizer (per-group int4, NF4, ...).
Simplifications, said plainly: the error is measured at the group's linear outputs rather than at the output
of the whole attention/MLP block, and the paper's second step (searching a clipping range per group) is not
done. Registered as the float-stage pass "awq"; quantization itself is the config's weight spec.
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
N_GRID = 20
MAX_ROWS = 1024  # calibration rows (tokens) that score a candidate scale


def awq_scales(mean_x: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = s_X^alpha / sqrt(max * min) (the reference implementation's normalisation)."""
    s = mean_x.clamp_min(smoothing.MIN_SMOOTH_SCALE).pow(alpha)
    return (s / (s.max() * s.min()).sqrt()).clamp_min(smoothing.MIN_SMOOTH_SCALE)


@register_pass("awq", "float", paper="Lin et al. 2024, arXiv:2306.00978")
def awq(gm: fx.GraphModule, batches, *, config: QuantConfig, progress=None, n_grid: int = N_GRID,
        max_rows: int = MAX_ROWS) -> dict[str, float]:
    """Search and fold an activation-aware scale for every foldable group of linear layers; returns the alpha
    chosen per group (named by its first layer)."""
    if config.weight is None:
        raise ValueError("AWQ searches scales for weight quantization; this config keeps weights float")
    groups = smoothing.find_groups(gm, config)
    chosen: dict[str, float] = {}
    grid = [i / n_grid for i in range(n_grid)]
    if not groups:
        return chosen

    def after(node: fx.Node, values: list) -> list | None:
        group = groups.get(node)
        if group is None:
            return None
        x = flat_inputs(values)
        mean_x = x.abs().mean(0)
        rows = subsample(x, max_rows)
        ws = smoothing.weights(gm, group)
        errors = [smoothing.group_error(rows, ws, awq_scales(mean_x, a), config, True) for a in grid]
        best = min(range(len(grid)), key=errors.__getitem__)
        chosen[group.names[0]] = grid[best]
        if best == 0:
            return None  # s = 1: nothing to fold
        return smoothing.apply(gm, group, awq_scales(mean_x, grid[best]), values)

    walk(gm, batches, after=after, last=next(reversed(groups), None))  # groups are in graph order
    log.info("awq: %d groups, mean alpha %.2f", len(chosen), sum(chosen.values()) / max(len(chosen), 1))
    return chosen


__all__ = ["awq", "awq_scales"]
