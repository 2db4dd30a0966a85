"""fp32 ONNX export: batch and sequence stay dynamic even when the task's example has batch 1 (SmolLM2's case)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from bench.onnx_io import ONNX_OUTPUT_PREFIX, export_fp32, export_inputs, session, static_dynamic_axes
from lowbit.zoo.task import ZooTask, batched

VOCAB = 64
LLM_AXES = {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch", 1: "sequence"}}


class TinyCausalLM(torch.nn.Module):
    """A 2-layer random Llama (the architecture of zoo `smollm2`: rotary embeddings, causal mask), logits out."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=512,
            attn_implementation="eager",
        )
        self.lm = LlamaForCausalLM(config).eval()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=input_ids, use_cache=False).logits


def llm_task(example: torch.Tensor) -> ZooTask:
    ids = torch.randint(0, VOCAB, (4, 40), generator=torch.Generator().manual_seed(1))
    return ZooTask(
        "tiny-llm",
        TinyCausalLM(),
        batched(ids, size=4),
        batched(ids, size=4),
        (example,),
        lambda outs: {},
        "none",
        True,
        ("input_ids",),
        ("logits",),
        LLM_AXES,
    )


def test_export_inputs_grow_only_dynamic_axes_of_size_one() -> None:
    task = llm_task(torch.arange(8).view(1, 8))
    (grown,) = export_inputs(task)
    assert grown.shape == (2, 8) and torch.equal(grown[0], grown[1]) and torch.equal(grown[0], torch.arange(8))
    wide = llm_task(torch.arange(24).view(3, 8))
    assert export_inputs(wide)[0] is wide.example_inputs[0]


def test_llama_exported_at_batch_1_runs_at_other_batches_and_lengths(tmp_path) -> None:
    task = llm_task(torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(2)))
    path = export_fp32(task, tmp_path)
    assert static_dynamic_axes(path, task) == []
    sess = session(path, 1)
    ids = task.eval[0][0]
    for rows, length in ((1, 8), (4, 40), (3, 17)):
        x = ids[:rows, :length]
        with torch.inference_mode():
            ref = task.model(x).numpy()
        out = sess.run(None, {"input_ids": x.numpy()})[0]
        assert out.shape == (rows, length, VOCAB)
        np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(("dims", "expected"), [(["b", "s"], []), ([1, "s"], ["x[0] = 1"]), ([2, 7], ["x[0] = 2"])])
def test_static_dynamic_axes_names_every_fixed_axis(tmp_path, dims, expected) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info(ONNX_OUTPUT_PREFIX + "y", TensorProto.FLOAT, dims)
    graph = helper.make_graph([helper.make_node("Identity", ["x"], [y.name])], "g", [x], [y])
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    task = llm_task(torch.zeros(1, 1, dtype=torch.long))
    axes = {"x": {0: "batch"}, "y": {0: "batch"}}
    fake = replace(task, input_names=("x",), output_names=("y",), dynamic_axes=axes)
    assert static_dynamic_axes(path, fake) == expected + [e.replace("x", "y") for e in expected]
