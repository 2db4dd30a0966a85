"""Bad input gets an error that says what went wrong and what to do."""

import pytest
import torch

from lowbit.calib import METHODS, make_estimator
from lowbit.core import MXBlock, PerChannel, PerGroup, PerToken, get_qtype

INT8 = get_qtype("int8")


@pytest.mark.parametrize("name", METHODS)
def test_nan_and_inf_name_the_count_and_the_call(name):
    est = make_estimator(name)
    est.observe(torch.randn(10))
    bad = torch.randn(20)
    bad[[1, 5, 7]] = float("nan")
    bad[9] = float("inf")
    with pytest.raises(
        ValueError, match=r"call #2 got 4 non-finite values \(3 NaN, 1 Inf\).*clean the calibration"
    ):
        est.observe(bad)
    est.observe(torch.randn(10))  # the bad batch left no trace: the next call is #2 again
    assert est.calls == 2


@pytest.mark.parametrize("name", METHODS)
def test_qparams_before_data(name):
    with pytest.raises(RuntimeError, match=r"call observe\(\) with calibration data first"):
        make_estimator(name).qparams(INT8)


def test_empty_tensor():
    with pytest.raises(ValueError, match=r"call #1 got an empty tensor of shape \(0, 3\)"):
        make_estimator("minmax").observe(torch.empty(0, 3))


def test_unsupported_granularities_name_the_supported_ones():
    with pytest.raises(ValueError, match="PerToken ranges are computed at run time"):
        make_estimator("minmax", granularity=PerToken())
    with pytest.raises(ValueError, match="kl estimator supports PerTensor, not PerChannel"):
        make_estimator("kl", granularity=PerChannel(0))
    with pytest.raises(ValueError, match="mse estimator supports PerTensor, PerChannel, not PerGroup"):
        make_estimator("mse", granularity=PerGroup(32))


def test_group_size_that_does_not_divide():
    est = make_estimator("minmax", granularity=PerGroup(5))
    with pytest.raises(ValueError, match="group size 5 does not divide dimension 12"):
        est.observe(torch.randn(3, 12))


def test_changing_block_count():
    est = make_estimator("aciq", granularity=PerChannel(1))
    est.observe(torch.randn(2, 4))
    with pytest.raises(ValueError, match="has 5 blocks.*earlier batches had 4"):
        est.observe(torch.randn(2, 5))


def test_qtype_pairings():
    est = make_estimator("kl")
    est.observe(torch.randn(100))
    with pytest.raises(ValueError, match="kl estimator assumes a uniform integer grid; nf4"):
        est.qparams(get_qtype("nf4"))
    mm = make_estimator("minmax", granularity=MXBlock(4))
    mm.observe(torch.randn(8))
    with pytest.raises(ValueError, match="symmetric"):
        mm.qparams(get_qtype("fp4_e2m1"), symmetric=False)
    assert mm.qparams(get_qtype("fp4_e2m1")).scale.shape == (2,)


def test_bad_options():
    with pytest.raises(ValueError, match="percentile must be in"):
        make_estimator("percentile", percentile=30)
    with pytest.raises(ValueError, match="ACIQ distribution"):
        make_estimator("aciq", distribution="cauchy")
    with pytest.raises(ValueError, match="even number"):
        make_estimator("mse", bins=7)
