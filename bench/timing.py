"""Latency of several variants side by side: warm up, then alternate A B C ... C B A, medians.

Each sample times `inner` back-to-back calls, with `inner` chosen from the warm-up so that a sample lasts at
least MIN_SAMPLE_S (timer resolution and scheduling noise matter for sub-millisecond models). Before each sample
the caller sleeps SETTLE_S: the previous variant's runtime threads spin for a while after their last call (OpenMP's
and onnxruntime's defaults) and would otherwise share the cores with the sample.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

MIN_SAMPLE_S = 0.02
SETTLE_S = 0.1
MS_PER_S = 1000.0


def _timed(fn: Callable[[], object], inner: int) -> float:
    start = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - start) / inner


def alternate(calls: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, dict]:
    """Median latency (ms) per name; calls that raise are reported with their error and dropped."""
    errors: dict[str, str] = {}
    inner: dict[str, int] = {}
    for name, fn in calls.items():
        try:
            for _ in range(warmup):
                fn()
            once = _timed(fn, 1)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            continue
        inner[name] = max(1, int(MIN_SAMPLE_S / max(once, 1e-9)))
    live = [n for n in calls if n not in errors]
    samples: dict[str, list[float]] = {n: [] for n in live}
    for rep in range(repeats):
        order = live if rep % 2 == 0 else live[::-1]
        for name in order:
            time.sleep(SETTLE_S)
            samples[name].append(_timed(calls[name], inner[name]) * MS_PER_S)
    out = {n: {"median_ms": statistics.median(s), "samples_ms": s, "inner": inner[n]} for n, s in samples.items()}
    out.update({n: {"error": e} for n, e in errors.items()})
    return out
