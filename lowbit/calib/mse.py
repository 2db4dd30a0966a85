"""MSE: the clipping range that minimises the quantization mean squared error of the observed distribution.

The error of a candidate range is computed on the histogram, taking the data as uniform inside each bin (and
inside the exact [min, max]): for a bin [a, b] whose ends round to levels L_a and L_b, with the decision
boundary
d = (L_a + L_b) / 2 between them, the bin's mean squared error is

    ( ∫_a^d (x − L_a)² dx + ∫_d^b (x − L_b)² dx ) / (b − a),

exact whenever a bin holds at most one decision boundary (bins finer than the quantization step). The levels
come
from `QParams.from_range` and the qtype's own encode/decode, so every qtype (bits, signedness, narrow range,
floats, codebooks) is searched on its real grid.

Search: symmetric, a threshold T on a grid of fractions of max|x|, refined around the best; asymmetric, a 32
x 32
grid of (lo, hi) as fractions of (min, max), then coordinate descent (hi with lo fixed, lo with hi fixed) on
finer
grids. Exact zeros (ReLU outputs) are counted apart: every grid represents 0 exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from lowbit.calib.base import ESTIMATORS, PER_TENSOR
from lowbit.calib.histogram import DEFAULT_BINS, HistogramEstimator
from lowbit.core.granularity import Granularity, PerChannel
from lowbit.core.primitives import fake_quantize
from lowbit.core.qparams import QParams
from lowbit.core.qtype import IntQType, QType

COARSE_STEPS = 128  # candidate fractions of the largest range
FINE_STEPS = 64  # candidates between the two neighbours of the best coarse one
GRID_2D_STEPS = 16  # per side of the asymmetric (lo, hi) grid
COARSE_BINS = (
    1024  # signed bins the coarse grids are evaluated on (bin pairs merged exactly); fine grids use all
)
ASYMMETRIC_ROUNDS = 2  # coordinate-descent rounds after the 2-D grid
MAX_CHUNK = 1 << 19  # elements of a (rows, candidates, bins) evaluation held at once (~40 MB of temporaries)


def range_errors(
    counts: torch.Tensor,
    edges: torch.Tensor,
    data_min,
    data_max,
    lo: torch.Tensor,
    hi: torch.Tensor,
    qtype: QType,
    symmetric: bool,
) -> torch.Tensor:
    """Summed squared quantization error of histogram rows for candidate ranges.

    counts (rows, B), edges (rows, B + 1), data_min/data_max (rows,), lo/hi (rows, K) -> (rows, K)."""
    rows, k = lo.shape
    keep = counts.sum(dim=0) > 0  # drop bins empty in every row: (B,) mask
    n = counts[:, keep].to(torch.float64)  # (rows, B')
    a = edges[:, :-1][:, keep].clamp(min=data_min[:, None], max=data_max[:, None])  # (rows, B')
    b = edges[:, 1:][:, keep].clamp(min=data_min[:, None], max=data_max[:, None])  # (rows, B')
    qp = QParams.from_range(
        lo.reshape(-1), hi.reshape(-1), qtype, PerChannel(0), symmetric
    )  # rows * K blocks

    def levels(
        x: torch.Tensor,
    ) -> torch.Tensor:  # (rows, B') -> (rows, K, B') rounded onto each candidate's grid
        xk = x[:, None, :].expand(rows, k, x.shape[1]).reshape(rows * k, -1).to(torch.float32)
        return fake_quantize(xk, qp).reshape(rows, k, -1).to(torch.float64)

    la, lb = levels(a), levels(b)
    a, b = a[:, None, :], b[:, None, :]  # (rows, 1, B')
    d = ((la + lb) / 2).clamp(min=a, max=b)
    integral = ((d - la) ** 3 - (a - la) ** 3 + (b - lb) ** 3 - (d - lb) ** 3) / 3
    width = b - a
    mean_sq = torch.where(
        width > 0, integral / width.clamp(min=torch.finfo(torch.float64).tiny), (a - la) ** 2
    )
    return (mean_sq * n[:, None, :]).sum(dim=2)  # (rows, K)


def best_of(errors: Callable[[torch.Tensor], torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    """The candidate of each row (f: (rows, K)) with the least error: (rows,)."""
    return f.gather(1, errors(f).argmin(dim=1, keepdim=True)).reshape(-1)


def fine_grid(centre: torch.Tensor, half_width: float) -> torch.Tensor:
    """(rows, FINE_STEPS + 1) fractions around each row's centre, the centre itself included."""
    offsets = torch.linspace(-half_width, half_width, FINE_STEPS, dtype=torch.float64, device=centre.device)
    fine = (centre[:, None] + offsets[None, :]).clamp(min=half_width / FINE_STEPS, max=1.0)
    return torch.cat([fine, centre[:, None]], dim=1)


def search(coarse_errors, errors, rows: int, device=None) -> torch.Tensor:
    """The fraction f in (0, 1] per row minimising the error ((rows, K) -> (rows, K)): a grid on merged bins,
    then a
    finer grid on all bins around the best."""
    coarse = torch.arange(1, COARSE_STEPS + 1, dtype=torch.float64, device=device) / COARSE_STEPS
    best = best_of(coarse_errors, coarse.expand(rows, -1).contiguous())
    return best_of(errors, fine_grid(best, 1.0 / COARSE_STEPS))


@ESTIMATORS.register("mse")
class MSEEstimator(HistogramEstimator):
    """Clipping range minimising the expected quantization MSE (as in Sung et al. 2015; NVIDIA's
    TensorRT/pytorch-
    quantization "mse" calibrator), searched on the streaming histogram."""

    name = "mse"

    def __init__(self, granularity: Granularity = PER_TENSOR, bins: int = DEFAULT_BINS) -> None:
        super().__init__(granularity, bins)

    def _errors(self, qtype: QType, symmetric: bool, to_range, coarse: bool = False):
        """errors(f) -> (rows, K) for candidate fractions f (rows, K) made ranges by `to_range(f, rows)`."""
        counts, edges = self.hist.counts_without_zeros(), self.hist.edges()  # zeros are exact on every grid
        merge = max(1, counts.shape[1] // COARSE_BINS) if coarse else 1
        while counts.shape[1] % merge:
            merge -= 1
        counts = counts.reshape(counts.shape[0], -1, merge).sum(dim=2)  # (rows, 2 * bins / merge)
        edges = edges[:, ::merge]  # (rows, 2 * bins / merge + 1)
        lo_d, hi_d = self.min.to(torch.float64), self.max.to(torch.float64)

        def errors(f: torch.Tensor) -> torch.Tensor:
            bins = counts.shape[1]
            rows_step = max(1, MAX_CHUNK // (bins * f.shape[1]))
            cols_step = max(1, MAX_CHUNK // bins)
            out = []
            for r in range(0, f.shape[0], rows_step):  # chunks of rows and candidates bound the memory
                sl = slice(r, r + rows_step)
                parts = []
                for c in range(0, f.shape[1], cols_step):
                    lo, hi = to_range(f[sl, c : c + cols_step], sl)
                    parts.append(
                        range_errors(counts[sl], edges[sl], lo_d[sl], hi_d[sl], lo, hi, qtype, symmetric)
                    )
                out.append(torch.cat(parts, dim=1))
            return torch.cat(out)

        return errors

    def _clip(self, lo: torch.Tensor, hi: torch.Tensor, sl: slice) -> tuple[torch.Tensor, torch.Tensor]:
        d_lo, d_hi = self.min[sl, None].to(lo.dtype), self.max[sl, None].to(lo.dtype)  # (rows, 1)
        lo, hi = torch.broadcast_tensors(lo, hi)  # (rows, K)
        new_lo = torch.maximum(d_lo, lo).clamp(max=d_hi)
        return new_lo, torch.minimum(d_hi, hi).clamp(min=new_lo)

    def _range(self, qtype: QType, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if symmetric:
            return self._symmetric(qtype)
        return self._asymmetric(qtype)

    def _symmetric(self, qtype: QType) -> tuple[torch.Tensor, torch.Tensor]:
        """Threshold search; for unsigned integers on data with negatives, also the positive-only grid [0, T]
        (negatives clipped to 0, all levels on the positive side), keeping whichever costs less."""
        rows, device = self.min.numel(), self.min.device
        amax = torch.maximum(self.min.abs(), self.max.abs()).to(torch.float64)  # (rows,)
        families = [torch.full_like(amax, -1.0)]  # lo = -T
        if isinstance(qtype, IntQType) and not qtype.signed and bool((self.min < 0).any()):
            families.append(torch.zeros_like(amax))  # lo = 0 * T
        best_t, best_err = None, None
        for neg in families:

            def to_range(f, sl, neg=neg):
                t = f * amax[sl, None]
                return self._clip(neg[sl, None] * t, t, sl)

            errors = self._errors(qtype, True, to_range)
            f = search(self._errors(qtype, True, to_range, coarse=True), errors, rows, device)
            err = errors(f[:, None]).reshape(-1)
            lo, hi = to_range(f[:, None], slice(None))
            if best_err is None:
                best_t, best_err = (lo.reshape(-1), hi.reshape(-1)), err
            else:
                better = err < best_err
                best_t = (
                    torch.where(better, lo.reshape(-1), best_t[0]),
                    torch.where(better, hi.reshape(-1), best_t[1]),
                )
                best_err = torch.minimum(err, best_err)
        return best_t[0].to(torch.float32), best_t[1].to(torch.float32)

    def _asymmetric(self, qtype: QType) -> tuple[torch.Tensor, torch.Tensor]:
        """A 2-D grid over (lo, hi) as fractions of (min, max), then coordinate descent on finer 1-D grids."""
        rows = self.min.numel()
        neg = self.min.clamp(max=0).to(torch.float64)[:, None]  # (rows, 1) most negative end
        pos = self.max.clamp(min=0).to(torch.float64)[:, None]
        steps = torch.arange(1, GRID_2D_STEPS + 1, dtype=torch.float64, device=neg.device) / GRID_2D_STEPS
        f_lo = steps.repeat_interleave(GRID_2D_STEPS).expand(rows, -1)  # (rows, S * S)
        f_hi = steps.repeat(GRID_2D_STEPS).expand(rows, -1)

        def both(f, sl):  # f: (rows, K) indexes into the flattened (f_lo, f_hi) grid
            idx = f.long()
            return self._clip(f_lo[sl].gather(1, idx) * neg[sl], f_hi[sl].gather(1, idx) * pos[sl], sl)

        flat = torch.arange(GRID_2D_STEPS**2, dtype=torch.float64, device=neg.device).expand(rows, -1)
        idx = best_of(self._errors(qtype, False, both, coarse=True), flat.contiguous()).long()
        lo_f, hi_f = f_lo.gather(1, idx[:, None]).reshape(-1), f_hi.gather(1, idx[:, None]).reshape(-1)
        for _ in range(ASYMMETRIC_ROUNDS):
            hi_err = self._errors(
                qtype, False, lambda f, sl, lo_f=lo_f: self._clip(lo_f[sl, None] * neg[sl], f * pos[sl], sl)
            )
            hi_f = best_of(hi_err, fine_grid(hi_f, 1.0 / GRID_2D_STEPS))
            lo_err = self._errors(
                qtype, False, lambda f, sl, hi_f=hi_f: self._clip(f * neg[sl], hi_f[sl, None] * pos[sl], sl)
            )
            lo_f = best_of(lo_err, fine_grid(lo_f, 1.0 / GRID_2D_STEPS))
        lo, hi = self._clip(lo_f[:, None] * neg, hi_f[:, None] * pos, slice(None))
        return lo.reshape(-1).to(torch.float32), hi.reshape(-1).to(torch.float32)
