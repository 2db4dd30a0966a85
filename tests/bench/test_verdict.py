"""The sentences under a runtime table, computed from its rows (bench/verdict.py)."""

from __future__ import annotations

from bench.verdict import peers_ahead, runtime_pick, size_ratio, target, verdict


def row(name: str, family: str, b32: float, metric: float | None, size: int = 100) -> dict:
    return {"name": name, "family": family, "status": "ok", "size_bytes": size,
            "metrics": {} if metric is None else {"top1_agreement": metric},
            "latency": {"b32 t1": {"median_ms": b32}}}


def table(rows: list[dict], model: str = "efficientnet-lite0") -> dict:
    return {"model": model, "primary_metric": "top1_agreement", "higher_is_better": True, "threads": [1],
            "batches": [32], "variants": rows}


def test_pick_target_and_peers_from_the_rows():
    rows = [row("fp32-ort", "fp32", 400.0, 1.0, 400), row("fp32-compile", "fp32", 900.0, 1.0, 400),
            row("lowbit-int8-ort", "lowbit", 200.0, 0.93, 100), row("lowbit-int8-pt2e", "lowbit", 150.0, 0.91, 120),
            row("ort-static-minmax", "peer", 180.0, 0.84), row("ort-static-minmax-emulated", "peer", 1.0, 0.84),
            row("torchao-pt2e-static", "peer", 140.0, 0.95)]
    result = table(rows)
    rows[3]["baseline"], rows[3]["latency"]["b32 t1"]["speedup_vs_baseline"] = "fp32-compile", 6.0
    assert "b32 t1 `lowbit-int8-pt2e` 150 ms (6.00x over `fp32-compile`)" in runtime_pick(result)
    # 2.67x, but no lowbit row reaches 0.99: missed, with the fastest row's figures
    assert ("b32 t1 missed (no lowbit row reaches top1_agreement 0.99; largest lowbit speed-up "
            "`lowbit-int8-pt2e` 2.67x") in target(result)
    peers = peers_ahead(result)
    # minmax (0.84) is slower than pt2e (0.91 >= 0.84): not ahead; the emulated diagnostic row is never counted
    assert "ort-static-minmax" not in peers.split("More faithful")[0]
    assert "More faithful than every lowbit row (best: `lowbit-int8-ort` 0.93): `torchao-pt2e-static` 0.95" in peers
    assert size_ratio(result) == "Size against `fp32-ort`: `lowbit-int8-ort` 0.25, `lowbit-int8-pt2e` 0.30."
    rows[4]["latency"]["b32 t1"]["median_ms"] = 120.0  # now faster than every lowbit row at 0.84 or better
    assert "`ort-static-minmax` (top1_agreement 0.84): b32 t1 120 against `lowbit-int8-pt2e` 150 ms (+25%)" \
        in peers_ahead(result)
    rows[4]["latency"]["b32 t1"]["samples_ms"] = [118.0, 120.0, 121.0]
    rows[3]["latency"]["b32 t1"]["samples_ms"] = [122.0, 150.0, 151.0]
    assert "(+25%, beyond the spread of the alternated samples)" in peers_ahead(result)
    rows[3]["latency"]["b32 t1"]["samples_ms"] = [119.0, 150.0, 151.0]  # one lowbit sample as fast as the peer's
    assert "(+25%, within the spread of the samples)" in peers_ahead(result)
    rows[2]["metrics"]["top1_agreement"] = 0.995  # the ORT row is faithful enough and 2.0x: still missed
    assert "b32 t1 missed (`lowbit-int8-ort` 2.00x at top1_agreement 0.995" in target(result)
    rows[2]["latency"]["b32 t1"]["median_ms"] = 100.0
    assert target(result).endswith("b32 t1 met: `lowbit-int8-ort` 4.00x over `fp32-ort` at top1_agreement 0.995.")


def test_minilm_target_is_over_compiled_fp32_and_a_table_without_lowbit_says_nothing():
    rows = [row("fp32-ort", "fp32", 300.0, 1.0), row("fp32-compile", "fp32", 350.0, 1.0),
            row("lowbit-int8-pt2e", "lowbit", 140.0, 0.9983)]
    result = {**table(rows, "minilm"), "primary_metric": "top1_agreement"}
    result["variants"][2]["metrics"] = {"cosine": 0.9983}
    assert "b32 t1 met: `lowbit-int8-pt2e` 2.50x over `fp32-compile` at cosine 0.9983" in target(result)
    assert verdict(table([row("fp32-ort", "fp32", 1.0, 1.0)], "fashion-cnn")) == ""


def test_rows_of_a_merged_rerun_are_compared_within_their_run():
    rows = [row("fp32-ort", "fp32", 400.0, 1.0), row("lowbit-int8-ort", "lowbit", 200.0, 0.93),
            {**row("fp32-ort", "fp32", 300.0, 1.0), "run": 1}, {**row("lowbit-int8-pt2e", "lowbit", 150.0, 0.93),
                                                              "run": 1},
            {**row("ort-static-minmax", "peer", 160.0, 0.84), "run": 1}]
    result = table(rows)
    # each row's speed-up is over its own run's fp32 row: run 0's 2.00x (400/200) and run 1's 2.00x (300/150)
    assert "2.00x" in target(result) and "2.67x" not in target(result) and "1.50x" not in target(result)
    assert "No peer row is faster" in peers_ahead(result)  # 160 ms is slower than run 1's lowbit row
    rows[4]["run"] = 0  # the same peer in run 0 beats run 0's lowbit row (200 ms)
    assert "`ort-static-minmax` (top1_agreement 0.84): b32 t1 160 against `lowbit-int8-ort` 200 ms" \
        in peers_ahead(result)
    del rows[2]  # run 1's fp32 row gone (a later re-run replaced it): run 0's stands in, and the sentence says so
    for r in rows:
        r["metrics"]["top1_agreement"] = 0.995
    assert "met: `lowbit-int8-pt2e` 2.67x over `fp32-ort` of run 0" in target(result)
