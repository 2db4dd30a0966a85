"""The body of `lowbit quantize` and `lowbit report`: load, quantize, measure before/after, write outputs.

A zoo task brings its calibration data and its evaluation metric. A user's model needs calibration data;
it is measured by its fidelity to fp32 (cosine, sqnr_db, top1_agreement for [N, C] outputs) on `--eval` data,
or on the calibration data itself when none is given (the summary says which).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lowbit.analysis.summary import fidelity, finite_json, measure_latency, size_summary
from lowbit.api import check_batches, quantize
from lowbit.config import LayerRule, PassSpec, QuantConfig, preset
from lowbit.inputs import InputError, LoadedModel, is_tensor_data, load_model, read_batches

log = logging.getLogger(__name__)
EASYQUANT = "easyquant"


@dataclass(frozen=True)
class QuantizeRequest:
    model: str
    calib: str | None = None
    eval: str | None = None
    preset: str = "w8a8"
    estimator: str | None = None
    fully_quantized: bool = False
    quantize_embeddings: bool = False
    keep_float: tuple[str, ...] = ()
    passes: tuple[str, ...] = ()
    export: str | None = None
    nbits_compute: str = "float"
    mixed_precision: float | None = None
    out: str | None = None
    n_calib: int | None = None
    n_eval: int | None = None
    batch_size: int = 8
    tokenizer: str | None = None
    image_size: int = 224
    report_samples: int = 8


def build_config(req: QuantizeRequest) -> QuantConfig:
    """The preset with the request's estimator, fully-quantized and embedding flags and keep-float rules applied."""
    from lowbit.calib import ESTIMATORS

    config = preset(req.preset)
    if req.estimator == EASYQUANT:
        config = replace(config, calibration=EASYQUANT)
    elif req.estimator is not None:
        if req.estimator not in ESTIMATORS.names():
            raise InputError(
                f"unknown estimator {req.estimator!r}; choose one of "
                f"{', '.join([*ESTIMATORS.names(), EASYQUANT])}"
            )
        act = config.activation and replace(config.activation, estimator=req.estimator)
        config = replace(config, activation=act)
    if req.fully_quantized:
        config = replace(config, fully_quantized=True)
    if req.quantize_embeddings:
        config = config.with_matching_embeddings()
    if req.passes:
        from lowbit.ptq import PASSES

        specs = []
        for text in req.passes:
            try:
                spec = PassSpec.parse(text)
                PASSES.get(spec.name)
            except (KeyError, ValueError) as err:
                raise InputError(str(err).strip('"')) from None
            specs.append(spec)
        config = replace(config, passes=config.passes + tuple(specs))
    rules = [LayerRule(pattern=p, keep_float=True, reason=f"--keep-float {p}") for p in req.keep_float]
    return config.with_rules(*rules)


def _data(req: QuantizeRequest) -> tuple[LoadedModel, list, list, str, str]:
    """(model, calibration batches, evaluation batches, what calibrated, what evaluated)."""
    from lowbit import zoo

    calib, calib_desc = (
        read_batches(req.calib, req.batch_size, req.tokenizer, req.image_size) if req.calib else (None, "")
    )
    if req.model in zoo.names():
        if req.calib and not is_tensor_data(req.calib):
            raise InputError(
                f"{req.model} calibrates on its task's own images/text; --calib with a zoo model "
                "takes tensors already in the model's input format (.pt/.npy/.safetensors)"
            )
        loaded = load_model(req.model, req.n_calib, req.n_eval)
        task = loaded.task
        if calib is None:
            calib = task.calib
            calib_desc = f"the {task.name} task's calibration data ({sum(len(b[0]) for b in calib)} samples)"
        n_eval = sum(len(b[0]) for b in task.eval)
        return (
            loaded,
            calib,
            task.eval,
            calib_desc,
            f"the {task.name} task's evaluation data ({n_eval} samples)",
        )
    if calib is None:
        raise InputError(
            f"--calib is required for a user's model ({req.model}): a folder of images, a .txt file "
            "with --tokenizer, or .npy/.pt/.safetensors tensors"
        )
    calib = check_batches(calib)
    loaded = load_model(req.model, example=calib[0])
    if req.eval:
        evals, eval_desc = read_batches(req.eval, req.batch_size, req.tokenizer, req.image_size)
        return loaded, calib, check_batches(evals), calib_desc, eval_desc
    return loaded, calib, calib, calib_desc, "the calibration data (no --eval given: not held out)"


def _metrics(loaded: LoadedModel, qmodel, evals) -> tuple[dict, dict]:
    if loaded.task is not None:
        return loaded.task.evaluate(loaded.model), loaded.task.evaluate(qmodel)
    after = fidelity(loaded.model, qmodel, evals)
    return {k: 1.0 for k in after if k != "sqnr_db"}, after


def _mixed_precision(qmodel, loaded: LoadedModel, calib, target: float) -> dict:
    """Keep the fewest most sensitive layers float until the task's primary metric (a user's model: output
    SQNR in dB on the calibration data) meets `target`; qmodel is changed in place."""
    try:
        from lowbit.analysis.mixed_precision import auto_mixed_precision
    except ImportError as err:
        raise InputError(f"--mixed-precision is not available in this build ({err})") from err
    options = {}
    if loaded.task is not None:
        task = loaded.task
        options = {
            "metric": lambda m: task.evaluate(m)[task.primary_metric],
            "higher_is_better": task.higher_is_better,
        }
    r = auto_mixed_precision(qmodel, calib, target, **options)
    name = loaded.task.primary_metric if loaded.task is not None else r.metric_name
    return {
        "metric": name,
        "target": target,
        "before": r.metric_before,
        "after": r.metric_after,
        "met": r.met,
        "layers": {c.layer: c.reason for c in r.layers},
        "search": {s.k: s.metric for s in r.steps},
    }


def run(req: QuantizeRequest, progress: bool | None = None) -> dict:
    """Quantize as `req` says and return the summary dict (with req.out: also written there, with the config
    and the report)."""
    config = build_config(req)
    loaded, calib, evals, calib_desc, eval_desc = _data(req)
    extra = {}
    if req.export:
        from lowbit.export.layout import deployable

        config, notes = deployable(config, loaded.model)
        extra["export_layout"] = notes
    qmodel = quantize(loaded.model, calib, config, progress=progress)
    if req.mixed_precision is not None:
        extra["mixed_precision"] = _mixed_precision(qmodel, loaded, calib, req.mixed_precision)
    before, after = _metrics(loaded, qmodel, evals)
    latency = measure_latency(loaded.model, qmodel, evals[0])
    if req.export:
        extra["onnx"] = _deploy(req, loaded, qmodel, calib, evals)
    summary = {
        "model": loaded.name,
        "preset": req.preset,
        "estimator": req.estimator or (config.activation.estimator if config.activation else None),
        "fully_quantized": config.fully_quantized,
        "primary_metric": loaded.task.primary_metric if loaded.task else "cosine",
        "metrics_fp32": before,
        "metrics": after,
        **after,
        **size_summary(qmodel, loaded.model),
        "latency": latency,
        "calibration_seconds": qmodel.calibration_seconds,
        "layers": len(qmodel.layers),
        "quantized_layers": len(qmodel.quantized_layers()),
        "kept_float": {i.name: i.kept_float for i in qmodel.layers.values() if i.kept_float},
        "calibration_data": calib_desc,
        "evaluation_data": eval_desc,
        **extra,
    }
    if req.out:
        summary["report"] = str(write_outputs(req, qmodel, loaded, evals, summary, extra))
    return finite_json(summary)


def _deploy(req: QuantizeRequest, loaded: LoadedModel, qmodel, calib, evals) -> dict:
    from lowbit.export.deploy import deploy

    task = loaded.task
    score = task.evaluate if task is not None else (lambda m: fidelity(loaded.model, m, evals))
    return deploy(loaded.model, qmodel, calib[0], req.export, evals, score, nbits_compute=req.nbits_compute)


def write_outputs(
    req: QuantizeRequest, qmodel, loaded: LoadedModel, evals, summary: dict, extra: dict
) -> Path:
    """config.json, summary.json and the report in req.out; returns the report's path."""
    from lowbit.analysis.report import write_report

    out = Path(req.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(qmodel.config.to_json(), encoding="utf-8")
    from lowbit.checkpoint import save  # lowbit.load(out / "checkpoint", model) rebuilds qmodel

    save(qmodel, out / "checkpoint")
    report = write_report(
        qmodel,
        loaded.task or evals,
        out,
        float_model=loaded.model,
        metrics_before=summary["metrics_fp32"],
        metrics_after=summary["metrics"],
        latency=summary["latency"],
        title=f"lowbit: {loaded.name}, {req.preset}",
        extra=extra,
        max_samples=req.report_samples,
    )
    tmp = out / "summary.json.tmp"
    tmp.write_text(
        json.dumps(finite_json({**summary, "report": str(report)}), indent=2, default=str), encoding="utf-8"
    )
    tmp.replace(out / "summary.json")
    return report


def torch_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)


# What bad input raises (CaptureError is a RuntimeError); the CLI shows these as one message, not a traceback.
EXPECTED_ERRORS = (InputError, ValueError, KeyError, TypeError, FileNotFoundError, RuntimeError, ImportError)


def error_message(err: BaseException) -> str:
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return text or type(err).__name__
