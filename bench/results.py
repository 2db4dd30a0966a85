"""results/<suite>-<model>.json across runs: a partial re-run (`--variants ...`) replaces only its own rows.

Every row carries `run`, the index of the run that measured it in the result's `runs` list (command, date,
wall time, load average at start and end). Latency ratios are computed inside one run, against the baseline
measured in that same run, so a merged table mixes runs row by row but never inside a ratio.
"""

from __future__ import annotations

from collections.abc import Iterable

RUN_KEYS = ("command", "date", "wall_s", "load_avg", "cpu")


def row_order(family: str, name: str) -> tuple[bool, str, str]:
    """The runner's row order: fp32 rows first, then by family and name."""
    return family != "fp32", family, name


def runs_of(result: dict) -> list[dict]:
    """The result's runs; a file written before runs were recorded counts as one run (its top-level fields)."""
    if "runs" not in result:
        return [{key: result[key] for key in RUN_KEYS if key in result}]
    # runs recorded before each run kept its own CPU were all made on the CPU of the file's top level
    return [run if "cpu" in run or "cpu" not in result else {**run, "cpu": result["cpu"]} for run in result["runs"]]


def _tagged(rows: Iterable[dict], run: int) -> list[dict]:
    return [{**row, "run": row.get("run", run)} for row in rows]


def merge(old: dict, new: dict) -> dict:
    """`old` with `new`'s rows replacing those of the same name (new rows added); `new` is one run.

    Runs that no row comes from any more are dropped and the rest renumbered in their order.
    """
    runs = runs_of(old) + runs_of(new)
    rows = {row["name"]: row for row in _tagged(old["variants"], 0)}
    rows.update({row["name"]: {**row, "run": len(runs) - 1} for row in new["variants"]})
    used = sorted({row["run"] for row in rows.values()})
    renumber = {run: i for i, run in enumerate(used)}
    ordered = sorted(rows.values(), key=lambda r: row_order(r.get("family", ""), r["name"]))
    variants = [{**row, "run": renumber[row["run"]]} for row in ordered]
    return {**old, **new, "runs": [runs[i] for i in used], "variants": variants}
