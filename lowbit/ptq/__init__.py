"""Model-level post-training passes, one per file, each registered by the name a QuantConfig uses.

    from lowbit.ptq import CALIBRATIONS
    CALIBRATIONS.get("easyquant")(qmodel, batches)   # what config.calibration == "easyquant" runs

A calibration strategy is a function `(qmodel, batches, *, progress=None, **options)` that runs after the
estimators' calibration and rewrites the quantizers' QParams in place.
"""

from collections.abc import Callable

from lowbit.registry import Registry

CALIBRATIONS: Registry[Callable] = Registry("calibration strategy")

from lowbit.ptq import easyquant  # noqa: E402,F401  (registration; needs CALIBRATIONS defined above)

__all__ = ["CALIBRATIONS"]
