import pytest
import torch

from lowbit.core import MXBlock, PerChannel, PerGroup, PerTensor, PerToken, PerVector, from_blocks, to_blocks

CASES = [
    (PerTensor(), (3, 4, 5), (1, 60)),
    (PerChannel(0), (3, 4, 5), (3, 20)),
    (PerChannel(1), (2, 3, 4, 4), (3, 32)),
    (PerGroup(4, -1), (3, 8), (6, 4)),
    (PerGroup(2, 0), (4, 3), (6, 2)),
    (PerToken(), (2, 5, 8), (10, 8)),
    (PerVector(16), (4, 32), (8, 16)),
    (MXBlock(32), (2, 64), (4, 32)),
]


@pytest.mark.parametrize("g,shape,blocks", CASES)
def test_block_shapes_and_round_trip(g, shape, blocks):
    x = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).reshape(shape)
    xb = to_blocks(x, g)
    assert tuple(xb.shape) == blocks
    assert torch.equal(from_blocks(xb, g, shape), x)


def test_channel_block_holds_that_channel():
    x = torch.randn(2, 3, 4, 4)
    xb = to_blocks(x, PerChannel(1))
    assert torch.equal(xb[1].sort().values, x[:, 1].reshape(-1).sort().values)


def test_group_must_divide():
    with pytest.raises(ValueError, match="does not divide dimension 10"):
        to_blocks(torch.zeros(3, 10), PerGroup(4))
    with pytest.raises(ValueError, match="positive integer"):
        PerGroup(0)
