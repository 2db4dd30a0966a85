"""Streaming range estimators: observe calibration batches, then produce a clipping range and QParams.

    est = make_estimator("kl", granularity=PerTensor())
    for x in batches:
        est.observe(x)
    qp = est.qparams(get_qtype("int8"), symmetric=True)

Names: minmax, ema, percentile, mse, kl, admm, aciq (each module registers itself in ESTIMATORS).
"""

from lowbit.calib import aciq, admm, ema, kl, minmax, mse, percentile  # noqa: F401  (registration)
from lowbit.calib.base import ESTIMATORS, RangeEstimator, make_estimator
from lowbit.calib.histogram import HistogramEstimator, StreamingHistogram

METHODS = ("minmax", "ema", "percentile", "mse", "kl", "admm", "aciq")  # the order reports list them in

__all__ = [
    "ESTIMATORS",
    "METHODS",
    "HistogramEstimator",
    "RangeEstimator",
    "StreamingHistogram",
    "make_estimator",
]
