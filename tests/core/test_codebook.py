"""Codebooks (NF4, FP4, dynamic tree map), nearest-level coding and block-wise absmax quantization."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.core.codebook import (
    CodeTable,
    blockwise_dequantize,
    blockwise_quantize,
    dynamic_map,
    fp4_e2m1_values,
    nearest_code,
    nf4_values,
)

# The NF4 table as published with QLoRA (appendix E, and bitsandbytes' NF4 lookup table): the reference only.
NF4_PUBLISHED = [
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small tensors: intra-op threads only contend on a shared machine
    yield
    torch.set_num_threads(threads)


def test_nf4_matches_the_published_table():
    values = nf4_values()
    assert values.dtype == torch.float32 and values.shape == (16,)
    torch.testing.assert_close(values, torch.tensor(NF4_PUBLISHED), atol=1e-4, rtol=0)
    assert values[7] == 0.0 and values[0] == -1.0 and values[-1] == 1.0


def test_fp4_e2m1_is_the_fifteen_e2m1_values_over_six():
    expected = torch.tensor([-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]) / 6
    assert torch.equal(fp4_e2m1_values(), expected)


@pytest.mark.parametrize("signed", [True, False])
def test_dynamic_map_has_256_sorted_levels_covering_the_range(signed):
    values = dynamic_map(signed=signed)
    assert values.dtype == torch.float32 and values.shape == (256,)
    assert (values.diff() > 0).all()  # strictly sorted: no duplicated code
    assert values[0] == (-1.0 if signed else 0.0) and values[-1] == 1.0
    assert (values == 0).sum() == 1


def test_dynamic_map_decades_follow_the_bit_layout():
    # unsigned: the run of E zeros leaves 7 - E fraction bits -> 2**(7 - E) levels in (10**-(E+1), 10**-E]
    unsigned = dynamic_map(signed=False).double()
    for e in range(8):
        in_decade = (unsigned > 10.0 ** -(e + 1) * (1 + 1e-6)) & (unsigned <= 10.0**-e * (1 + 1e-6))
        assert int(in_decade.sum()) == 2 ** (7 - e), e
    signed = dynamic_map(signed=True).double()
    assert int((signed > 0.1 * (1 + 1e-6)).sum()) == 64  # sign bit taken: 6 fraction bits in the top decade
    assert signed[1] - signed[0] == pytest.approx(0.9 / 64, rel=1e-5)
    assert float(signed[signed < 0].abs().min()) == pytest.approx(1e-7)  # the re-read "-0" code


def test_dynamic_map_tiny_widths_by_hand():
    # unsigned 2 bits: E=0 with 1 fraction bit (0.55, 1), E=1 with none (0.1), and zero
    assert torch.equal(dynamic_map(signed=False, bits=2), torch.tensor([0.0, 0.1, 0.55, 1.0]))
    expected = torch.tensor([-1.0, -0.55, -0.1, -0.01, 0.0, 0.1, 0.55, 1.0])
    assert torch.equal(dynamic_map(signed=True, bits=3), expected)


@pytest.mark.parametrize("bits", [0, 9, 1.5, True])
def test_dynamic_map_rejects_impossible_widths(bits):
    with pytest.raises(ValueError, match="bits"):
        dynamic_map(signed=True, bits=bits)


def test_nearest_code_by_hand_with_ties_to_even():
    values = torch.tensor([0.0, 0.5, 1.0, 1.5])
    x = torch.tensor([0.25, 0.75, 1.25, 0.3, 0.2, -3.0, 9.0, 1.0])
    assert nearest_code(x, values).tolist() == [0, 2, 2, 1, 0, 0, 3, 2]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1.25, 1.25, width=32), min_size=1, max_size=50), st.booleans())
def test_nearest_code_picks_a_nearest_level(xs, signed):
    values = dynamic_map(signed=signed)
    x = torch.tensor(xs, dtype=torch.float32)
    idx = nearest_code(x, values)
    dist = (x[:, None] - values[None, :]).abs()
    assert torch.equal(dist.gather(1, idx[:, None]).squeeze(1), dist.min(dim=1).values)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=300),
    st.integers(1, 64),
    st.sampled_from(["signed", "unsigned", "nf4"]),
)
def test_blockwise_error_is_at_most_half_the_widest_gap(xs, block_size, book):
    values = {"signed": dynamic_map(True), "unsigned": dynamic_map(False), "nf4": nf4_values()}[book]
    x = torch.tensor(xs, dtype=torch.float32)
    if book == "unsigned":
        x = x.abs()
    codes, absmax = blockwise_quantize(x, values, block_size)
    n_blocks = math.ceil(x.numel() / block_size)
    assert codes.dtype == torch.uint8 and codes.shape == (x.numel(),)
    assert absmax.dtype == torch.float32 and absmax.shape == (n_blocks,)
    deq = blockwise_dequantize(codes, absmax, values, x.shape, block_size)
    per_element_absmax = absmax.repeat_interleave(block_size)[: x.numel()]
    bound = per_element_absmax * float(values.diff().max()) / 2
    assert ((x - deq).abs() <= bound * (1 + 1e-5) + 1e-30).all()
    # the absmax element of every block is a level (±1) times absmax: it comes back exactly
    blocks = torch.nn.functional.pad(x, (0, n_blocks * block_size - x.numel())).view(n_blocks, block_size)
    where = blocks.abs().argmax(dim=1) + torch.arange(n_blocks) * block_size
    assert torch.equal(deq[where].abs(), absmax)


def test_blockwise_keeps_shape_and_zero_blocks():
    x = torch.zeros(3, 5, 7)
    x[2, 4, 6] = -2.5  # only the last (padded) block is non-zero
    values = dynamic_map()
    codes, absmax = blockwise_quantize(x, values, 16)
    assert absmax.tolist() == [0.0] * 6 + [2.5]  # ceil(105 / 16) = 7 blocks
    assert torch.equal(blockwise_dequantize(codes, absmax, values, x.shape, 16), x)


def test_blockwise_bad_input():
    values = dynamic_map()
    with pytest.raises(ValueError, match="NaN or Inf"):
        blockwise_quantize(torch.tensor([1.0, float("nan"), 2.0]), values, 2)
    for bad in (0, -4, 2.0, True):
        with pytest.raises(ValueError, match="block_size must be a positive integer"):
            blockwise_quantize(torch.ones(4), values, bad)
    codes, absmax = blockwise_quantize(torch.ones(10), values, 6)
    with pytest.raises(ValueError, match="do not fit"):
        blockwise_dequantize(codes, absmax, values, (10,), 4)  # 3 blocks expected, 2 given
    with pytest.raises(ValueError, match="uint8"):
        blockwise_quantize(torch.ones(4), torch.linspace(-1, 1, 300), 2)


@pytest.mark.parametrize(
    "values",
    [dynamic_map(True), dynamic_map(False), nf4_values(), fp4_e2m1_values(), dynamic_map(True, bits=4)],
    ids=["dynamic", "dynamic-unsigned", "nf4", "fp4", "dynamic4"],
)
def test_code_table_fast_path_equals_nearest_code(values):
    table = CodeTable.build(values)
    assert table.low is not None  # all these codebooks are coarse enough for 16-bit keys
    g = torch.Generator().manual_seed(0)
    mids = (values[1:] + values[:-1]) / 2
    x = torch.cat([
        torch.randn(20000, generator=g) * 0.3, torch.rand(20000, generator=g) * 2 - 1,
        torch.randn(2000, generator=g) * 1e-6, mids, values, torch.nextafter(mids, torch.ones(1)),
        torch.nextafter(mids, -torch.ones(1)), torch.tensor([0.0, -0.0, 1e-40, -1e-40, 3.0, -3.0]),
    ])  # fmt: skip
    assert torch.equal(table.encode(x).long(), nearest_code(x, values))
    codes_fast, absmax_fast = blockwise_quantize(x * 7, table, 100)
    codes_ref, absmax_ref = blockwise_quantize(x * 7, values, 100)
    assert torch.equal(codes_fast, codes_ref) and torch.equal(absmax_fast, absmax_ref)


def test_code_table_falls_back_when_levels_are_too_close():
    values = torch.tensor([-1.0, 0.5, 0.501, 0.502, 1.0])  # three levels within one 1% run of values
    table = CodeTable.build(values)
    assert table.low is None
    x = torch.linspace(-1, 1, 1001)
    assert torch.equal(table.encode(x).long(), nearest_code(x, values))
