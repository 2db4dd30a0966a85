"""Layer-by-layer streaming: quantize a causal LM one decoder layer at a time.

Each decoder layer is read from the safetensors file only when its turn comes (`lowbit.llm.hf`), captured and
quantized by `lowbit.quantize` with the config's passes (SmoothQuant, AWQ, GPTQ, LLM.int8...) on calibration
inputs that are the outputs of the already-quantized layers before it, then applied to the calibration (and
evaluation) hidden states to feed the next layer, and dropped. Peak memory is one layer, its quantized copy
and the calibration activations (every calibration window's values inside the layer, as the lockstep passes
walk it), not the whole model. The last stage, final norm + lm_head, is the largest "layer" (the vocabulary-
sized head); evaluation windows are scored through it EVAL_ROWS tokens at a time, so that vocabulary-sized
logits are never built for a whole batch. Layer names follow the checkpoint's keys
(`model.layers.3.mlp.down_proj`, `lm_head`), so LayerRules written for the model apply.

Whole-model quantization with the lockstep GPTQ pass quantizes each layer from the outputs of the quantized
layers before it too, so both give the same model (tests/llm/test_streaming.py checks it).
"""

from __future__ import annotations

import copy
import ctypes
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache, partial
from itertools import chain
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from lowbit.config import QuantConfig
from lowbit.core.qparams import bits_per_value
from lowbit.llm.hf import EMBED, HEAD, LAYERS, NORM, CheckpointSource, causal_mask

log = logging.getLogger(__name__)
# (eval batch index, token positions, their logits [B, t, V]) -> a small summary; a batch's summaries are added
Score = Callable[[int, slice, torch.Tensor], torch.Tensor]
Stage = Callable[[str], None]  # told each stage as it starts: model.embed_tokens, model.layers.<i>, lm_head, score
EVAL_ROWS = 64  # tokens (batch x positions) per head call when scoring: 64 x 49152 logits = 12 MB for SmolLM2


class _At(nn.Module):
    """Holds modules at their checkpoint paths, so that captured layer names match the checkpoint's keys."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        for path, module in modules.items():
            owner = self
            *parents, last = path.split(".")
            for part in parents:
                if not hasattr(owner, part):
                    owner.add_module(part, nn.Module())
                owner = getattr(owner, part)
            owner.add_module(last, module)

    def __deepcopy__(self, memo: dict) -> _At:
        """A copy that shares this module's tensors. A stage module is built for one `quantize` call and not used
        after it, so capture's defensive deep copy need not duplicate its weights (for the head: the 113 MB
        vocabulary table of SmolLM2 held once, not twice)."""
        memo.update({id(t): t for t in chain(self.parameters(), self.buffers())})
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone


class DecoderStep(_At):
    """forward(hidden, cos, sin, mask) -> the decoder layer's output hidden states."""

    def __init__(self, path: str, layer: nn.Module) -> None:
        super().__init__({path: layer})
        self.path = path

    def forward(self, hidden, cos, sin, mask):
        out = self.get_submodule(self.path)(hidden, attention_mask=mask, position_embeddings=(cos, sin))
        return out[0] if isinstance(out, tuple) else out


class HeadStep(_At):
    """forward(hidden) -> logits: the final norm and the language-model head."""

    def forward(self, hidden):
        return self.get_submodule(HEAD)(self.get_submodule(NORM)(hidden))


@dataclass
class StreamResult:
    """What a streaming run produced: per-stage seconds, bit accounting and the evaluation summaries."""

    seconds: float = 0.0
    eval_seconds: float = 0.0  # of `seconds`: carrying the evaluation windows through the stream and scoring
    quantized_bits: float = 0.0  # storage bits of every quantized weight, scales and zero points included
    quantized_params: int = 0
    float_bytes: float = 0.0  # every other parameter at its dtype (embedding, norms, float layers)
    stages: list[dict] = field(default_factory=list)
    eval_summaries: list[torch.Tensor] = field(default_factory=list)

    @property
    def bits_per_weight(self) -> float:
        """Mean storage bits per quantized weight (32 when nothing was quantized)."""
        return self.quantized_bits / self.quantized_params if self.quantized_params else 32.0

    @property
    def size_bytes(self) -> float:
        return self.quantized_bits / 8 + self.float_bytes


def _account(result: StreamResult, qmodel, name: str, seconds: float, writer) -> None:
    gm, quantized = qmodel.graph_module, {}
    for info in qmodel.quantized_layers():
        if info.weight_quantizer:
            wq, w = gm.get_submodule(info.weight_quantizer), qmodel.weight_of(info)
            quantized[id(w)] = wq.w_hat
            result.quantized_bits += w.numel() * bits_per_value(wq.qparams, tuple(w.shape))
            result.quantized_params += w.numel()
    state = gm.state_dict(keep_vars=True)
    result.float_bytes += sum(t.numel() * t.element_size() for t in state.values() if id(t) not in quantized)
    result.stages.append({"stage": name, "seconds": seconds, "layers": len(qmodel.quantized_layers())})
    if writer is not None:
        writer.write(name, {k: quantized.get(id(t), t).detach() for k, t in state.items()})


def _run(model: nn.Module, batches: list[tuple]) -> list[torch.Tensor]:
    with torch.inference_mode():
        return [model(*b) for b in batches]


def stream_quantize(
    source: CheckpointSource | str | Path,
    calib_ids: Sequence[torch.Tensor],
    config: QuantConfig,
    *,
    eval_ids: Sequence[torch.Tensor] = (),
    score: Score | None = None,
    out: str | Path | None = None,
    progress: bool | None = None,
    on_stage: Stage | None = None,
    eval_rows: int = EVAL_ROWS,
) -> StreamResult:
    """Quantize the causal LM in `source` (a CheckpointSource or its folder) one decoder layer at a time.

    `calib_ids` / `eval_ids`: batches of token ids [B, T]. Evaluation windows ride along the stream through the
    quantized layers; `score(i, positions, logits)` reduces the logits of eval batch i at token `positions` (a
    slice of T; about `eval_rows` tokens at a time) to a summary; each batch's summaries are added (kept in the result;
    the logits are not). `out`: a folder to write the quantized model to as safetensors shards (weights as the
    quantized model uses them: dequantized, scales folded in), loadable by `from_pretrained` when activations
    are float (weight-only configs). `on_stage(name)` is called as each stage starts (to measure memory)."""
    from lowbit.api import quantize

    src = source if isinstance(source, CheckpointSource) else CheckpointSource(source)
    writer = _ShardWriter(Path(out), src) if out is not None else None
    result, start, stage = StreamResult(), time.perf_counter(), on_stage or (lambda name: None)
    stage(EMBED)
    hidden, hidden_eval = _embed(src, calib_ids, eval_ids, result, writer)
    context = _Context(src.rotary())
    for i in tqdm(range(src.num_layers), desc="layers", disable=None if progress is None else not progress):
        t0, path = time.perf_counter(), f"{LAYERS}.{i}"
        _release_freed_memory()
        stage(path)
        qmodel = quantize(DecoderStep(path, src.module(path)), context.of(hidden), config, progress=False)
        hidden = _run(qmodel, context.of(hidden))
        t1 = time.perf_counter()
        hidden_eval = _run(qmodel, context.of(hidden_eval))
        result.eval_seconds += time.perf_counter() - t1
        _account(result, qmodel, path, time.perf_counter() - t0, writer)
        del qmodel
    _release_freed_memory()
    stage(HEAD)
    head = quantize(HeadStep({NORM: src.module(NORM), HEAD: src.module(HEAD)}), [(h,) for h in hidden], config,
                    progress=False)
    del hidden
    stage("score")
    _head(src, head, hidden_eval, partial(_score, score=score, rows=eval_rows) if score else None, result,
          writer)
    if writer is not None:
        writer.finish()
    result.seconds = time.perf_counter() - start
    log.info("streamed %d layers in %.1f s: %.3f bits per quantized weight", src.num_layers, result.seconds,
             result.bits_per_weight)
    return result


def _release_freed_memory() -> None:
    """Free the last stage's objects and hand the memory back to the OS, so that the resident set does not grow
    from layer to layer: a finished stage's graphs hold reference cycles (fx, torch.export), which only the
    cyclic collector frees, and glibc keeps freed heap pages (the stage's scattered temporaries) unless
    trimmed (malloc_trim; nothing elsewhere)."""
    gc.collect()
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


@cache
def _libc():
    try:
        return ctypes.CDLL(None)
    except OSError:  # no C library to load symbols from
        return None


class _Context:
    """The inputs a decoder layer takes besides the hidden states: rotary cos/sin and the causal mask."""

    def __init__(self, rotary: nn.Module) -> None:
        self.rotary = rotary

    def of(self, hidden: list[torch.Tensor]) -> list[tuple]:
        out = []
        for h in hidden:
            pos = torch.arange(h.shape[1]).expand(h.shape[0], -1)
            cos, sin = _run(self.rotary, [(h, pos)])[0]
            out.append((h, cos, sin, causal_mask(h.shape[0], h.shape[1])))
        return out


def _embed(src: CheckpointSource, calib_ids, eval_ids, result: StreamResult, writer) -> tuple[list, list]:
    """Hidden states of the calibration and evaluation windows after the (float) token embedding."""
    embed = src.module(EMBED)
    result.float_bytes += sum(p.numel() * p.element_size() for p in embed.parameters())
    if writer is not None:
        writer.write(EMBED, {f"{EMBED}.{k}": v for k, v in embed.state_dict().items()})
    return [_run(embed, [(ids,)])[0] for ids in calib_ids], [_run(embed, [(ids,)])[0] for ids in eval_ids]


def _head(src: CheckpointSource, head, hidden_eval: list, score, result: StreamResult, writer) -> None:
    """Score the evaluation windows through the quantized final norm + lm_head and account for it."""
    t0 = time.perf_counter()
    result.eval_summaries = [score(head, j, h) for j, h in enumerate(hidden_eval)] if score else []
    result.eval_seconds += time.perf_counter() - t0
    _account(result, head, "head", 0.0, writer)
    info = head.layers.get(HEAD)
    tied = getattr(src.config, "tie_word_embeddings", False)
    if tied and (info is None or info.kept_float):
        lm_head = head.graph_module.get_submodule(HEAD)
        result.float_bytes -= sum(p.numel() * p.element_size() for p in lm_head.parameters())  # stored once
    elif tied and writer is not None:
        writer.untie(src)  # the quantized head and the float embedding are two tables now


def _score(head, j: int, h: torch.Tensor, *, score: Score, rows: int) -> torch.Tensor:
    """Eval batch j's summary, added over chunks of positions of about `rows` tokens each (at least two
    positions, as the captured head's dynamic shapes expect)."""
    batch, length = h.shape[:2]
    chunks = max(1, min(length // 2, batch * length // rows))
    total = None
    with torch.inference_mode():
        for pos in torch.arange(length).tensor_split(chunks):
            at = slice(int(pos[0]), int(pos[-1]) + 1)
            part = score(j, at, head(h[:, at]))
            total = part if total is None else total + part
    return total


class _ShardWriter:
    """Writes one safetensors shard per stage and the index that `from_pretrained` reads."""

    def __init__(self, folder: Path, src: CheckpointSource) -> None:
        self.folder, self.weight_map = folder, {}
        folder.mkdir(parents=True, exist_ok=True)
        src.config.save_pretrained(folder)

    def untie(self, src: CheckpointSource) -> None:
        config = copy.deepcopy(src.config)
        config.tie_word_embeddings = False
        config.save_pretrained(self.folder)

    def write(self, stage: str, tensors: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        name = f"model-{len(set(self.weight_map.values())) + 1:05d}.safetensors"
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(self.folder / name), {"format": "pt"})
        self.weight_map.update({k: name for k in tensors})

    def finish(self) -> None:
        import json

        index = {"metadata": {}, "weight_map": self.weight_map}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))


__all__ = ["DecoderStep", "HeadStep", "StreamResult", "stream_quantize"]
