"""Values of graph nodes recorded over all calibration rows (from one GraphRunner per batch), for training."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

from lowbit.ptq.runner import GraphRunner, StaleValue

ROWS, CONSTANT, ROW_COUNT = "rows", "constant", "row count"


@dataclass(frozen=True)
class Rows:
    """One node's value over the recorded rows: a tensor with the rows on axis 0 (`ROWS`), a value that does not
    depend on the rows (`CONSTANT`), or the number of rows itself (`ROW_COUNT`: a captured graph's symbolic
    batch size, e.g. the first argument of a view)."""

    value: Any
    kind: str
    rows: int

    def take(self, idx: torch.Tensor) -> Any:
        if self.kind == ROWS:
            return self.value[idx]
        return len(idx) if self.kind == ROW_COUNT else self.value


def _stack(values: list[Any], rows: list[int]) -> Rows:
    total = sum(rows)
    if all(isinstance(v, torch.Tensor) and v.dim() > 0 and len(v) == r for v, r in zip(values, rows, strict=True)):
        return Rows(torch.cat(values), ROWS, total)
    if all(isinstance(v, int) and v == r for v, r in zip(values, rows, strict=True)):
        return Rows(total, ROW_COUNT, total)
    return Rows(values[0], CONSTANT, total)


def record(runs: list[GraphRunner], nodes: list[fx.Node], mode: contextlib.AbstractContextManager) -> list[Rows]:
    """The values of `nodes` on every runner's batch, computed under `mode` (e.g. `qmodel.float_mode()`)."""
    per_run = []
    with mode, torch.no_grad():
        for r in runs:
            try:
                found = r.run_until(nodes)
            except StaleValue:
                r.restart()
                found = r.run_until(nodes)
            per_run.append([found[n] for n in nodes])
    rows = [r.rows for r in runs]
    return [_stack([v[i] for v in per_run], rows) for i in range(len(nodes))]


__all__ = ["CONSTANT", "ROWS", "ROW_COUNT", "Rows", "record"]
