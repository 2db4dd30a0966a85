"""EMA MinMax: exponential moving averages of each batch's per-block minimum and maximum.

r̂_t = α · r_t + (1 − α) · r̂_{t−1}, with r_t the batch's min (or max) and r̂_1 = r_1 (the first batch
initialises).
α = `momentum` is the weight of the newest batch: momentum 1 gives the MinMax of the last batch alone. This is
the moving-average observer of quantization-aware training (Jacob et al. 2018, section 3.1), written with the
new batch's weight as the parameter.
"""

from __future__ import annotations

import torch

from lowbit.calib.base import ESTIMATORS, PER_TENSOR, RangeEstimator
from lowbit.core.granularity import Granularity
from lowbit.core.qtype import QType

DEFAULT_MOMENTUM = 0.1


@ESTIMATORS.register("ema")
class EMAMinMaxEstimator(RangeEstimator):
    name = "ema"

    def __init__(self, granularity: Granularity = PER_TENSOR, momentum: float = DEFAULT_MOMENTUM) -> None:
        super().__init__(granularity)
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"EMA momentum is the weight of the newest batch, in (0, 1]; got {momentum}")
        self.momentum = momentum
        self.ema_min: torch.Tensor | None = None  # (num_blocks,)
        self.ema_max: torch.Tensor | None = None  # (num_blocks,)

    def _update(self, xb: torch.Tensor) -> None:
        lo, hi = xb.amin(dim=1), xb.amax(dim=1)  # (num_blocks,)
        if self.ema_min is None:
            self.ema_min, self.ema_max = lo, hi
            return
        a = self.momentum
        self.ema_min = a * lo + (1 - a) * self.ema_min
        self.ema_max = a * hi + (1 - a) * self.ema_max

    def _range(self, qtype: QType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return self.clip_to_data(self.ema_min, self.ema_max)  # equal in exact arithmetic; guards rounding
