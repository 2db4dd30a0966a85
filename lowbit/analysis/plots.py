"""The report's PNG plots (matplotlib, Agg backend: no display needed). Each function draws one figure from
plain data and writes it to `path`; none of them knows about models."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never open a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_BARS = 40  # the sensitivity chart shows at most this many layers (the most sensitive)
FINITE_CAP_DB = 150.0  # an exact layer (infinite SQNR) is drawn at this height and labelled "exact"
HIST_BINS = 200
DPI = 110
COLORS = plt.get_cmap("tab10").colors


def _finite(values: Sequence[float]) -> np.ndarray:
    return np.array([FINITE_CAP_DB if math.isinf(v) and v > 0 else v for v in values], dtype=float)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def sensitivity_bars(
    names: Sequence[str],
    sqnr: Sequence[float],
    path: Path,
    whole_model_db: float | None,
    total_layers: int | None = None,
) -> Path:
    """Horizontal bars of output SQNR (dB) with one layer quantized alone, most sensitive at the top."""
    names, values = list(names)[:MAX_BARS], _finite(sqnr)[:MAX_BARS]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.24 * max(len(names), 3)))
    y = np.arange(len(names))
    ax.barh(y, values, color=COLORS[0])
    ax.set_yticks(y, names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("model output SQNR (dB) with only this layer quantized (higher is safer)")
    shown = (
        f"{len(names)} most sensitive of {total_layers}"
        if total_layers and total_layers > len(names)
        else f"{len(names)} layers"
    )
    ax.set_title(f"Per-layer sensitivity ({shown})")
    if whole_model_db is not None and math.isfinite(whole_model_db):
        ax.axvline(
            whole_model_db,
            color="crimson",
            linestyle="--",
            label=f"all layers quantized: {whole_model_db:.1f} dB",
        )
        ax.legend(loc="upper right", fontsize=8, framealpha=0.95)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def cumulative_curve(
    names: Sequence[str], sqnr: Sequence[float], cosine: Sequence[float], path: Path
) -> Path:
    """Output SQNR and cosine distance (1 - cosine, log scale) as layers 1..k are quantized in graph order;
    the layer whose addition costs the most dB is marked."""
    k = np.arange(1, len(names) + 1)
    db = _finite(sqnr)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    ax.plot(k, db, marker=".", color=COLORS[0])
    ax.set_xlabel("layers quantized, in graph order (first k)")
    ax.set_ylabel("model output SQNR (dB)", color=COLORS[0])
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    distance = np.clip(1.0 - np.asarray(cosine, dtype=float), 1e-12, None)
    twin.semilogy(k, distance, color=COLORS[1], linewidth=1)
    twin.set_ylabel("1 - output cosine (log)", color=COLORS[1])
    if len(names) > 1:
        drops = db[:-1] - db[1:]
        i = int(np.argmax(drops)) + 1
        ax.annotate(
            f"largest drop: {names[i]} (-{drops[i - 1]:.1f} dB)",
            (k[i], db[i]),
            xytext=(0.4, 0.55),
            textcoords="axes fraction",
            fontsize=8,
            arrowprops={"arrowstyle": "->", "color": "crimson"},
        )
    ax.set_title(f"Cumulative error as layers are quantized ({len(names)} layers)", fontsize=10)
    return _save(fig, path)


def range_histogram(
    values: np.ndarray,
    ranges: dict[str, tuple[float, float]],
    title: str,
    path: Path,
    chosen: tuple[float, float] | None = None,
) -> Path:
    """Histogram (log counts) of one layer's float input, with each estimator's clipping range as a pair of
    vertical lines (lo dashed-dotted, hi dashed) and the range the model uses as a thick grey band edge."""
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.hist(values, bins=HIST_BINS, color="0.55", log=True)
    for i, (method, (lo, hi)) in enumerate(ranges.items()):
        color = COLORS[i % len(COLORS)]
        ax.axvline(lo, color=color, linestyle="-.", linewidth=1.2)
        ax.axvline(hi, color=color, linestyle="--", linewidth=1.2, label=f"{method}: [{lo:.3g}, {hi:.3g}]")
    if chosen is not None:
        for edge in chosen:
            ax.axvline(edge, color="black", linewidth=2.5, alpha=0.35)
        ax.plot(
            [],
            [],
            color="black",
            linewidth=2.5,
            alpha=0.35,
            label=f"used: [{chosen[0]:.3g}, {chosen[1]:.3g}]",
        )
    ax.set_xlabel("input value (float model)")
    ax.set_ylabel("count (log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper right")
    return _save(fig, path)
