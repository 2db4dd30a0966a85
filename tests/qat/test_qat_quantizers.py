"""Each quantizer's forward against its definition and its gradient against the paper's formula."""

from __future__ import annotations

import math

import pytest
import torch

from lowbit.core.primitives import dequantize
from lowbit.qat import METHODS
from lowbit.qat.binary import SignWeight, StochasticSignWeight
from lowbit.qat.bwn import BWNWeight
from lowbit.qat.dsq import DSQInput, DSQWeight, soft_round
from lowbit.qat.kmeans import KMeansWeight
from lowbit.qat.lsq import LSQInput, LSQWeight
from lowbit.qat.pact import PACTInput
from lowbit.qat.ste_ema import EMAInput, MaxAbsWeight
from lowbit.qat.ttq import TTQWeight
from lowbit.qat.twn import TWNWeight
from lowbit.qat.xnor import XNORInput


@pytest.fixture
def w():
    return torch.randn(6, 3, 3, 3, generator=torch.Generator().manual_seed(0)) * 0.3


def test_ste_passes_gradient_inside_range_only():
    q = EMAInput(4)
    q(torch.tensor([0.0, 1.0]))  # first batch: range [0, 1]
    x = torch.tensor([-0.5, 0.2, 0.7, 1.5], requires_grad=True)
    q.decay = 1.0  # keep the range [0, 1] for the check
    out = q(x)
    out.sum().backward()
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    s = 1 / 15
    assert torch.allclose(out, torch.tensor([0.0, round(0.2 / s) * s, round(0.7 / s) * s, 1.0]))


def test_maxabs_weight_is_per_channel_narrow_int(w):
    q = MaxAbsWeight(4, w)
    out = q(w)
    scale = w.abs().reshape(6, -1).amax(1) / 7
    expected = torch.round(w / scale.reshape(6, 1, 1, 1)).clamp(-7, 7) * scale.reshape(6, 1, 1, 1)
    assert torch.allclose(out, expected)


def test_lsq_step_gradient_matches_paper(w):
    q = LSQWeight(4, w)
    q_n, q_p = 7, 7
    s0 = q.step.detach().clone()
    v = w.clone().requires_grad_(True)
    q(v).sum().backward()
    ratio = w / s0.reshape(6, 1, 1, 1)
    per_elem = torch.where(
        ratio <= -q_n,
        torch.full_like(ratio, -q_n),
        torch.where(ratio >= q_p, torch.full_like(ratio, q_p), -ratio + torch.round(ratio)),
    )
    g = 1 / math.sqrt(27 * q_p)
    assert torch.allclose(q.step.grad, per_elem.reshape(6, -1).sum(1) * g, atol=1e-5)
    inside = ((ratio > -q_n) & (ratio < q_p)).float()
    assert torch.equal(v.grad, inside)


def test_lsq_input_init_and_forward():
    x = torch.rand(4, 10) * 3
    q = LSQInput(4)
    q.eval()
    out = q(x)
    s = 2 * x.abs().mean() / math.sqrt(15)
    assert torch.allclose(q.step.detach(), s)
    assert torch.allclose(out, torch.round(x / s).clamp(0, 15) * s)


def test_pact_alpha_gradient_is_one_above_alpha():
    q = PACTInput(2, alpha=1.0)
    q(torch.tensor([0.0, 2.0]))  # a non-negative first batch: clip to [0, alpha]
    x = torch.tensor([-0.5, 0.3, 0.9, 1.2, 3.0], requires_grad=True)
    out = q(x)
    out.sum().backward()
    assert q.alpha.grad.item() == 2.0  # two elements >= alpha
    assert torch.equal(x.grad, torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0]))
    s = 1.0 / 3
    assert torch.allclose(out, torch.tensor([0.0, 1 * s, 3 * s, 1.0, 1.0]))


def test_dsq_soft_staircase_tends_to_rounding():
    u = torch.linspace(-3.2, 3.2, 1001)
    away_from_ties = (u - torch.floor(u) - 0.5).abs() > 0.25
    alphas = (0.5, 0.2, 0.05, 0.01, 1e-4)
    errors = [(soft_round(u, a) - torch.round(u))[away_from_ties].abs().max().item() for a in alphas]
    assert all(e1 > e2 for e1, e2 in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 0.01
    assert torch.allclose(
        soft_round(torch.tensor([0.0, 1.0, 2.0]), 0.2), torch.tensor([0.0, 1.0, 2.0]), atol=1e-6
    )


def test_dsq_forward_hard_backward_soft(w):
    q = DSQWeight(4, w)
    v = w.clone().requires_grad_(True)
    out = q(v)
    codes, qp = q.export(w)
    assert torch.allclose(out, dequantize(codes, qp))
    out.sum().backward()
    delta = (q.upper.detach() / 7).reshape(6, 1, 1, 1)
    u = (w / delta).requires_grad_(True)
    soft_round(u, q.alpha).sum().backward()
    inside = (
        u.detach().abs() < 7 - 1e-3
    )  # the channel maximum sits on the clipping bound (a tie, split by autograd)
    assert torch.allclose(v.grad[inside], u.grad[inside], atol=1e-5)  # d(soft(x/D) D)/dx = soft'(u)


def test_dsq_annealing_sharpens_gradient():
    q = DSQInput(4)
    q(torch.tensor([0.0, 15.0]))  # upper 15, step 1
    grads = []
    for p in (0.0, 1.0):
        q.set_progress(p)
        x = torch.tensor([2.5, 3.0], requires_grad=True)  # a midpoint and a level
        q(x).sum().backward()
        grads.append(x.grad)
    assert grads[1][0] > grads[0][0] and grads[1][1] < grads[0][1]


def test_sign_and_bwn_forward_and_gradients(w):
    v = w.clone().requires_grad_(True)
    out = SignWeight(1, w)(v)
    assert torch.equal(out, torch.where(w >= 0, 1.0, -1.0))
    out.sum().backward()
    assert torch.equal(v.grad, (w.abs() <= 1).float())
    # BWN: dC/dW = g * (1/n + alpha 1_{|w|<=1}) summed over the channel for the 1/n term (XNOR-Net eq. 4, 3.2)
    v = (w * 4).requires_grad_(True)  # some |w| > 1
    q = BWNWeight(1, v)
    grad_out = torch.randn_like(w)
    (q(v) * grad_out).sum().backward()
    alpha = v.detach().abs().reshape(6, -1).mean(1).reshape(6, 1, 1, 1)
    sign = torch.where(v.detach() >= 0, 1.0, -1.0)
    n = 27
    expected = (
        alpha * grad_out * (v.detach().abs() <= 1)
        + sign * (grad_out * sign).reshape(6, -1).sum(1).reshape(6, 1, 1, 1) / n
    )
    assert torch.allclose(v.grad, expected, atol=1e-5)
    assert torch.allclose(q(v.detach()), alpha * sign)


def test_binaryconnect_probability_is_hard_sigmoid():
    torch.manual_seed(0)
    base = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    w = base.repeat(20000, 1)
    q = StochasticSignWeight(1, w)
    h = (1.5 / (5 + 20000)) ** 0.5  # Glorot bound of a 20000 x 5 weight: probabilities are of w / H
    assert q.h == pytest.approx(h)
    w = (base * h).repeat(20000, 1)
    p_plus = (q(w) > 0).float().mean(0)
    assert torch.allclose(p_plus, torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]), atol=0.01)
    q.eval()
    assert torch.equal(q(w[:1]), torch.tensor([[-1.0, -1.0, 1.0, 1.0, 1.0]]))


def test_xnor_input_sign_and_scale():
    q = XNORInput(1, channels=3)
    x = torch.randn(2, 3, 5, 5)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    q(x)
    tau = x.mean(dim=(0, 2, 3))
    assert torch.allclose(q.tau.detach(), tau)
    c = x - tau.reshape(1, 3, 1, 1)
    assert torch.equal(q(x), torch.where(c >= 0, 1.0, -1.0))
    k = q.output_scale(x, conv)
    a = c.abs().mean(1, keepdim=True)
    assert torch.allclose(k[0, 0, 2, 2], a[0, 0, 1:4, 1:4].mean(), atol=1e-6)
    assert torch.allclose(k[0, 0, 0, 0], a[0, 0, 0:2, 0:2].sum() / 9, atol=1e-6)  # zero padding counts


def test_twn_threshold_and_scale(w):
    q = TWNWeight(2, w)
    out = q(w)
    for c in range(6):
        wc = w[c]
        delta = 0.7 * wc.abs().mean()
        kept = wc.abs() > delta
        alpha = wc.abs()[kept].mean()
        assert torch.allclose(out[c], alpha * torch.sign(wc) * kept)
    v = w.clone().requires_grad_(True)
    q(v).sum().backward()
    assert torch.equal(v.grad, torch.ones_like(w))


def test_ttq_gradients_match_paper(w):
    q = TTQWeight(2, w)
    v = w.clone().requires_grad_(True)
    grad_out = torch.randn_like(w)
    out = q(v)
    delta = 0.05 * w.abs().max()
    pos, neg = w > delta, w < -delta
    assert torch.equal(out, pos * q.w_p.detach() - neg * q.w_n.detach())
    (out * grad_out).sum().backward()
    assert torch.allclose(q.w_p.grad, grad_out[pos].sum())
    assert torch.allclose(q.w_n.grad, -grad_out[neg].sum())
    expected = torch.where(
        pos, q.w_p.detach() * grad_out, torch.where(neg, q.w_n.detach() * grad_out, grad_out)
    )
    assert torch.allclose(v.grad, expected)


def test_kmeans_centroid_gradient_is_sum_of_members(w):
    q = KMeansWeight(2, w)
    assert q.centroids.numel() == 4
    assert torch.equal(q.assign, (w.reshape(-1, 1) - q.centroids.detach()).abs().argmin(1).reshape(w.shape))
    grad_out = torch.randn_like(w)
    (q(w) * grad_out).sum().backward()
    for k in range(4):
        assert torch.allclose(q.centroids.grad[k], grad_out[q.assign == k].sum(), atol=1e-6)


@pytest.mark.parametrize(
    "name",
    ["ste", "lsq", "dsq", "binary-sign", "binaryconnect", "bwn", "xnor", "twn", "ttq", "kmeans", "pact"],
)
def test_eval_forward_is_core_dequantize(name, w):
    method = METHODS.get(name)
    bits = {"binary-sign": 1, "binaryconnect": 1, "bwn": 1, "xnor": 1, "twn": 2, "ttq": 2}.get(name, 4)
    q = method.weight(bits, w).eval()
    codes, qp = q.export(w)
    assert torch.equal(q(w), dequantize(codes, qp))
    assert codes.dtype == torch.int32
    assert int(codes.min()) >= 0 or qp.qtype.is_integer
