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


def _quantize_options(func):
    """Options shared by `quantize` and `report` (see lowbit.quantize_cmd.QuantizeRequest)."""
    int_opt = {"type": int, "show_default": True}
    options = [
        click.option("--model", required=True, help="A zoo name (efficientnet-lite0, minilm, smollm2, "
                     "fashion-cnn), pkg.module:factory, a .pt2 file (torch.export.save) or a TorchScript "
                     ".pt file."),
        click.option("--calib", default=None, help="Calibration data: tensors (.npy/.pt/.safetensors; "
                     "one positional input per tensor, split along axis 0), a folder of images (ImageNet "
                     "preprocessing, see --image-size) or a .txt file, one sentence per line (needs "
                     "--tokenizer). Required for a user's model; a zoo model uses its own data."),
        click.option("--eval", "eval_data", default=None, help="Evaluation data for a user's model, "
                     "formats as --calib (default: the calibration data, said so in the summary)."),
        click.option("--preset", default="w8a8", show_default=True,
                     help="w8a8, w8a8-dynamic, w4a8, w4a16 or w8a16."),
        click.option("--estimator", default=None, help="Activation range estimator: minmax, ema, "
                     "percentile, mse, kl, admm, aciq, or easyquant (scale search after minmax)."),
        click.option("--fully-quantized", is_flag=True, help="Also quantize outputs of add, concat, "
                     "pooling, activations and layer norm."),
        click.option("--quantize-embeddings", is_flag=True, help="Also quantize embedding tables, weight-only: "
                     "int8 per row, or int4 per group of 32 with a 4-bit preset (a table tied to a quantized LM "
                     "head shares its codes); ONNX keeps the table as codes and dequantizes only the gathered "
                     "rows."),
        click.option("--pass", "passes", multiple=True, help="A post-training pass, NAME or NAME:key=value,..."
                     " (repeatable, run in order; `lowbit passes` lists them), e.g. --pass equalize "
                     "--pass adaround:iters=500."),
        click.option("--export", default=None, type=click.Path(dir_okay=False), help="Also write the int8 "
                     "model as QDQ ONNX here (with an fp32 ONNX beside it), in the layout onnxruntime runs as "
                     "integer kernels on this CPU, and measure both in onnxruntime: latency, integer-kernel "
                     "share, metrics, parity with the simulation."),
        click.option("--nbits-compute", type=click.Choice(["float", "int8", "fastest"]), default="float",
                     show_default=True,
                     help="How onnxruntime multiplies with exported per-group int4/int8 weights (MatMulNBits): "
                     "float inputs (W4A16, as simulated), int8: each block of inputs quantized on the fly "
                     "(dynamic W4A8, faster on some CPUs, outputs move a little), or fastest: both timed on "
                     "this CPU, the faster kept (the summary names it)."),
        click.option("--keep-float", multiple=True, help="Keep layers matching this name glob in float "
                     "(repeatable)."),
        click.option("--mixed-precision", type=float, default=None, help="Keep the fewest most sensitive "
                     "layers in float until the zoo task's primary metric (a user's model: output SQNR in "
                     "dB on the calibration data) reaches this target."),
        click.option("--n-calib", type=int, default=None, help="Cap on calibration samples (zoo models)."),
        click.option("--n-eval", type=int, default=None, help="Cap on evaluation samples (zoo models)."),
        click.option("--batch-size", default=8, help="Rows per batch of --calib data.", **int_opt),
        click.option("--tokenizer", default=None, help="Local Hugging Face tokenizer folder for .txt data."),
        click.option("--image-size", default=224, help="Square crop for image data.", **int_opt),
        click.option("--report-samples", default=8, help="Evaluation samples the report analyses.",
                     **int_opt),
        click.option("--threads", type=int, default=None, help="torch threads (default: torch's)."),
        click.option("--debug", is_flag=True, help="Show the full traceback on errors."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _run_quantize(opts: dict, out: str | None) -> dict:
    import contextlib
    import sys

    from lowbit import quantize_cmd as qc

    debug, threads, eval_data = opts.pop("debug"), opts.pop("threads"), opts.pop("eval_data")
    qc.torch_threads(threads)
    keep_float, passes = tuple(opts.pop("keep_float")), tuple(opts.pop("passes"))
    request = qc.QuantizeRequest(**opts, eval=eval_data, keep_float=keep_float, passes=passes, out=out)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # libraries that print must not spoil --json output
            return qc.run(request)
    except qc.EXPECTED_ERRORS as err:
        if debug:
            raise
        raise click.ClickException(qc.error_message(err)) from None


@main.command()
def passes() -> None:
    """List the post-training passes (--pass NAME) with their stage and paper."""
    from lowbit.ptq import PASSES

    for name in PASSES.names():
        p = PASSES.get(name)
        click.echo(f"{name:<18} {p.stage:<10} {(p.fn.__doc__ or '').strip().splitlines()[0] if p.fn.__doc__ else ''}"
                   f"{'  [' + p.paper + ']' if p.paper else ''}")


@main.command()
@_quantize_options
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Folder for config.json, summary.json and the report.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def quantize(out, as_json, **opts) -> None:
    """Quantize a model and print its before/after size, latency and metrics."""
    from lowbit.analysis.summary import format_summary

    summary = _run_quantize(opts, out)
    click.echo(json.dumps(summary, indent=2) if as_json else format_summary(summary))


@main.command()
@_quantize_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the report.")
def report(out, **opts) -> None:
    """Quantize a model and write the HTML report (sensitivity, ranges, kept-float layers, before/after)."""
    from lowbit.analysis.summary import format_summary

    click.echo(format_summary(_run_quantize(opts, out)))


# -- quantize-llm: layer-by-layer streaming for causal LMs (lowbit.llm) ----------------------------------------
@main.command("quantize-llm")
@click.option("--model", required=True, help="smollm2, or a Hugging Face causal LM folder (config.json + "
              "*.safetensors, Llama-family layout).")
@click.option("--preset", default="w4a16", show_default=True, help="Any preset, e.g. w4a16-gptq, w4a16-awq, "
              "w8a8-smoothquant, w8a8-llm-int8, nf4-dq.")
@click.option("--pass", "passes", multiple=True, help="Extra pass NAME or NAME:key=value,... (repeatable), e.g. "
              "--pass gptq:act_order=true.")
@click.option("--calib", default=None, help="Calibration text (.txt) or token ids [N, T] (.pt/.npy/.safetensors)."
              " Default: the zoo's movie-plot synopses.")
@click.option("--eval", "eval_data", default=None, help="Evaluation data, as --calib. Default: the zoo's 2012 "
              "convention speeches.")
@click.option("--n-calib", default=16, show_default=True, help="Calibration windows.")
@click.option("--n-eval", default=16, show_default=True, help="Evaluation windows.")
@click.option("--window", default=256, show_default=True, help="Tokens per window (text data).")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Write the quantized weights here "
              "(safetensors shards + config.json).")
@click.option("--threads", type=int, default=None, help="torch threads (default: torch's).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def quantize_llm(model, preset, passes, calib, eval_data, n_calib, n_eval, window, out, threads, as_json) -> None:
    """Quantize a causal LM one decoder layer at a time, streaming weights from its safetensors file; print
    perplexity, bits per weight, size, time and peak memory."""
    import resource

    import torch

    from lowbit.llm import command

    if threads:
        torch.set_num_threads(threads)
    req = command.LLMRequest(model, preset, tuple(passes), calib, eval_data, n_calib, n_eval, window, out)
    try:
        result = command.run(req)
    except (ValueError, KeyError, FileNotFoundError) as err:
        raise click.ClickException(str(err).strip('"')) from None
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(f"{result['model']}: {result['layers']} layers streamed, preset {preset} {' '.join(passes)}")
    click.echo(f"perplexity {result['perplexity']:.3f} on {result['eval_windows']} windows "
               f"(calibrated on {result['calib_windows']})")
    click.echo(f"bits per quantized weight {result['bits_per_weight']:.3f} (scales and zero points included); "
               f"size {result['size_bytes'] / 1e6:.2f} MB")
    click.echo(f"time {result['seconds']:.1f} s; peak RSS {result['peak_rss_mib']:.0f} MiB")
