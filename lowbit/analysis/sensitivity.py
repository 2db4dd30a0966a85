"""Per-layer sensitivity: quantize one layer alone and measure the model output's SQNR and cosine against
the float model; cumulative error: quantize layers one more at a time, in graph order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from lowbit.api import Batch, run_batch
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.metrics import cosine_similarity, sqnr_db


@dataclass(frozen=True)
class LayerError:
    layer: str
    sqnr_db: float
    cosine: float


def _outputs(qmodel: QuantizedModel, batches: Sequence[Batch]) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([run_batch(qmodel, b).reshape(len(b[0]), -1).float() for b in batches])


def float_outputs(qmodel: QuantizedModel, batches: Sequence[Batch]) -> torch.Tensor:
    with qmodel.float_mode():
        return _outputs(qmodel, batches)


def _error(layer: str, ref: torch.Tensor, out: torch.Tensor) -> LayerError:
    return LayerError(layer, float(sqnr_db(ref, out)), float(cosine_similarity(ref, out)))


def sensitivity(qmodel: QuantizedModel, batches: Sequence[Batch], progress: bool | None = None) -> list[LayerError]:
    """One entry per quantized layer, most sensitive (lowest SQNR) first."""
    ref = float_outputs(qmodel, batches)
    result = []
    layers = [info.name for info in qmodel.quantized_layers()]
    for name in tqdm(layers, desc="sensitivity", disable=None if progress is None else not progress, leave=False):
        with qmodel.quantization_enabled(layers={name}, outputs=False):
            result.append(_error(name, ref, _outputs(qmodel, batches)))
    return sorted(result, key=lambda e: e.sqnr_db)


def cumulative_error(
    qmodel: QuantizedModel, batches: Sequence[Batch], progress: bool | None = None
) -> list[LayerError]:
    """Output error with layers 1..k quantized, for each k in graph order (where the error builds up)."""
    ref = float_outputs(qmodel, batches)
    on: set[str] = set()
    result = []
    for info in tqdm(qmodel.quantized_layers(), desc="cumulative", disable=None if progress is None else not progress,
                     leave=False):
        on.add(info.name)
        with qmodel.quantization_enabled(layers=set(on), outputs=False):
            result.append(_error(info.name, ref, _outputs(qmodel, batches)))
    return result
