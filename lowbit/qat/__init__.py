"""Quantization-aware training: prepare a model, train it with any PyTorch loop, convert it.

    model_q = lowbit.qat.prepare(model, QATConfig("lsq", weight_bits=4, act_bits=4))
    ... train model_q ...  (optionally lowbit.qat.set_progress(model_q, step / total) for DSQ's annealing)
    deployed = lowbit.qat.convert(model_q)  # a lowbit.graph QuantizedModel, as lowbit.api.quantize returns
    eager = lowbit.qat.convert_eager(model_q)  # nn.Module with integer codes; .lowbit_qparams() per layer

Rescue (PTQ first, fine-tune only if needed):
    result = lowbit.qat.rescue(qmodel, train_batches, eval_fn, tolerance=0.01)

Methods, one file each (registry `METHODS`): ste, lsq, pact, dsq, binary-sign, binaryconnect, bwn, xnor, twn,
ttq, kmeans. Binary inference by XNOR and popcount: `lowbit.qat.binary_kernel`.
"""

from lowbit.qat import binary, bwn, dsq, kmeans, lsq, pact, ste_ema, ttq, twn, xnor  # noqa: F401 - registration
from lowbit.qat.base import METHODS, InputQuantizer, QATMethod, WeightQuantizer, set_progress
from lowbit.qat.config import FIRST, LAST, QATConfig
from lowbit.qat.convert import ConvertedModel, convert_eager
from lowbit.qat.pipeline import convert
from lowbit.qat.prepare import freeze_bn_stats, prepare
from lowbit.qat.rescue import RescueResult, rescue

__all__ = [
    "FIRST",
    "LAST",
    "METHODS",
    "ConvertedModel",
    "InputQuantizer",
    "QATConfig",
    "QATMethod",
    "RescueResult",
    "WeightQuantizer",
    "convert",
    "convert_eager",
    "freeze_bn_stats",
    "prepare",
    "rescue",
    "set_progress",
]
