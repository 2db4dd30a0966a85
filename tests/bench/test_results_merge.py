"""Merging a partial re-run into results/<suite>-<model>.json, and what the runtime table says about runs."""

from __future__ import annotations

from bench import report
from bench.results import merge, runs_of


def row(name: str, family: str, ms: float, metric: float) -> dict:
    return {
        "name": name,
        "family": family,
        "status": "ok",
        "metrics": {"top1_agreement": metric},
        "latency": {"b1 t1": {"median_ms": ms}},
    }


def result(rows: list[dict], command: str, date: str, load: dict | None = None) -> dict:
    out = {
        "model": "efficientnet-lite0",
        "primary_metric": "top1_agreement",
        "threads": [1],
        "batches": [1],
        "setup": "setup",
        "command": command,
        "date": date,
        "wall_s": 120.0,
        "variants": rows,
    }
    if load is not None:
        run = {"command": command, "date": date, "wall_s": 120.0, "load_avg": load}
        out["runs"] = [run]
        out["variants"] = [{**r, "run": 0} for r in rows]
    return out


OLD = result(
    [row("fp32-ort", "fp32", 10.0, 1.0), row("ort-static-minmax", "peer", 6.0, 0.63), row("nncf", "peer", 9.0, 0.7)],
    "bench/run.py --suite full",
    "2026-11-24 13:58",
)
LOAD = {"start": [1.5, 1.25, 1.0], "end": [2.0, 1.5, 1.125]}
NEW = result(
    [row("fp32-ort", "fp32", 11.0, 1.0), row("ort-static-minmax-rr", "peer", 7.0, 0.9)],
    "bench/run.py --suite full --variants fp32-ort ort-static-minmax-rr",
    "2026-11-24 16:00",
    LOAD,
)


def test_merge_replaces_rerun_rows_keeps_others_and_tags_runs() -> None:
    merged = merge(OLD, NEW)
    by_name = {r["name"]: r for r in merged["variants"]}
    assert [r["name"] for r in merged["variants"]] == ["fp32-ort", "nncf", "ort-static-minmax", "ort-static-minmax-rr"]
    assert by_name["fp32-ort"]["latency"]["b1 t1"]["median_ms"] == 11.0 and by_name["fp32-ort"]["run"] == 1
    assert by_name["nncf"]["run"] == 0 and by_name["ort-static-minmax"]["metrics"]["top1_agreement"] == 0.63
    assert by_name["ort-static-minmax-rr"]["run"] == 1
    runs = runs_of(merged)
    assert [r["command"] for r in runs] == [OLD["command"], NEW["command"]]
    assert "load_avg" not in runs[0] and runs[1]["load_avg"] == LOAD
    newer = {**NEW, "command": "third", "runs": [{**NEW["runs"][0], "command": "third"}]}
    again = merge(merged, newer)  # run 1's rows are all replaced: it is dropped, run 2 becomes run 1
    assert [r["command"] for r in runs_of(again)] == [OLD["command"], "third"]
    assert {r["name"]: r["run"] for r in again["variants"]} == {
        "fp32-ort": 1,
        "nncf": 0,
        "ort-static-minmax": 0,
        "ort-static-minmax-rr": 1,
    }
    partial = merge(merged, result([row("nncf", "peer", 8.0, 0.7)], "fourth", "d", LOAD))
    assert [r["command"] for r in runs_of(partial)] == [OLD["command"], NEW["command"], "fourth"]


def test_table_shows_run_column_and_load_only_for_merged_results() -> None:
    single = report.model_table(NEW)
    assert "| run |" not in single.splitlines()[0]
    merged = merge(OLD, NEW)
    lines = report.model_table(merged).splitlines()
    assert lines[0].endswith("| note | run |") and lines[1].count("---|") == len(lines[0].split("|")) - 2
    assert lines[2].startswith("| `fp32-ort` |") and lines[2].endswith("| 1 |")
    text = report.runs_text(merged)
    assert text.startswith("Run 0: `bench/run.py --suite full`, 2026-11-24 13:58 UTC, 2 min, load average not")
    assert "Run 1: `bench/run.py --suite full --variants" in text and "1.50/1.25/1.00 at start, 2.00/1.50/1.12" in text


def test_pair_note_compares_reduce_range_with_its_reference() -> None:
    assert report.pair_notes(NEW) == ""
    note = report.pair_notes(merge(OLD, NEW))
    assert note == (
        "reduce_range (7-bit weights): top1_agreement 0.9 (`ort-static-minmax-rr`) against 0.63 (`ort-static-minmax`)."
    )
