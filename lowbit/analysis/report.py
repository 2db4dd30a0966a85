"""The quantization report: one HTML page with PNG plots, and report.json beside it.

    path = write_report(qmodel, task, "out/report", float_model=task.model,
                        metrics_before=..., metrics_after=..., latency=...)

It shows per-layer sensitivity (SQNR in dB with one layer quantized alone), the cumulative error curve, the
float input histograms of the most sensitive layers with every estimator's range, the layers and ops kept in
float and why, and the before/after summary (size, latency, task metric).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from lowbit.analysis import plots
from lowbit.analysis.html import page
from lowbit.analysis.ranges import layer_ranges
from lowbit.analysis.sensitivity import LayerError, cumulative_error, float_outputs, sensitivity
from lowbit.analysis.summary import size_summary
from lowbit.api import Batch, run_batch
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.metrics import cosine_similarity, sqnr_db

log = logging.getLogger(__name__)
DEFAULT_SAMPLES = (
    8  # rows of evaluation data the layer-by-layer analysis runs on (it runs the model ~2N times)
)
DEFAULT_HISTOGRAMS = 3


def analysis_batches(task_or_batches, max_samples: int = DEFAULT_SAMPLES) -> list[Batch]:
    """At most `max_samples` rows: from a ZooTask's evaluation data, or from the given batches."""
    batches = getattr(task_or_batches, "eval", task_or_batches)
    out, left = [], max_samples
    for b in batches:
        b = b if isinstance(b, (tuple, list)) else (b,)
        if left <= 0:
            break
        out.append(tuple(t[:left] for t in b))
        left -= len(out[-1][0])
    if not out:
        raise ValueError("the report needs at least one batch of data to analyse")
    return out


def write_report(
    qmodel: QuantizedModel,
    task_or_batches,
    out_dir: str | Path,
    *,
    float_model: torch.nn.Module | None = None,
    metrics_before: dict[str, float] | None = None,
    metrics_after: dict[str, float] | None = None,
    latency: dict | None = None,
    title: str = "lowbit quantization report",
    extra: dict | None = None,
    max_samples: int = DEFAULT_SAMPLES,
    n_histograms: int = DEFAULT_HISTOGRAMS,
    progress: bool | None = None,
) -> Path:
    """Write out_dir/report.html (+ PNGs and report.json) and return the HTML path. `extra` is a dict of
    further facts (e.g. the mixed-precision decisions) shown as a table and kept in the JSON."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    batches = analysis_batches(task_or_batches, max_samples)
    sens = sensitivity(qmodel, batches, progress=progress)
    cumul = cumulative_error(qmodel, batches, progress=progress)
    whole = _whole_model_error(qmodel, batches)
    figures = _plot_errors(qmodel, sens, cumul, whole, out)
    hist_figs, hist_data = _plot_ranges(qmodel, sens, batches, n_histograms, out)
    data = {
        "title": title,
        "analysis_samples": sum(len(b[0]) for b in batches),
        "whole_model": {"sqnr_db": _num(whole.sqnr_db), "cosine": whole.cosine},
        "sizes": size_summary(qmodel, float_model),
        "metrics_before": metrics_before or {},
        "metrics_after": metrics_after or {},
        "latency": latency or {},
        "sensitivity": [_err(e) for e in sens],
        "cumulative": [_err(e) for e in cumul],
        "ranges": hist_data,
        "kept_float": {
            i.name: {"type": i.module_type, "why": i.kept_float}
            for i in qmodel.layers.values()
            if i.kept_float
        },
        "float_ops": dict(qmodel.float_ops),
        "quantized_layers": len(qmodel.quantized_layers()),
        "layers": len(qmodel.layers),
        "folded_bn": len(qmodel.folded_bn),
        "extra": extra or {},
        "config": json.loads(qmodel.config.to_json()),
        "figures": [p.name for p in figures + hist_figs],
    }
    _write_text(out / "report.json", json.dumps(data, indent=2, default=str))
    html_path = out / "report.html"
    _write_text(html_path, page(data, figures, hist_figs))
    log.info("report written to %s", html_path)
    return html_path


def _whole_model_error(qmodel: QuantizedModel, batches: Sequence[Batch]) -> LayerError:
    ref = float_outputs(qmodel, batches)
    with torch.inference_mode():
        test = torch.cat([run_batch(qmodel, b).reshape(len(b[0]), -1).float() for b in batches])
    return LayerError("all layers", sqnr_db(ref, test), cosine_similarity(ref, test))


def _plot_errors(qmodel, sens, cumul, whole, out: Path) -> list[Path]:
    if not sens:
        return []
    return [
        plots.sensitivity_bars(
            [e.layer for e in sens],
            [e.sqnr_db for e in sens],
            out / "sensitivity.png",
            whole.sqnr_db,
            total_layers=len(sens),
        ),
        plots.cumulative_curve(
            [e.layer for e in cumul],
            [e.sqnr_db for e in cumul],
            [e.cosine for e in cumul],
            out / "cumulative.png",
        ),
    ]


def _plot_ranges(qmodel, sens, batches, n: int, out: Path) -> tuple[list[Path], list[dict]]:
    figures, data = [], []
    for e in sens:
        if len(figures) >= n:
            break
        r = layer_ranges(qmodel, e.layer, batches)
        if r is None:
            continue
        path = out / f"ranges_{len(figures) + 1}.png"
        title = f"Input of {r.layer} (sensitivity {_db(e.sqnr_db)}): estimator ranges"
        figures.append(plots.range_histogram(r.values.numpy(), r.ranges, title, path, r.used))
        data.append(
            {
                "layer": r.layer,
                "quantizer": r.quantizer,
                "figure": path.name,
                "ranges": {k: list(v) for k, v in r.ranges.items()},
                "errors": r.errors,
                "used": list(r.used) if r.used else None,
            }
        )
    return figures, data


def _err(e: LayerError) -> dict:
    return {"layer": e.layer, "sqnr_db": _num(e.sqnr_db), "cosine": e.cosine}


def _num(x: float) -> float | str:
    return x if math.isfinite(x) else ("inf" if x > 0 else "-inf")


def _db(x: float) -> str:
    return f"{x:.1f} dB" if math.isfinite(x) else "exact"


def _write_text(path: Path, text: str) -> None:
    """Atomic: write a temporary file, then rename it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
