"""The body of `lowbit quantize-llm`: stream-quantize SmolLM2 or a user's Hugging Face causal LM folder and
report perplexity, bits per weight, size, time and peak memory.

Data: token windows of `window` tokens. A `.txt` file is tokenized with the model folder's tokenizer (SmolLM2:
its GGUF tokenizer); a tensor file (.pt/.npy/.safetensors) holds token ids [N, T] already. Without data, the
zoo's corpora are used: movie-plot synopses to calibrate, 2012 convention speeches to evaluate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from lowbit import metrics
from lowbit.config import PassSpec, QuantConfig, preset
from lowbit.llm.hf import CheckpointSource, smollm2_checkpoint
from lowbit.llm.streaming import stream_quantize

SMOLLM2 = "smollm2"
WINDOW = 256
BATCH = 4


@dataclass(frozen=True)
class LLMRequest:
    model: str  # "smollm2" or a folder with config.json + *.safetensors
    preset: str = "w4a16"
    passes: tuple[str, ...] = ()
    calib: str | None = None
    eval: str | None = None
    n_calib: int = 16
    n_eval: int = 16
    window: int = WINDOW
    out: str | None = None


def config_of(req: LLMRequest) -> QuantConfig:
    config = preset(req.preset)
    return replace(config, passes=config.passes + tuple(PassSpec.parse(p) for p in req.passes))


def _tokenize(req: LLMRequest):
    if req.model == SMOLLM2:
        from lowbit.zoo.smollm2 import tokenizer

        return tokenizer()
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(req.model)
    except (OSError, ValueError) as err:
        raise ValueError(f"{req.model} has no tokenizer: pass --calib/--eval as token-id tensor files") from err


def windows(req: LLMRequest, path: str | None, count: int, default_texts) -> list[torch.Tensor]:
    """`count` windows of token ids in batches of BATCH, from `path` or the default corpus."""
    if path is not None and Path(path).suffix != ".txt":
        from lowbit.tensorfile import read_tensor

        ids = read_tensor(path)[1].long()
        if ids.dim() != 2:
            raise ValueError(f"{path}: token ids must be [N, T], got {tuple(ids.shape)}")
        ids = ids[:count]
    else:
        text = Path(path).read_text() if path is not None else "\n\n".join(default_texts())
        flat = torch.tensor(_tokenize(req)(text, add_special_tokens=False)["input_ids"])
        available = len(flat) // req.window
        if available < count:
            raise ValueError(f"the text holds {available} windows of {req.window} tokens; {count} asked")
        picks = torch.linspace(0, available - 1, count).round().long()
        ids = flat[: available * req.window].view(available, req.window)[picks]
    return list(ids.split(BATCH))


def perplexity_score(eval_ids: list[torch.Tensor]):
    """score(i, positions, logits) for stream_quantize: [summed NLL, token count] of the tokens that the logits
    at `positions` (a slice) of eval batch i predict (position t predicts token t + 1; the last predicts none)."""

    def score(i: int, positions: slice, logits: torch.Tensor) -> torch.Tensor:
        ids = eval_ids[i]
        start, stop, _ = positions.indices(ids.shape[1])
        stop = min(stop, ids.shape[1] - 1)
        total, count = metrics.token_nll(logits[:, : stop - start], ids[:, start + 1 : stop + 1])
        return torch.tensor([total, count], dtype=torch.float64)

    return score


def perplexity(summaries: list[torch.Tensor]) -> float:
    total, count = torch.stack(summaries).sum(0).tolist()
    return math.exp(total / count) if count else float("nan")


def source_of(req: LLMRequest) -> CheckpointSource:
    return CheckpointSource(smollm2_checkpoint() if req.model == SMOLLM2 else req.model)


def run(req: LLMRequest, progress: bool | None = None) -> dict:
    from lowbit.zoo.data import convention_speeches, movie_plots

    config = config_of(req)
    src = source_of(req)
    calib = windows(req, req.calib, req.n_calib, movie_plots)
    ev = windows(req, req.eval, req.n_eval, convention_speeches)
    result = stream_quantize(src, calib, config, eval_ids=ev, score=perplexity_score(ev), out=req.out,
                             progress=progress)
    return {"model": str(src.folder), "preset": req.preset, "passes": [*req.passes],
            "perplexity": perplexity(result.eval_summaries), "bits_per_weight": result.bits_per_weight,
            "size_bytes": result.size_bytes, "seconds": result.seconds, "layers": src.num_layers,
            "calib_windows": sum(len(c) for c in calib), "eval_windows": sum(len(e) for e in ev),
            "out": req.out}


__all__ = ["LLMRequest", "config_of", "perplexity", "perplexity_score", "run", "source_of", "windows"]
