"""The pass plumbing: a config's passes run at their stage, in order, with their options, and round-trip JSON."""

import pytest
import torch

from lowbit.api import quantize
from lowbit.config import PassSpec, QuantConfig, preset
from lowbit.ptq import PASSES, register_pass
from tests.graph.models import TinyCNN, images, trained_bn

CALLS: list[tuple[str, object]] = []


@register_pass("test-record-float", "float")
def _record_float(gm, batches, *, config, progress=None, tag="f"):
    """Record that the float stage ran (test only)."""
    assert not any("Quantizer" in type(m).__name__ for m in gm.modules())  # before placement
    CALLS.append((tag, len(batches)))


@register_pass("test-record-quantized", "quantized")
def _record_quantized(qmodel, batches, *, progress=None, tag="q"):
    assert qmodel.act_quantizers()  # after placement and calibration
    CALLS.append((tag, len(batches)))


def test_passes_run_at_their_stage_in_order_with_options():
    CALLS.clear()
    config = preset("w8a8", passes=(PassSpec.parse("test-record-quantized:tag=\"second\""),
                                    PassSpec.parse("test-record-float:tag=first")))
    quantize(trained_bn(TinyCNN()), images(3), config)
    assert CALLS == [("first", 3), ("second", 3)]


def test_pass_spec_parse_and_json_round_trip():
    spec = PassSpec.parse("adaround:iters=500,warmup=0.2,mode=fast")
    assert spec == PassSpec("adaround", (("iters", 500), ("warmup", 0.2), ("mode", "fast")))
    config = preset("w4a8", passes=(spec, PassSpec("equalize")))
    assert QuantConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="key=value"):
        PassSpec.parse("adaround:iters")


def test_unknown_pass_fails_before_work():
    with pytest.raises(KeyError, match="unknown post-training pass 'nosuch'"):
        quantize(torch.nn.Linear(4, 2), [torch.randn(2, 4)], preset("w8a8", passes=(PassSpec("nosuch"),)))
    assert "test-record-float" in PASSES
