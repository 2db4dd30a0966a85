"""Small models for pipeline tests (numerics only; real models are exercised in tests/test_real_models.py)."""

import torch
from torch import nn


class TinyCNN(nn.Module):
    """conv-BN-ReLU, a residual add, a concat, pooling and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1)
        self.conv_b = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        y = torch.relu(self.conv_a(x)) + x
        z = torch.cat([y, self.conv_b(y)], dim=1)
        return self.head(torch.nn.functional.adaptive_avg_pool2d(z, 1).flatten(1))


class TinyAttention(nn.Module):
    """One self-attention block using scaled_dot_product_attention, with Q/K/V reading one LayerNorm output."""

    def __init__(self, d: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x, mask):
        b, t, d = x.shape
        h = self.norm(x)

        def split(y):
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        bias = (1.0 - mask[:, None, None, :].float()) * -1e4
        a = torch.nn.functional.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)), bias)
        return x + self.o(a.transpose(1, 2).reshape(b, t, d))


def trained_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BatchNorm layers non-trivial running statistics, then switch to eval mode."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def images(n_batches=3, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 12, 12, generator=g),) for _ in range(n_batches)]


def tokens(n_batches=3, batch=2, t=6, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        mask = torch.ones(batch, t, dtype=torch.long)
        mask[0, t - 2 :] = 0
        out.append((torch.randn(batch, t, d, generator=g), mask))
    return out


def bn_from_data(model: nn.Module, batches) -> nn.Module:
    """Set each BatchNorm2d's running mean and variance to those of its input on `batches` (in eval mode, in
    module order, so later BatchNorms see the earlier ones already set): BN's N(beta, gamma^2) assumption about
    its output then holds for the mean and variance on that data."""
    model.eval()
    for bn in [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]:
        seen = []
        handle = bn.register_forward_pre_hook(lambda _m, args, seen=seen: seen.append(args[0].detach()))
        with torch.no_grad():
            for b in batches:
                model(*b)
        handle.remove()
        x = torch.cat(seen).transpose(0, 1).reshape(bn.num_features, -1).double()
        bn.running_mean.copy_(x.mean(1))
        bn.running_var.copy_(x.var(1, unbiased=False))
    return model
