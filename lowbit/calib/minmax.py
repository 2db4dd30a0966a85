"""MinMax: the exact running minimum and maximum of every block (no clipping)."""

from __future__ import annotations

import torch

from lowbit.calib.base import ESTIMATORS, RangeEstimator
from lowbit.core.qtype import QType


@ESTIMATORS.register("minmax")
class MinMaxEstimator(RangeEstimator):
    """The range of everything observed; the base class already tracks it exactly."""

    name = "minmax"

    def _update(self, xb: torch.Tensor) -> None:
        pass  # RangeEstimator.observe keeps the running min/max

    def _range(self, qtype: QType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min.clone(), self.max.clone()
