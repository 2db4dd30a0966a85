"""prepare(model, config): a trainable copy of `model` with Conv2d/Linear swapped for QAT wrappers."""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections import Counter
from dataclasses import dataclass

import torch
from torch import fx, nn

from lowbit.qat.base import METHODS
from lowbit.qat.config import FIRST, LAST, QATConfig
from lowbit.qat.modules import QAT_WRAPPERS

log = logging.getLogger(__name__)
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass(frozen=True)
class QATInfo:
    """What prepare decided, kept on the prepared model (attribute `lowbit_qat_info`) for convert."""

    config: QATConfig
    layers: dict[str, str]  # layer name -> method name used for it ("" when left in float)
    bn_pairs: tuple[tuple[str, str], ...]  # (layer, the BatchNorm that consumes only its output)


def _trace_layers(model: nn.Module) -> tuple[list[str], tuple[tuple[str, str], ...]]:
    """Conv/Linear names in execution order and the (layer, BatchNorm) pairs to fold, from a torch.fx trace;
    module order and no pairs when the model does not trace."""
    modules = dict(model.named_modules())
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # noqa: BLE001 - any tracing failure means: fall back
        log.warning("torch.fx could not trace the model (%s): BatchNorms stay unfolded after convert", exc)
        return [n for n, m in modules.items() if type(m) in QAT_WRAPPERS], ()
    nodes = [n for n in graph.nodes if n.op == "call_module"]
    calls = Counter(n.target for n in nodes)
    order = list(dict.fromkeys(n.target for n in nodes if type(modules[n.target]) in QAT_WRAPPERS))
    pairs = []
    for n in nodes:
        src = n.args[0] if n.args else None
        if not (
            isinstance(modules[n.target], BATCHNORMS) and isinstance(src, fx.Node) and src.op == "call_module"
        ):
            continue
        if (
            type(modules[src.target]) in QAT_WRAPPERS
            and len(src.users) == 1
            and calls[src.target] == 1
            and calls[n.target] == 1
        ):
            pairs.append((src.target, n.target))
    return order, tuple(pairs)


def _is_skipped(name: str, order: list[str], globs: tuple[str, ...]) -> bool:
    tokens = {FIRST: order[:1], LAST: order[-1:]}
    return any(name in tokens[g] if g in tokens else fnmatch.fnmatchcase(name, g) for g in globs)


def set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def _wrap(layer: nn.Module, method_name: str, weight_bits: int, act_bits: int | None) -> nn.Module:
    method = METHODS.get(method_name)
    method.check(weight_bits, act_bits)
    channels = layer.in_channels if isinstance(layer, nn.Conv2d) else layer.in_features
    iq = None if act_bits is None else method.input(act_bits, channels=channels)
    return QAT_WRAPPERS[type(layer)].from_float(layer, method.weight(weight_bits, layer.weight), iq)


class _FreezeBN:
    """Forward pre-hook: after `after` training steps every BatchNorm normalises with its running statistics
    and stops updating them (re-applied at each step, so model.train() in the loop does not undo it)."""

    def __init__(self, after: int) -> None:
        self.after = after

    def __call__(self, module: nn.Module, args) -> None:
        if not module.training:
            return
        module.lowbit_qat_steps += 1
        if int(module.lowbit_qat_steps) > self.after:
            freeze_bn_stats(module)


EXAMPLE_ROWS = 2  # rows kept from the first batch: 2, so that capture keeps the batch dimension dynamic


def _record_example(module: nn.Module, args) -> None:
    """Forward pre-hook: keep the first rows of the first batch (`lowbit_qat_example`), the example inputs
    `convert` captures the graph with."""
    if getattr(module, "lowbit_qat_example", None) is not None or not args:
        return
    if not all(isinstance(a, torch.Tensor) and a.dim() > 0 for a in args):
        return
    rows = [a.detach()[:EXAMPLE_ROWS].clone() for a in args]
    module.lowbit_qat_example = tuple(r if len(r) > 1 else torch.cat([r, r]) for r in rows)


def freeze_bn_stats(model: nn.Module) -> None:
    """Put every BatchNorm of `model` in eval mode (running statistics, no updates) until the next
    .train()."""
    for m in model.modules():
        if isinstance(m, BATCHNORMS):
            m.eval()


def prepare(model: nn.Module, config: QATConfig) -> nn.Module:
    """A copy of `model` (the original is left untouched) in train mode, each Conv2d/Linear replaced by a QAT
    wrapper with `config.method` (or `config.skip_method` at `config.skip_bits` for skipped layers; those stay
    float when skip_bits is None). BatchNorms stay separate modules; see QATConfig for the folding policy."""
    order, pairs = _trace_layers(model)
    if not order:
        raise ValueError("the model has no Conv2d or Linear layer to quantize")
    qmodel = copy.deepcopy(model)
    layers = {}
    for name in order:
        layer = qmodel.get_submodule(name)
        if _is_skipped(name, order, config.skip):
            if config.skip_bits is None:
                layers[name] = ""
                continue
            wrapped = _wrap(layer, config.skip_method, config.skip_bits, config.skip_bits)
            layers[name] = config.skip_method
        else:
            wrapped = _wrap(layer, config.method, config.weight_bits, config.act_bits)
            layers[name] = config.method
        set_submodule(qmodel, name, wrapped)
    log.info(
        "prepared %d layers with %s (%d skipped)",
        len(order),
        config.method,
        sum(m != config.method for m in layers.values()),
    )
    qmodel.lowbit_qat_info = QATInfo(config, layers, pairs)
    qmodel.lowbit_qat_example = None
    qmodel.register_forward_pre_hook(_record_example)
    if config.freeze_bn_after is not None:
        qmodel.register_buffer("lowbit_qat_steps", torch.zeros((), dtype=torch.int64))
        qmodel.register_forward_pre_hook(_FreezeBN(config.freeze_bn_after))
    return qmodel.train()
