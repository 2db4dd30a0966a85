"""Reference tasks: real models and real data that install offline (see ../shared/DATA.md).

    task = lowbit.zoo.load("minilm")            # or "efficientnet-lite0", "smollm2", "fashion-cnn"
    print(task.evaluate(task.model))            # fp32 against itself: perfect fidelity

Submodules import their heavy dependencies (transformers, scikit-image, ...) only when a loader runs.
"""

from __future__ import annotations

from collections.abc import Callable

from lowbit.registry import Registry
from lowbit.zoo import data, efficientnet, fashion, minilm, smollm2
from lowbit.zoo.task import Batch, ZooTask, batched

__all__ = [
    "Batch",
    "ZooTask",
    "batched",
    "load",
    "names",
    "LOADERS",
    "data",
    "efficientnet",
    "fashion",
    "minilm",
    "smollm2",
]

LOADERS: Registry[Callable[..., ZooTask]] = Registry("zoo task")
LOADERS.register("efficientnet-lite0")(efficientnet.load)
LOADERS.register("minilm")(minilm.load)
LOADERS.register("smollm2")(smollm2.load)
LOADERS.register("fashion-cnn")(fashion.load)


def names() -> list[str]:
    """Names accepted by load()."""
    return LOADERS.names()


def load(name: str, n_calib: int | None = None, n_eval: int | None = None) -> ZooTask:
    """Build the named task. n_calib / n_eval cap the calibration / evaluation samples (None: the task's
    default;
    units are images for the vision tasks, sentences for minilm, token windows for smollm2)."""
    return LOADERS.get(name)(n_calib=n_calib, n_eval=n_eval)
