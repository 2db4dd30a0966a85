"""lowbit: make trained PyTorch models low-bit, and prove what it cost.

    import lowbit
    qmodel = lowbit.quantize(model, calib_batches, "w8a8")
"""

from lowbit.api import calibrate, quantize
from lowbit.checkpoint import load, save
from lowbit.config import LayerRule, Mode, QuantConfig, QuantSpec, preset

__version__ = "0.1.0"
__all__ = ["LayerRule", "Mode", "QuantConfig", "QuantSpec", "calibrate", "load", "preset", "quantize", "save"]
