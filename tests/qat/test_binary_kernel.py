"""XNOR/popcount matmul against the float ±1 reference, and the bit layout against lowbit.core.packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowbit.qat import binary_kernel
from lowbit.qat.binary_kernel import (
    pack_signs,
    pack_signs_reference,
    reference_matmul,
    unpack_signs,
    xnor_popcount_matmul,
)


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 40), n=st.integers(1, 40), k=st.integers(1, 300), seed=st.integers(0, 2**16))
def test_xnor_popcount_equals_float_reference(m, n, k, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(m, k, generator=g), torch.randn(n, k, generator=g)
    a[0, 0] = 0.0  # sign(0) = +1 on both paths
    out = xnor_popcount_matmul(pack_signs(a), pack_signs(b))
    assert out.dtype == torch.int32
    assert torch.equal(out.to(torch.float64), reference_matmul(a, b))


def test_pack_layout_is_core_packing_and_round_trips():
    a = torch.randn(7, 200)
    p = pack_signs(a)
    assert p.words.shape == (7, 4) and p.words.dtype == np.uint64
    assert np.array_equal(p.words.view(np.uint8), pack_signs_reference(a))
    assert torch.equal(unpack_signs(p), torch.where(a >= 0, 1.0, -1.0))


def test_large_chunked_product(monkeypatch):
    monkeypatch.setattr(binary_kernel, "CHUNK_ELEMENTS", 64)  # force many chunks
    a, b = torch.randn(50, 130), torch.randn(9, 130)
    assert torch.equal(xnor_popcount_matmul(pack_signs(a), pack_signs(b)).double(), reference_matmul(a, b))


def test_byte_table_popcount_matches_numpy():
    if not hasattr(np, "bitwise_count"):
        pytest.skip("numpy < 2 has no bitwise_count to compare with")
    words = np.random.default_rng(0).integers(0, 2**63, size=(5, 3), dtype=np.uint64)
    table = binary_kernel.BYTE_POPCOUNT[words.view(np.uint8)].reshape(5, 3, 8).sum(-1)
    assert np.array_equal(table, np.bitwise_count(words))


def test_mismatched_inner_dimension_is_an_error():
    with pytest.raises(ValueError, match="inner dimensions"):
        xnor_popcount_matmul(pack_signs(torch.ones(2, 3)), pack_signs(torch.ones(2, 4)))
