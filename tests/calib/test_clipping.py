"""Behaviour of the clipping estimators: MSE is best at its own objective, KL clips outliers, ACIQ's
constants,
qtype signedness respected."""

import pytest
import torch

from lowbit.calib import METHODS
from lowbit.calib.aciq import optimal_alpha
from lowbit.core import fake_quantize, get_qtype

# Banner et al. 2019, optimal clipping in units of b (Laplace) and sigma (Gaussian) for 2..8 bits
PUBLISHED_LAPLACE = (2.83, 3.89, 5.03, 6.2, 7.41, 8.64, 9.89)
PUBLISHED_GAUSSIAN = (1.71, 2.15, 2.55, 2.94, 3.29, 3.61, 3.92)
HISTOGRAM_SLACK = 5e-3  # the MSE search runs on 2048-bin histograms, the comparison on the raw data


def sample(kind: str, n: int = 30_000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian_outliers":
        return torch.cat([torch.randn(n, generator=g), torch.tensor([9.0, -12.0, 15.0])])
    if kind == "laplace":
        u = torch.rand(n, generator=g) - 0.5
        return -u.sign() * torch.log1p(-2 * u.abs())
    if kind == "relu":
        return torch.randn(n, generator=g).relu()
    return torch.randn(n, generator=g) * 0.5 + 2.0  # shifted


def quant_mse(est, x, qtype, symmetric):
    return (fake_quantize(x, est.qparams(qtype, symmetric)) - x).double().pow(2).mean().item()


@pytest.mark.parametrize("kind", ["gaussian_outliers", "laplace", "relu", "shifted"])
@pytest.mark.parametrize(
    ("qname", "symmetric"), [("int8", True), ("int4", True), ("uint4", False), ("uint8", True)]
)
def test_mse_estimator_error_is_not_above_any_other(observe, kind, qname, symmetric):
    x, qtype = sample(kind, n=12_000), get_qtype(qname)
    errors = {m: quant_mse(observe(m, x.chunk(4)), x, qtype, symmetric) for m in METHODS}
    for method, err in errors.items():
        assert errors["mse"] <= err * (1 + HISTOGRAM_SLACK), (method, errors)


def test_kl_clips_below_max_on_gaussian_with_outliers(observe):
    x = sample("gaussian_outliers")
    lo, hi = observe("kl", x.chunk(3)).compute_range(get_qtype("int8"))
    amax = x.abs().max().item()
    assert hi.item() < 0.5 * amax and lo.item() == -hi.item()
    assert 2.5 < hi.item()  # still above the bulk of N(0, 1)


def test_kl_and_admm_use_the_positive_range_of_unsigned_qtypes(observe):
    x = sample("relu")
    for name in ("kl", "admm", "mse"):
        est = observe(name, [x])
        lo, _ = est.compute_range(get_qtype("uint8"))
        assert lo.item() == 0.0
        qp = est.qparams(get_qtype("uint8"))
        assert qp.zero_point.item() == 0  # all 256 levels on [0, T]


@pytest.mark.parametrize("bits", range(2, 9))
def test_aciq_constants_match_the_paper(bits):
    assert optimal_alpha("laplace", bits) == pytest.approx(PUBLISHED_LAPLACE[bits - 2], abs=0.01)
    assert optimal_alpha("gaussian", bits) == pytest.approx(PUBLISHED_GAUSSIAN[bits - 2], abs=0.01)


def test_aciq_picks_the_better_fit(observe):
    gauss, lap = sample("shifted"), sample("laplace")
    assert not observe("aciq", gauss.chunk(3)).fits()["laplace_better"].item()
    est = observe("aciq", lap.chunk(3))
    assert est.fits()["laplace_better"].item()
    assert est.fits()["b"].item() == pytest.approx(1.0, rel=0.03)
    _, hi = est.compute_range(get_qtype("int4"))
    assert hi.item() == pytest.approx(optimal_alpha("laplace", 4), rel=0.05)
    forced = observe("aciq", lap.chunk(3), distribution="gaussian")
    assert forced.compute_range(get_qtype("int4"))[1].item() == pytest.approx(
        optimal_alpha("gaussian", 4) * lap.std().item(), rel=0.02
    )


def test_admm_converges_to_a_fixed_point(observe):
    """At convergence s = <x, q> / <q, q> for the codes q that x rounds to (on the histogram's centres)."""
    x = sample("laplace")
    est = observe("admm", [x], iterations=60)
    _, t = est.compute_range(get_qtype("int4"))
    s = t.double() / 7
    c, w = est.hist.centres()[0], est.hist.counts[0]
    q = torch.round(c / s).clamp(-8, 7)
    assert (w * c * q).sum() / (w * q * q).sum() == pytest.approx(s.item(), rel=1e-3)
    assert 2.0 < t.item() < x.abs().max().item()


def test_mse_supports_per_channel_and_float_qtypes(observe):
    g = torch.Generator().manual_seed(4)
    w = torch.randn(4, 2048, generator=g) * torch.tensor([[0.1], [1.0], [3.0], [0.02]])
    est = observe("mse", [w], granularity=__import__("lowbit.core", fromlist=["PerChannel"]).PerChannel(0))
    _, hi = est.compute_range(get_qtype("int4"))
    assert hi.shape == (4,)
    ratio = hi / w.abs().amax(dim=1)
    assert (ratio < 1).all() and (ratio > 0.4).all()
    fp8 = observe("mse", [w[2]]).qparams(get_qtype("fp8_e4m3"))
    assert fp8.scale.item() > 0
