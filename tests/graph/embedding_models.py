"""Small models with embedding tables (a plain one and one tied to its LM head) and token-id batches."""

import torch
from torch import nn

VOCAB, DIM = 300, 64


class TinyEmbed(nn.Module):
    """nn.Embedding + Linear; returns the projection and the gathered rows (so both can be compared)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.lin = nn.Linear(DIM, 32)

    def forward(self, ids):
        e = self.emb(ids)
        return self.lin(e), e


class TiedEmbed(nn.Module):
    """An embedding whose table is also the output projection (SmolLM2's tied lm_head)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(VOCAB, DIM)
        self.mid = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, VOCAB, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids):
        e = self.emb(ids)
        return self.head(torch.relu(self.mid(e))), e


def seeded(cls, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return cls().eval()


def ids(n_batches: int = 2, batch: int = 3, t: int = 7, seed: int = 0) -> list[tuple[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randint(0, VOCAB, (batch, t), generator=g),) for _ in range(n_batches)]
