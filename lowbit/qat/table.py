"""TableQType: a per-layer table of learned levels (TTQ's {-W_n, 0, W_p}, k-means centroids).

It plugs into `lowbit.core`: codes index the sorted levels, so `dequantize(codes, QParams(scale, 0, table))`
returns `levels[codes] * scale` exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lowbit.core.qtype import QType


@dataclass(frozen=True)
class TableQType(QType):
    """Sorted float32 levels stored as a tuple of Python floats (exact: float32 values fit a float64)."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.values) < 2:
            raise ValueError("a table qtype needs at least two levels")
        if any(b < a for a, b in zip(self.values, self.values[1:], strict=False)):
            raise ValueError("table levels must be sorted; build the table with TableQType.from_levels")

    @property
    def name(self) -> str:
        return f"table{len(self.values)}"

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(len(self.values))))

    def levels(self) -> torch.Tensor:
        return torch.tensor(self.values, dtype=torch.float32)

    @classmethod
    def from_levels(cls, levels: torch.Tensor, codes: torch.Tensor) -> tuple[TableQType, torch.Tensor]:
        """Sort `levels` and remap `codes` (indices into the unsorted levels) to the sorted table."""
        levels = levels.detach().to(torch.float32).reshape(-1)
        order = torch.argsort(levels, stable=True)
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.numel())
        return cls(tuple(float(v) for v in levels[order])), rank[codes.long()].to(torch.int32)
