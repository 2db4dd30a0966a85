"""GPTQ: lower layer output error than round-to-nearest on the same layer; results on the QParams' grid."""

import pytest
import torch

from lowbit.config import QuantSpec
from lowbit.core.granularity import PerChannel, PerGroup
from lowbit.core.primitives import fake_quantize
from lowbit.core.qtype import get_qtype
from lowbit.llm.gptq import gptq_quantize, hessian, layer_error
from lowbit.llm.smoothing import fake_quant_weight


def _correlated_inputs(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """Rows with correlated features and uneven scales, as a transformer's hidden states have."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / d**0.5 + torch.eye(d)
    return (torch.randn(n, d, generator=g) @ mix) * torch.linspace(0.2, 3.0, d)


SPECS = {
    "int4-group32": QuantSpec(get_qtype("int4"), PerGroup(32), symmetric=False),
    "int3-channel": QuantSpec(get_qtype("int3"), PerChannel(0)),
    "nf4-group32-dq": QuantSpec(get_qtype("nf4"), PerGroup(32), double_quant=True),
}


@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_gptq_output_error_below_round_to_nearest(name, act_order):
    spec = SPECS[name]
    torch.manual_seed(0)
    w, x = torch.randn(48, 96), _correlated_inputs(512, 96)
    h = hessian([x])
    q, qp = gptq_quantize(w, h, spec, blocksize=32, act_order=act_order)
    rtn = fake_quant_weight(w, spec)
    assert layer_error(q, w, h) < 0.8 * layer_error(rtn, w, h)
    assert torch.equal(fake_quantize(q, qp), q)  # every GPTQ weight lies on its QParams' grid
    assert qp.granularity == spec.granularity and (qp.scale_storage is not None) == spec.double_quant


def test_layer_error_is_mean_output_error():
    w, w_hat, x = torch.randn(4, 8), torch.randn(4, 8), torch.randn(100, 8)
    expected = ((x @ (w_hat - w).T) ** 2).sum() / x.shape[0]
    assert layer_error(w_hat, w, hessian([x])) == pytest.approx(float(expected), rel=1e-4)
