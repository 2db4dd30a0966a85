"""QuantizedModel: the captured graph with quantizers, a torch.nn.Module that simulates the quantized model
exactly (fake quantization) and knows its layers, what it kept float and why."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import fx

from lowbit.config import QuantConfig
from lowbit.core.qparams import bits_per_value
from lowbit.graph.placement import LayerInfo, Placement
from lowbit.graph.quantizers import ActQuantizer, WeightQuantizer


class QuantizedModel(torch.nn.Module):
    def __init__(self, gm: fx.GraphModule, config: QuantConfig, placement: Placement, folded_bn: list[str]):
        super().__init__()
        self.graph_module = gm
        self.config = config
        self.layers: dict[str, LayerInfo] = placement.layers
        self.embeddings: dict[str, LayerInfo] = placement.embeddings  # tables gathered from (weight-only)
        self.output_quantizers = placement.output_quantizers
        self.float_ops = placement.float_ops
        self.folded_bn = folded_bn

    def forward(self, *args, **kwargs):
        return self.graph_module(*args, **kwargs)

    # -- quantizers -------------------------------------------------------------------------------------------
    def act_quantizers(self) -> dict[str, ActQuantizer]:
        return {n: m for n, m in self.graph_module.named_children() if isinstance(m, ActQuantizer)}

    def weight_quantizers(self) -> dict[str, WeightQuantizer]:
        return {n: m for n, m in self.graph_module.named_children() if isinstance(m, WeightQuantizer)}

    def quantized_layers(self) -> list[LayerInfo]:
        return [i for i in self.layers.values() if not i.kept_float]

    def quantized_embeddings(self) -> list[LayerInfo]:
        """Embedding tables with a weight quantizer (a tied table shares its layer's)."""
        return [i for i in self.embeddings.values() if i.weight_quantizer]

    def weight_of(self, layer: LayerInfo) -> torch.Tensor:
        """The float weight a layer's weight quantizer reads."""
        nodes = self.graph_module.graph.nodes
        node = next(n for n in nodes if n.op == "call_module" and n.target == layer.weight_quantizer)
        owner, _, attr = str(node.args[0].target).rpartition(".")
        return getattr(self.graph_module.get_submodule(owner) if owner else self.graph_module, attr)

    def prepare_weights(self) -> None:
        """Compute every weight quantizer's QParams from its weight (idempotent)."""
        for layer in self.quantized_layers() + self.quantized_embeddings():
            if layer.weight_quantizer:
                wq = self.graph_module.get_submodule(layer.weight_quantizer)
                if wq.qparams is None:
                    wq.set_qparams(self.weight_of(layer))

    # -- modes --------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def calibrating(self) -> Iterator[None]:
        """Within: static activation quantizers observe and pass values through. On exit: ranges are frozen."""
        qs = [q for q in self.act_quantizers().values() if not q.dynamic]
        for q in qs:
            q.start_observing()
        try:
            yield
        finally:
            for q in qs:
                q.freeze()

    @contextlib.contextmanager
    def quantization_enabled(self, layers: set[str] | None = None, outputs: bool = True) -> Iterator[None]:
        """Within: only the quantizers of `layers` (all when None) are on; the others pass float values."""
        saved = {n: m.enabled for n, m in self.graph_module.named_children() if hasattr(m, "enabled")}
        on: set[str] | None = None
        if layers is not None:
            on = set()
            for name in layers:
                info = self.layers[name]
                on.update(info.input_quantizers)
                if info.weight_quantizer:
                    on.add(info.weight_quantizer)
        try:
            for n, m in self.graph_module.named_children():
                if hasattr(m, "enabled"):
                    is_output = n in self.output_quantizers
                    wanted = (on is None or n in on) if not is_output else (outputs and on is None)
                    m.enabled = wanted and not getattr(m, "kept_float", "")
            yield
        finally:
            for n, m in self.graph_module.named_children():
                if n in saved:
                    m.enabled = saved[n]

    def float_mode(self):
        return self.quantization_enabled(layers=set(), outputs=False)

    # -- accounting ---------------------------------------------------------------------------------------
    def weight_bytes(self) -> dict[str, float]:
        """Deployable weight bytes: quantized weights at their bits (scales and zero points included),
        every other parameter and buffer at its own dtype."""
        quantized, seen = 0.0, set()
        for layer in self.quantized_layers() + self.quantized_embeddings():
            if not layer.weight_quantizer:
                continue
            wq = self.graph_module.get_submodule(layer.weight_quantizer)
            w = self.weight_of(layer)
            if id(w) in seen:  # a tied table: counted once
                continue
            seen.add(id(w))
            if wq.qparams is not None:
                quantized += w.numel() * bits_per_value(wq.qparams, tuple(w.shape)) / 8
        # state_dict leaves out the cached fake-quantized weights (non-persistent buffers)
        float_bytes = sum(
            t.numel() * t.element_size() for t in self.graph_module.state_dict(keep_vars=True).values()
            if id(t) not in seen
        )
        return {"quantized": quantized, "float": float(float_bytes), "total": quantized + float_bytes}

    def summary(self) -> dict:
        q = self.quantized_layers()
        return {
            "layers": len(self.layers),
            "quantized_layers": len(q),
            "kept_float": {i.name: i.kept_float for i in self.layers.values() if i.kept_float},
            "float_ops": self.float_ops,
            "float_edges": {n: q.kept_float for n, q in self.act_quantizers().items() if q.kept_float},
            "embeddings": {i.name: i.kept_float or i.note or "quantized" for i in self.embeddings.values()},
            "activation_quantizers": len(self.act_quantizers()),
            "folded_bn": len(self.folded_bn),
            "weight_bytes": self.weight_bytes(),
            "config": self.config.to_json(),
        }
