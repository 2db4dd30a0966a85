"""The `lowbit` command: a click group with one small function per sub-command.

Command bodies live in the library (e.g. `lowbit.calib.report`); this file only parses options and prints.
"""

from __future__ import annotations

import json

import click


@click.group()
@click.version_option(package_name="lowbit")
def main() -> None:
    """Make trained PyTorch models low-bit, and measure what it cost."""


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--bits", default=8, show_default=True, help="Integer bit width (2-8 or 16).")
@click.option("--asymmetric", is_flag=True, help="Asymmetric ranges with a zero point (unsigned qtype).")
@click.option(
    "--qtype",
    "qtype_name",
    default=None,
    help="A registered qtype name instead of --bits (e.g. uint8, fp8_e4m3).",
)
@click.option("--name", default=None, help="Which tensor of a file that holds several (default: the first).")
@click.option("--batches", default=8, show_default=True, help="Chunks the tensor is fed in.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def thresholds(file, bits, asymmetric, qtype_name, name, batches, as_json) -> None:
    """Compare every range estimator on the tensor in FILE (.npy, .pt or .safetensors).

    The tensor is fed to each estimator in --batches contiguous chunks (along axis 0 of a row-major tensor),
    as
    calibration batches would be, so the EMA estimator (momentum 0.1) differs from minmax. Each estimator's
    per-tensor clipping range then quantizes the whole tensor; the MSE and SQNR (dB) of that fake quantization
    are printed. Symmetric ranges use int<bits>, --asymmetric uses uint<bits> with a zero point.
    --json prints {"methods": {"minmax": {"min", "max", "mse", "sqnr_db"}, ...}}; sqnr_db is null when the
    quantization is exact, and a method that cannot handle the qtype has {"error": "..."} instead.
    """
    from lowbit.calib import METHODS
    from lowbit.calib.report import compare
    from lowbit.core.qtype import IntQType, get_qtype
    from lowbit.tensorfile import read_tensor

    try:
        qtype = get_qtype(qtype_name) if qtype_name else IntQType(bits, signed=not asymmetric)
    except (ValueError, KeyError) as err:
        raise click.BadParameter(str(err).strip('"'), param_hint="--bits/--qtype") from None
    try:
        tensor_name, x = read_tensor(file, name)
        methods = compare(x, qtype, not asymmetric, METHODS, batches)
    except (ValueError, KeyError) as err:
        raise click.ClickException(str(err).strip('"')) from None
    info = {
        "file": str(file),
        "name": tensor_name,
        "shape": list(x.shape),
        "qtype": qtype.name,
        "symmetric": not asymmetric,
        "batches": batches,
    }
    if as_json:
        click.echo(json.dumps({**info, "methods": methods}, indent=2))
    else:
        _print_table(info, methods)


def _print_table(info: dict, methods: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    mode = "symmetric" if info["symmetric"] else "asymmetric"
    title = f"{info['name']} {tuple(info['shape'])}: {info['qtype']}, {mode}"
    table = Table(title=title)
    for col in ("method", "min", "max", "MSE", "SQNR (dB)"):
        table.add_column(col, justify="left" if col == "method" else "right")
    notes = []
    for method, r in methods.items():
        if "error" in r:
            notes.append(f"{method}: {r['error']}")
            table.add_row(method, "n/a", "n/a", "n/a", "n/a")
            continue
        sqnr = "exact" if r["sqnr_db"] is None else f"{r['sqnr_db']:.2f}"
        table.add_row(method, f"{r['min']:.6g}", f"{r['max']:.6g}", f"{r['mse']:.4g}", sqnr)
    console = Console()
    console.print(table)
    for note in notes:
        console.print(note, highlight=False)
