"""What a folded BatchNorm said about its layer's output, kept on the layer's fx node.

BatchNorm normalises its input to zero mean and unit variance per channel and then applies gamma and beta, so it
assumes its output (the folded layer's output) is N(beta, gamma^2) per channel (Nagel et al. 2019, section 4.2).
`fold_bn` records that as `node.meta[META_KEY]` on the conv/linear node it folded into; float passes that rescale
or shift output channels (cross-layer equalization, high-bias absorption) update it. Placement inserts
quantizers around the same nodes and `recompile` keeps node meta, so the statistics reach the quantized stage,
where the analytic bias correction reads them instead of calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

META_KEY = "lowbit_bn_stats"


@dataclass(frozen=True)
class BNStats:
    """Per-channel mean and standard deviation of a layer's output, as its folded BatchNorm assumed them."""

    mean: torch.Tensor
    std: torch.Tensor

    @classmethod
    def from_bn(cls, gamma: torch.Tensor, beta: torch.Tensor) -> BNStats:
        return cls(beta.detach().clone(), gamma.detach().abs().clone())

    def scaled(self, s: torch.Tensor) -> BNStats:
        """The statistics after output channel i is divided by s_i."""
        return BNStats(self.mean / s, self.std / s)

    def shifted(self, c: torch.Tensor) -> BNStats:
        """The statistics after c_i is subtracted from output channel i."""
        return BNStats(self.mean - c, self.std)


def bn_stats(node: fx.Node) -> BNStats | None:
    return node.meta.get(META_KEY)


def set_bn_stats(node: fx.Node, stats: BNStats) -> None:
    node.meta[META_KEY] = stats


def scale_bn_stats(node: fx.Node, s: torch.Tensor) -> None:
    """Record that the node's output channel i was divided by s_i (no-op without statistics)."""
    stats = bn_stats(node)
    if stats is not None:
        set_bn_stats(node, stats.scaled(s))


def shift_bn_stats(node: fx.Node, c: torch.Tensor) -> None:
    """Record that c_i was subtracted from the node's output channel i (no-op without statistics)."""
    stats = bn_stats(node)
    if stats is not None:
        set_bn_stats(node, stats.shifted(c))


__all__ = ["META_KEY", "BNStats", "bn_stats", "scale_bn_stats", "set_bn_stats", "shift_bn_stats"]
