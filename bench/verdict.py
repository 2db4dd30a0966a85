"""What a runtime table says, computed from its rows: lowbit's faster runtime per setting, peers that beat lowbit at
equal or better fidelity, size against fp32, and issue 5's speed targets, met or missed with the figures.

The sentences are written under each model's table by `bench/report.py`; nothing here is typed by hand but the
targets themselves (issue 5's list, item 8). Where a partial re-run was merged into a table, rows are compared only
with rows of the same run (`run`), as the table's ratios are.
"""

from __future__ import annotations

# model -> (speed-up, over which fp32 rows, metric, least value): issue 5, item 8
TARGETS = {
    "efficientnet-lite0": (2.5, "the faster of fp32-ort and fp32-compile", "top1_agreement", 0.99),
    "minilm": (2.5, "fp32-compile", "cosine", 0.998),
}
DIAGNOSTIC = ("-emulated",)  # peer rows that are not deployments (same file without int8 kernels)


def _ms(row: dict, key: str) -> float | None:
    cell = (row.get("latency") or {}).get(key) or {}
    return cell.get("median_ms")


def _ok(rows: list[dict], family: str | None = None) -> list[dict]:
    return [r for r in rows if r.get("status") == "ok" and (family is None or r.get("family") == family)
            and not any(r["name"].endswith(d) for d in DIAGNOSTIC)]


def _run(rows: list[dict], of: dict) -> list[dict]:
    """The rows measured in the same run as `of`."""
    return [r for r in rows if r.get("run", 0) == of.get("run", 0)]


def _spread(peer: dict, mine: dict, key: str) -> str:
    """Whether a peer's lead at `key` outlasts run-to-run noise: "beyond the spread" when every alternated sample of
    the peer is faster than every sample of lowbit's row, "within the spread" when the two sets of samples overlap
    (the lead is then no larger than the noise of this run); "" where the rows keep no samples."""
    a = ((peer.get("latency") or {}).get(key) or {}).get("samples_ms")
    b = ((mine.get("latency") or {}).get(key) or {}).get("samples_ms")
    if not a or not b:
        return ""
    return "beyond the spread of the alternated samples" if max(a) < min(b) else "within the spread of the samples"


def _at_least(value: float, bound: float, higher_is_better: bool) -> bool:
    return value >= bound if higher_is_better else value <= bound


def _fastest(rows: list[dict], key: str) -> dict | None:
    timed = [r for r in rows if _ms(r, key) is not None]
    return min(timed, key=lambda r: _ms(r, key)) if timed else None


FP32_DEPLOYED = ("fp32-ort", "fp32-compile")  # the fp32 baselines a deployment is measured against


def runtime_pick(result: dict) -> str:
    """lowbit's fastest row at each latency setting, with the speed-up over its own runtime's fp32 row that the table
    shows in brackets (measured in the same run)."""
    rows, parts = result["variants"], []
    for key in _keys(result):
        best = _fastest(_ok(rows, "lowbit"), key)
        if best is None:
            continue
        text = f"{key} `{best['name']}` {_ms(best, key):.3g} ms"
        ratio = ((best.get("latency") or {}).get(key) or {}).get("speedup_vs_baseline")
        if ratio:
            text += f" ({ratio:.2f}x over `{best.get('baseline')}`)"
        parts.append(text)
    return ("lowbit's faster runtime per setting (fastest lowbit row; speed-up over its runtime's fp32 row): "
            + "; ".join(parts) + ".") if parts else ""


def _deployed_fp32(rows: list[dict], row: dict) -> list[dict]:
    """fp32-ort and fp32-compile as measured in `row`'s run; where a merged re-run replaced one of them, that row
    from the re-run (the sentence then names its run)."""
    same = [r for r in _run(_ok(rows, "fp32"), row) if r["name"] in FP32_DEPLOYED]
    have = {r["name"] for r in same}
    return same + [r for r in _ok(rows, "fp32") if r["name"] in FP32_DEPLOYED and r["name"] not in have]


def _base(rows: list[dict], row: dict, key: str, over: str) -> dict | None:
    """The fp32 row a target measures `row` against: the faster deployed fp32 row, or the one named `over`."""
    fp32 = _deployed_fp32(rows, row)
    return _fastest(fp32, key) if over.startswith("the faster") else next((r for r in fp32 if r["name"] == over), None)


def peers_ahead(result: dict) -> str:
    """Peer rows faster than every lowbit row of equal or better fidelity (setting by setting; each lead says
    whether it outlasts the spread of the alternated samples), and peer rows more faithful than every lowbit row."""
    metric, higher = result["primary_metric"], result.get("higher_is_better", True)
    rows = result["variants"]
    lowbit = [r for r in _ok(rows, "lowbit") if metric in (r.get("metrics") or {})]
    if not lowbit:
        return ""
    top = max(lowbit, key=lambda r: r["metrics"][metric] * (1 if higher else -1))
    ahead, beyond = [], []
    for peer in _ok(rows, "peer"):
        p_m = (peer.get("metrics") or {}).get(metric)
        if p_m is None:
            continue
        faithful = [r for r in lowbit if _at_least(r["metrics"][metric], p_m, higher)]
        rivals = _run(faithful, peer)
        if not faithful:
            beyond.append(f"`{peer['name']}` {p_m:.4g}")
            continue
        lost = []
        for key in _keys(result):
            best, p_ms = _fastest(rivals, key), _ms(peer, key)
            if p_ms is not None and best is not None and _ms(best, key) > p_ms:
                spread = _spread(peer, best, key)
                lost.append(f"{key} {p_ms:.3g} against `{best['name']}` {_ms(best, key):.3g} ms "
                            f"(+{_ms(best, key) / p_ms - 1:.0%}{', ' + spread if spread else ''})")
        if lost:
            ahead.append(f"`{peer['name']}` ({metric} {p_m:.4g}): " + ", ".join(lost))
    text = ("Peer rows faster than every lowbit row of equal or better " + metric + ": " + "; ".join(ahead) + "."
            ) if ahead else f"No peer row is faster than lowbit at equal or better {metric} in any setting."
    if beyond:
        text += (f" More faithful than every lowbit row (best: `{top['name']}` {top['metrics'][metric]:.4g}): "
                 + ", ".join(beyond) + ".")
    return text


def size_ratio(result: dict) -> str:
    rows = {r["name"]: r for r in _ok(result["variants"])}
    fp32 = rows.get("fp32-ort") or rows.get("fp32-torch")
    if not fp32 or not fp32.get("size_bytes"):
        return ""
    parts = [f"`{n}` {r['size_bytes'] / fp32['size_bytes']:.2f}" for n, r in rows.items()
             if r.get("family") == "lowbit" and r.get("size_bytes")]
    return f"Size against `{fp32['name']}`: " + ", ".join(parts) + "." if parts else ""


def target(result: dict) -> str:
    """Issue 5's speed target for this model at the largest batch, 1 and 2 threads: met or missed, with figures."""
    if result["model"] not in TARGETS:
        return ""
    speedup, over, metric, least = TARGETS[result["model"]]
    rows, higher = result["variants"], result.get("higher_is_better", True)
    faithful = [r for r in _ok(rows, "lowbit") if _at_least((r.get("metrics") or {}).get(metric, float("nan")),
                                                                least, higher)]
    parts = []
    lowbit = _ok(rows, "lowbit")
    for key in [k for k in _keys(result) if k.startswith(f"b{max(result['batches'])} ")]:
        bases = {id(r): _base(rows, r, key, over) for r in lowbit}
        ratio = {id(r): _ms(bases[id(r)], key) / _ms(r, key) for r in lowbit
                 if _ms(r, key) and bases[id(r)] is not None and _ms(bases[id(r)], key)}
        if not ratio:
            continue
        best_any = max((r for r in lowbit if id(r) in ratio), key=lambda r: ratio[id(r)])
        timed = [r for r in faithful if id(r) in ratio]
        best = max(timed, key=lambda r: ratio[id(r)]) if timed else None
        base = bases[id(best or best_any)]
        run_note = f" of run {base.get('run', 0)}" if base.get("run", 0) != (best or best_any).get("run", 0) else ""
        if best is not None and ratio[id(best)] >= speedup:
            parts.append(f"{key} met: `{best['name']}` {ratio[id(best)]:.2f}x over "
                         f"`{base['name']}`{run_note} at {metric} {best['metrics'][metric]:.4g}")
            continue
        why = f"no lowbit row reaches {metric} {least}" if best is None else \
            f"`{best['name']}` {ratio[id(best)]:.2f}x at {metric} {best['metrics'][metric]:.4g}"
        if best_any is not best:
            m = (best_any.get("metrics") or {}).get(metric)
            why += (f"; largest lowbit speed-up `{best_any['name']}` {ratio[id(best_any)]:.2f}x"
                    + (f" at {metric} {m:.4g}" if m is not None else ""))
        parts.append(f"{key} missed ({why})")
    return (f"Issue 5 target, {speedup}x over {over} at batch {max(result['batches'])} with {metric} >= {least}: "
            + "; ".join(parts) + ".") if parts else ""


def _keys(result: dict) -> list[str]:
    return [f"b{b} t{t}" for t in result["threads"] for b in result["batches"]]


def verdict(result: dict) -> str:
    return " ".join(filter(None, [runtime_pick(result), target(result), peers_ahead(result), size_ratio(result)]))
