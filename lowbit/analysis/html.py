"""The report's HTML page from the report's data dict (see report.py). Plain HTML, inline CSS, no scripts."""

from __future__ import annotations

import json
import math
from html import escape
from pathlib import Path

CSS = """body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;color:#222}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:.9em}
th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}
.note{color:#555;font-size:.9em}pre{background:#f7f7f7;padding:.6em;font-size:.8em;overflow:auto}"""
TOP_ROWS = 12  # rows of the sensitivity table


def _fmt(v) -> str:
    if isinstance(v, float):
        if math.isinf(v) or math.isnan(v):
            return str(v)
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    return escape(str(v))


def table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{"n" if isinstance(c, (int, float)) else ""}">{_fmt(c)}</td>' for c in r)
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary(d: dict) -> str:
    s, rows = d["sizes"], []
    if s.get("fp32_bytes"):
        rows.append(
            [
                "size (bytes)",
                s["fp32_bytes"],
                s["quantized_bytes"],
                f"{s['fp32_bytes'] / s['quantized_bytes']:.2f}x smaller",
            ]
        )
    else:
        rows.append(["size (bytes)", "n/a", s["quantized_bytes"], ""])
    lat = d["latency"]
    if lat.get("fp32_ms") is not None:
        rows.append(["latency (ms/batch)", lat["fp32_ms"], lat["quantized_ms"], lat.get("note", "")])
    before, after = d["metrics_before"], d["metrics_after"]
    for k in sorted(set(before) | set(after)):
        rows.append([k, before.get(k, "n/a"), after.get(k, "n/a"), ""])
    rows.append(
        ["model output SQNR (dB), analysis data", "", d["whole_model"]["sqnr_db"], "all layers quantized"]
    )
    rows.append(["model output cosine, analysis data", "", d["whole_model"]["cosine"], ""])
    return "<h2>Before / after</h2>" + table(["", "fp32", "quantized", "note"], rows)


def _sensitivity(d: dict, figures: list[Path]) -> str:
    imgs = "".join(f'<p><img src="{escape(p.name)}" alt="{escape(p.stem)}"></p>' for p in figures)
    rows = [[e["layer"], e["sqnr_db"], e["cosine"]] for e in d["sensitivity"][:TOP_ROWS]]
    return (
        f"<h2>Per-layer sensitivity and cumulative error</h2><p class=note>Each layer quantized alone, "
        f"the rest float; model output compared with fp32 on {d['analysis_samples']} samples. "
        "Lowest SQNR first.</p>"
        + imgs
        + table(["layer", "SQNR (dB)", "cosine"], rows)
    )


def _ranges(d: dict, figures: list[Path]) -> str:
    parts = [
        "<h2>Activation ranges of the most sensitive layers' inputs</h2><p class=note>Float input of each "
        "layer (all quantizers off); each estimator's clipping range is a pair of coloured lines "
        "(lo dash-dot, hi dashed); the grey lines are the range the quantized model uses.</p>"
    ]
    if not figures:
        parts.append("<p>No activation quantizers (weight-only quantization): nothing to show.</p>")
    for r, fig in zip(d["ranges"], figures, strict=True):
        rows = [[m, lo, hi, hi - lo] for m, (lo, hi) in r["ranges"].items()]
        rows += [[m, "error", why, ""] for m, why in r["errors"].items()]
        parts.append(
            f'<h3>{escape(r["layer"])}</h3><p><img src="{escape(fig.name)}" alt="{escape(fig.stem)}"></p>'
            + table(["estimator", "lo", "hi", "width"], rows)
        )
    return "".join(parts)


def _kept_float(d: dict) -> str:
    layers = [[name, v["type"] or "", v["why"]] for name, v in d["kept_float"].items()]
    ops = [[op, why] for op, why in d["float_ops"].items()]
    head = (
        f"<h2>Kept in float</h2><p>{d['quantized_layers']} of {d['layers']} layers quantized; "
        f"{d['folded_bn']} BatchNorm layers folded into their convolutions.</p>"
    )
    lt = table(["layer", "type", "why"], layers) if layers else "<p>No layer kept in float.</p>"
    return (
        head
        + "<h3>Layers</h3>"
        + lt
        + "<h3>Other ops (run in float)</h3>"
        + (table(["op", "why"], ops) if ops else "<p>None.</p>")
    )


def _extra(d: dict) -> str:
    if not d["extra"]:
        return ""
    rows = [
        [k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v] for k, v in d["extra"].items()
    ]
    return "<h2>Notes</h2>" + table(["", ""], rows)


def page(d: dict, error_figures: list[Path], range_figures: list[Path]) -> str:
    config = escape(json.dumps(d["config"], indent=1))
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>{escape(d['title'])}</title>"
        f"<style>{CSS}</style></head><body><h1>{escape(d['title'])}</h1>"
        + _summary(d)
        + _extra(d)
        + _sensitivity(d, error_figures)
        + _ranges(d, range_figures)
        + _kept_float(d)
        + f"<h2>Config</h2><pre>{config}</pre></body></html>"
    )
