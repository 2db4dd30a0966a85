"""8-bit optimizers: drop-in torch.optim replacements with block-wise quantized states (Dettmers et al.)."""

from lowbit.optim.adam import Adam8bit, AdamW8bit
from lowbit.optim.base import DEFAULT_BLOCK_SIZE, DEFAULT_MIN_8BIT_SIZE, OPTIMIZERS, Optimizer8bit
from lowbit.optim.sgd import SGD8bit

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_MIN_8BIT_SIZE",
    "OPTIMIZERS",
    "Adam8bit",
    "AdamW8bit",
    "Optimizer8bit",
    "SGD8bit",
]
