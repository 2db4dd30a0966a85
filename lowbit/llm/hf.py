"""A Hugging Face causal LM on disk, read one module at a time.

`CheckpointSource` opens a folder with config.json and *.safetensors (one file or shards with an index) and
builds any module of the model on demand: the module skeleton comes from the config on the meta device (no
memory), its weights are read with safetensors' lazy `safe_open` (only the tensors of that module) and bound
with `load_state_dict(assign=True)`. The architecture is the Llama family's layout, which Llama, Mistral,
Qwen2 and SmolLM2 share: `model.embed_tokens`, `model.layers.<i>`, `model.norm`, `model.rotary_emb`, `lm_head`
(tied to the embedding when the config says so).

SmolLM2 ships as a GGUF file, not safetensors: `smollm2_checkpoint()` writes it once to a cache folder with
safetensors' `save_model` (the benchmark reports that conversion's time as setup).
"""

from __future__ import annotations

import json
import os
import tempfile
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

LAYERS = "model.layers"
EMBED, NORM, HEAD, ROTARY = "model.embed_tokens", "model.norm", "lm_head", "model.rotary_emb"
CACHE_ENV = "LOWBIT_CACHE"


class CheckpointSource:
    """Lazy access to the modules of a causal LM saved as config.json + safetensors in `folder`."""

    def __init__(self, folder: str | Path) -> None:
        from transformers import AutoConfig

        self.folder = Path(folder)
        if not (self.folder / "config.json").exists():
            raise FileNotFoundError(f"{self.folder} has no config.json; pass a folder written by save_pretrained")
        self.config = AutoConfig.from_pretrained(self.folder)
        self.config._attn_implementation = "eager"  # plain matmul/softmax: capturable and quantizable
        self.files = self._weight_map()

    def _weight_map(self) -> dict[str, Path]:
        index = self.folder / "model.safetensors.index.json"
        if index.exists():
            return {k: self.folder / f for k, f in json.loads(index.read_text())["weight_map"].items()}
        from safetensors import safe_open

        files = sorted(self.folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.folder} holds no *.safetensors file")
        out = {}
        for f in files:
            with safe_open(str(f), "pt") as handle:
                out.update({k: f for k in handle.keys()})  # noqa: SIM118  (safe_open is not a dict)
        return out

    @cached_property
    def skeleton(self) -> nn.Module:
        """The whole model on the meta device: shapes and classes, no weights."""
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(self.config, attn_implementation="eager")

    @property
    def num_layers(self) -> int:
        return len(self.skeleton.get_submodule(LAYERS))

    def tensors(self, prefix: str) -> dict[str, torch.Tensor]:
        """Every stored tensor under `prefix.`, read lazily from its file, with the prefix stripped."""
        from safetensors import safe_open

        keys = [k for k in self.files if k.startswith(prefix + ".")]
        out = {}
        for f in {self.files[k] for k in keys}:
            with safe_open(str(f), "pt") as handle:
                out.update({k[len(prefix) + 1 :]: handle.get_tensor(k) for k in keys if self.files[k] == f})
        return out

    def module(self, path: str) -> nn.Module:
        """A fresh copy of the module at `path` with its weights loaded (with tied embeddings, the head and the
        embedding read whichever of the two names the checkpoint stores)."""
        import copy

        mod = copy.deepcopy(self.skeleton.get_submodule(path))
        state = self.tensors(path)
        tied = {HEAD: EMBED, EMBED: HEAD}
        if not state and path in tied and getattr(self.config, "tie_word_embeddings", False):
            state = self.tensors(tied[path])  # tied weights are stored once, under either name
        mod.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True, assign=True)
        return mod.eval()

    def rotary(self) -> nn.Module:
        """The rotary embedding rebuilt on the CPU (its buffers are computed from the config, not stored)."""
        return type(self.skeleton.get_submodule(ROTARY))(config=self.config).eval()


def causal_mask(batch: int, length: int) -> torch.Tensor:
    """[batch, 1, T, T] additive mask: 0 where a position may attend, float32-min above the diagonal."""
    upper = torch.ones(length, length, dtype=torch.bool).triu(1)
    mask = torch.zeros(length, length).masked_fill(upper, torch.finfo(torch.float32).min)
    return mask.expand(batch, 1, length, length)


def smollm2_checkpoint(folder: str | Path | None = None) -> Path:
    """SmolLM2-135M-Instruct written as config.json + model.safetensors (once; re-used when present)."""
    folder = Path(folder or Path(os.environ.get(CACHE_ENV, tempfile.gettempdir())) / "lowbit-smollm2-safetensors")
    if (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
        return folder
    from safetensors.torch import save_model

    from lowbit.zoo.smollm2 import pretrained

    lm = pretrained().lm  # save_pretrained refuses GGUF-loaded models: write the fp32 weights and config directly
    folder.mkdir(parents=True, exist_ok=True)
    config = lm.config.to_dict()
    config.pop("quantization_config", None)
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    save_model(lm, str(folder / "model.safetensors"), metadata={"format": "pt"})  # tied weights stored once
    return folder


__all__ = ["CheckpointSource", "causal_mask", "smollm2_checkpoint"]
