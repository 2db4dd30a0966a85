"""The comparison behind `lowbit thresholds`: every estimator's range, MSE and SQNR on one tensor."""

from __future__ import annotations

import math

import torch

from lowbit.calib.base import make_estimator
from lowbit.core.granularity import PerTensor
from lowbit.core.primitives import fake_quantize
from lowbit.core.qtype import QType
from lowbit.metrics import sqnr_db

DEFAULT_BATCHES = 8


def split_batches(x: torch.Tensor, batches: int) -> list[torch.Tensor]:
    """Contiguous chunks of the flattened tensor (chunks along axis 0 for a row-major tensor)."""
    if batches < 1:
        raise ValueError(f"batches must be at least 1, got {batches}")
    return list(torch.tensor_split(x.reshape(-1), min(batches, x.numel())))


def method_result(name: str, x: torch.Tensor, qtype: QType, symmetric: bool, batches: int) -> dict:
    """{"min", "max", "mse", "sqnr_db"} of one estimator fed `batches` chunks of x, quantizing all of x."""
    est = make_estimator(name, granularity=PerTensor())
    for chunk in split_batches(x, batches):
        est.observe(chunk)
    lo, hi = est.compute_range(qtype, symmetric)
    qp = est.qparams(qtype, symmetric)
    xf = x.to(torch.float32)
    x_hat = fake_quantize(xf, qp)
    mse = float((xf.double() - x_hat.double()).pow(2).mean())
    sqnr = sqnr_db(xf, x_hat)
    return {
        "min": float(lo[0]),
        "max": float(hi[0]),
        "mse": mse,
        "sqnr_db": sqnr if math.isfinite(sqnr) else None,
    }


def compare(x: torch.Tensor, qtype: QType, symmetric: bool, methods, batches: int = DEFAULT_BATCHES) -> dict:
    """{method: result or {"error": message}} for each method; one failing method does not hide the others."""
    bad = int((~torch.isfinite(x.to(torch.float32))).sum())
    if bad:
        raise ValueError(
            f"the tensor holds {bad} NaN/Inf values out of {x.numel()}; clean it before choosing a range"
        )
    if x.numel() == 0:
        raise ValueError("the tensor is empty; pick a tensor with data")
    out = {}
    for name in methods:
        try:
            out[name] = method_result(name, x, qtype, symmetric, batches)
        except ValueError as err:
            out[name] = {"error": str(err)}
    return out
