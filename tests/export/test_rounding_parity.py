"""lowbit.export.deploy.rounding_parity: the simulation against itself with one float ulp moved at every quantizer's
input, the scale on which an exported model's parity with the simulation is read."""

import torch
from torch import nn

from lowbit.config import QuantSpec
from lowbit.core import get_qtype
from lowbit.core.qparams import QParams
from lowbit.export.deploy import rounding_parity
from lowbit.graph.quantizers import ActQuantizer

STEP = 0.0625  # a power of two: x / STEP is exact in float32


class _OneQuantizer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        int8 = get_qtype("int8")
        self.q = ActQuantizer(QuantSpec(int8))
        self.q.qparams = QParams(torch.tensor([STEP]), torch.zeros(1, dtype=torch.int32), int8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q(x)


def test_one_ulp_flips_the_codes_that_sit_on_a_rounding_boundary_and_no_other():
    model = _OneQuantizer()
    on_boundary = ((torch.arange(-40, 41, dtype=torch.float32) + 0.5) * STEP).repeat(50)
    before = model(on_boundary)
    got = rounding_parity(model, (on_boundary,))
    assert 0.35 < got < 0.65  # half the nudges go away from the even neighbour round-half-to-even picked
    assert rounding_parity(model, (on_boundary,)) == got  # seeded
    assert rounding_parity(model, (on_boundary,), seed=1) != got
    assert torch.equal(model(on_boundary), before)  # the hooks are gone afterwards
    on_grid = torch.arange(-40, 41, dtype=torch.float32).repeat(50) * STEP
    assert rounding_parity(model, (on_grid,)) == 1.0  # an ulp does not move a value off its own code


def test_disabled_quantizers_are_not_nudged():
    model = _OneQuantizer()
    model.q.enabled = False
    x = (torch.arange(-40, 41, dtype=torch.float32) + 0.5) * STEP
    assert rounding_parity(model, (x,)) is None  # nothing to nudge


def test_efficientnet_slice_is_sensitive_to_one_ulp():
    """A real model: 60 activation quantizers deep, one ulp at each moves part of the output by more than one step,
    which bounds the parity any runtime with another float rounding order can reach (BENCHMARKS.md, parity)."""
    import lowbit
    import lowbit.zoo
    from lowbit.export.layout import deployable

    task = lowbit.zoo.load("efficientnet-lite0", n_calib=4, n_eval=4)
    config, _ = deployable(lowbit.preset("w8a8"), task.model)
    qm = lowbit.quantize(task.model, task.calib, config, progress=False)
    x = task.eval[0][0][:4]
    before = qm(x)
    got = rounding_parity(qm, (x,))
    assert 0.5 < got < 0.99
    assert torch.equal(qm(x), before)
