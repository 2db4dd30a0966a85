"""A tiny randomly initialised Llama (2 layers, hidden 64) for LLM tests: random weights are fine for
equalities (streaming = whole model, smoothing leaves float outputs unchanged), never for reported figures."""

from __future__ import annotations

import torch

VOCAB, SEQ = 128, 16


def tiny_llama(tied: bool = True, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tied, attn_implementation="eager")
    torch.manual_seed(seed)
    lm = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # LLM-like outlier input channels: a few norm weights 20x the rest
        for layer in lm.model.layers:
            layer.input_layernorm.weight[:3] = 20.0
            layer.post_attention_layernorm.weight[5:7] = 15.0
    return lm


def token_batches(n: int, rows: int = 2, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (rows, SEQ), generator=g) for _ in range(n)]
