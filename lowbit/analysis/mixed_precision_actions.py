"""What mixed precision does to a chosen layer: keep it float, or raise its bits. Each action can be applied
temporarily (a context manager that toggles quantizers on the same QuantizedModel, for the search) and then
committed (the returned model and LayerRules reflect the choice)."""

from __future__ import annotations

import contextlib
import glob
import re
from collections.abc import Iterator, Sequence

import torch

from lowbit.api import Batch, run_batch
from lowbit.config import LayerRule
from lowbit.graph.bias import BiasQuantizer
from lowbit.graph.quantized_model import QuantizedModel
from lowbit.graph.quantizers import ActQuantizer, WeightQuantizer


def make_action(action: str, qmodel: QuantizedModel, candidates: Sequence[str], batches: Sequence[Batch]):
    if action == "float":
        return KeepFloat(qmodel)
    m = re.fullmatch(r"int(\d+)", action)
    if m is None:
        raise ValueError(
            f"unknown mixed-precision action {action!r}; use 'float' or 'int<bits>' such as 'int16'"
        )
    return RaiseBits(qmodel, int(m.group(1)), candidates, batches)


def rule_pattern(layer: str) -> str:
    """An fnmatch pattern matching exactly `layer` (brackets, * and ? escaped)."""
    return glob.escape(layer)


def _readers(qmodel: QuantizedModel) -> dict[str, set[str]]:
    """Activation quantizer -> the quantized layers that read it."""
    out: dict[str, set[str]] = {}
    for info in qmodel.quantized_layers():
        for q in info.input_quantizers:
            out.setdefault(q, set()).add(info.name)
    return out


class KeepFloat:
    """Keep layers in float: weight quantizer off, and each input quantizer off when no other quantized layer
    reads it (output quantizers of a fully quantized model stay: they quantize the edge for every reader)."""

    verb = "kept float"

    def __init__(self, qmodel: QuantizedModel) -> None:
        self.qmodel = qmodel

    def _quantizers(self, names: Sequence[str]) -> list[str]:
        chosen, readers, out = set(names), _readers(self.qmodel), []
        for name in names:
            info = self.qmodel.layers[name]
            out += [info.weight_quantizer] if info.weight_quantizer else []
            out += [
                q
                for q in info.input_quantizers
                if q not in self.qmodel.output_quantizers and readers.get(q, set()) <= chosen
            ]
        return out

    @contextlib.contextmanager
    def applied(self, names: Sequence[str]) -> Iterator[None]:
        mods = [self.qmodel.graph_module.get_submodule(q) for q in self._quantizers(names)]
        saved = [m.enabled for m in mods]
        try:
            for m in mods:
                m.enabled = False
            yield
        finally:
            for m, s in zip(mods, saved, strict=True):
                m.enabled = s

    def commit(self, choices) -> tuple[LayerRule, ...]:
        """Take the layers' quantizers out of the graph, as a keep_float rule would have, and mark them."""
        for c in choices:
            self._unquantize(c.layer)
            self.qmodel.layers[c.layer].kept_float = c.reason
        gm = self.qmodel.graph_module
        gm.graph.lint()
        gm.recompile()
        return tuple(
            LayerRule(pattern=rule_pattern(c.layer), keep_float=True, reason=c.reason) for c in choices
        )

    def _unquantize(self, name: str) -> None:
        info, gm = self.qmodel.layers[name], self.qmodel.graph_module
        node = next(n for n in gm.graph.nodes if n.name == info.node)
        own = {info.weight_quantizer, *info.input_quantizers} - set(self.qmodel.output_quantizers) - {None}
        for arg in list(node.all_input_nodes):
            if arg.op != "call_module":
                continue
            if arg.target not in own and not isinstance(gm.get_submodule(str(arg.target)), BiasQuantizer):
                continue
            node.replace_input_with(arg, arg.args[0])  # this layer now reads the float value
            if not arg.users:
                gm.graph.erase_node(arg)
                gm.delete_submodule(str(arg.target))
            else:
                q = gm.get_submodule(str(arg.target))
                q.consumers = tuple(c for c in q.consumers if c != name)
        info.weight_quantizer, info.input_quantizers = None, ()


class RaiseBits:
    """Raise layers' weight and input quantizers to `bits` (at least; never lowers): weights re-quantized with
    their estimator, static input ranges re-calibrated on the batches. An input quantizer shared with other
    layers is raised for all of them (one edge, one quantizer)."""

    def __init__(
        self, qmodel: QuantizedModel, bits: int, candidates: Sequence[str], batches: Sequence[Batch]
    ):
        self.qmodel, self.bits, self.verb = qmodel, bits, f"raised to {bits} bits"
        gm = qmodel.graph_module
        names = {q for n in candidates for q in self._names(n)}
        mods = {q: gm.get_submodule(q) for q in names}
        if not any(m.spec.qtype.bits < bits for m in mods.values()):
            raise ValueError(
                f"action 'int{bits}' raises nothing: the candidate layers are already at {bits} bits "
                "or more; choose more bits (e.g. 'int16') or action='float'"
            )
        self.low = {q: self._state(m) for q, m in mods.items()}
        self.high = {q: self._high_state(m) for q, m in mods.items() if isinstance(m, WeightQuantizer)}
        acts = {q: m for q, m in mods.items() if isinstance(m, ActQuantizer)}
        self.high.update(self._calibrate_high(acts, batches))

    def _names(self, layer: str) -> list[str]:
        info = self.qmodel.layers[layer]
        return ([info.weight_quantizer] if info.weight_quantizer else []) + list(info.input_quantizers)

    def _spec(self, m):
        return m.spec.with_bits(self.bits) if m.spec.qtype.bits < self.bits else m.spec

    @staticmethod
    def _state(m) -> dict:
        return {
            "spec": m.spec,
            "qparams": m.qparams,
            **({"w_hat": m.w_hat} if isinstance(m, WeightQuantizer) else {}),
        }

    def _high_state(self, wq: WeightQuantizer) -> dict:
        info = self.qmodel.layers[wq.layer]
        tmp = WeightQuantizer(self._spec(wq), wq.layer)
        tmp.set_qparams(self.qmodel.weight_of(info))
        return self._state(tmp)

    def _calibrate_high(self, acts: dict[str, ActQuantizer], batches: Sequence[Batch]) -> dict[str, dict]:
        """Calibrate at the higher-bit specs exactly as lowbit.api.calibrate does, then put every activation
        quantizer back as it was (other layers' ranges, EasyQuant's included, are left untouched)."""
        every = self.qmodel.act_quantizers()
        saved = {q: self._state(m) for q, m in every.items()}
        for m in acts.values():
            m.spec = self._spec(m)
        with self.qmodel.calibrating(), torch.inference_mode():
            for b in batches:
                run_batch(self.qmodel, b)
        high = {q: self._state(m) for q, m in acts.items()}
        for q, m in every.items():
            self._load(m, saved[q])
        return high

    @staticmethod
    def _load(m, state: dict) -> None:
        for k, v in state.items():
            setattr(m, k, v)

    @contextlib.contextmanager
    def applied(self, names: Sequence[str]) -> Iterator[None]:
        qs = {q for n in names for q in self._names(n)}
        try:
            for q in qs:
                self._load(self.qmodel.graph_module.get_submodule(q), self.high[q])
            yield
        finally:
            for q in qs:
                self._load(self.qmodel.graph_module.get_submodule(q), self.low[q])

    def commit(self, choices) -> tuple[LayerRule, ...]:
        rules = []
        for c in choices:
            info, gm = self.qmodel.layers[c.layer], self.qmodel.graph_module
            for q in self._names(c.layer):
                self._load(gm.get_submodule(q), self.high[q])
            w = self.high[info.weight_quantizer]["spec"] if info.weight_quantizer else None
            a = self.high[info.input_quantizers[0]]["spec"] if info.input_quantizers else None
            rules.append(LayerRule(pattern=rule_pattern(c.layer), weight=w, activation=a, reason=c.reason))
        return tuple(rules)
