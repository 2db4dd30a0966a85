"""k-means weight sharing.

Han, Mao and Dally, "Deep Compression: Compressing Deep Neural Networks with Pruning, Trained Quantization and
Huffman Coding", ICLR 2016, section 3. The weights of a layer are clustered into k = 2^bits shared values:
centroids initialised linearly between min and max (section 3.2), refined by Lloyd's k-means, then fixed
assignments; during fine-tuning each centroid moves with the sum of its members' gradients (section 3.3,
dL/dC_k = sum_{i,j} dL/dW_ij 1(I_ij = k)), which is autograd's gradient of an index lookup. Pruning and
Huffman coding are not part of this method.
"""

from __future__ import annotations

import torch
from torch import nn

from lowbit.core.granularity import PerTensor
from lowbit.core.qparams import QParams
from lowbit.qat.base import QATMethod, WeightQuantizer, register_method
from lowbit.qat.ste_ema import EMAInput
from lowbit.qat.table import TableQType

LLOYD_ITERS = 20


def nearest(w: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    return (w.reshape(-1, 1) - centroids.reshape(1, -1)).abs().argmin(dim=1).reshape(w.shape)


def kmeans_1d(w: torch.Tensor, k: int, iters: int = LLOYD_ITERS) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroids (k,) from linear initialisation plus `iters` Lloyd steps, and the assignment (shape of w)."""
    w = w.detach().to(torch.float32)
    centroids = torch.linspace(float(w.min()), float(w.max()), k)
    flat = w.reshape(-1)
    for _ in range(iters):
        assign = nearest(flat, centroids)
        sums = torch.zeros(k).index_add_(0, assign, flat)
        counts = torch.zeros(k).index_add_(0, assign, torch.ones_like(flat))
        centroids = torch.where(counts > 0, sums / counts.clamp_min(1), centroids)  # empty clusters stay put
    return centroids, nearest(w, centroids)


class KMeansWeight(WeightQuantizer):
    def __init__(self, bits: int, weight: torch.Tensor) -> None:
        super().__init__(bits)
        centroids, assign = kmeans_1d(weight, 2**bits)
        self.centroids = nn.Parameter(centroids)
        self.register_buffer("assign", assign)

    def train_forward(self, w):
        return self.centroids[self.assign].to(w.dtype)

    def export(self, w):
        table, codes = TableQType.from_levels(self.centroids, self.assign)
        return codes, QParams(torch.ones(1), torch.zeros(1, dtype=torch.int32), table, PerTensor())


register_method(
    QATMethod(
        name="kmeans",
        weight=KMeansWeight,
        input=EMAInput,
        paper="Han, Mao and Dally, Deep Compression, ICLR 2016",
        weight_bits=(1, 2, 3, 4, 5, 6, 7, 8),
        act_bits=(None, 2, 3, 4, 5, 6, 7, 8, 16),
    )
)
