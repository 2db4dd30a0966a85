"""ZooTask's contract on a tiny hand-built task."""

import numpy as np
import pytest
import torch

import lowbit.zoo
from lowbit.zoo import ZooTask, batched
from lowbit.zoo._offline import force_offline


def _tiny_task() -> ZooTask:
    x = torch.arange(10.0).reshape(5, 2)
    return ZooTask(
        name="tiny",
        model=torch.nn.Identity(),
        calib=batched(x, size=2),
        eval=batched(x, size=2),
        example_inputs=(x[:1],),
        finish=lambda outs: {"sum": torch.cat(outs).sum().item()},
        primary_metric="sum",
        higher_is_better=True,
        input_names=("x",),
        output_names=("y",),
        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
    )


def test_batched_keeps_order_and_last_partial_batch():
    batches = batched(torch.arange(5), torch.arange(5) * 10, size=2)
    assert [len(b[0]) for b in batches] == [2, 2, 1]
    assert torch.equal(batches[2][1], torch.tensor([40]))


def test_score_and_evaluate_agree_and_accept_numpy():
    task = _tiny_task()
    assert task.evaluate(task.model) == {"sum": 45.0}
    assert task.score([b[0].numpy() for b in task.eval]) == {"sum": 45.0}


def test_score_rejects_wrong_output_count_and_rows():
    task = _tiny_task()
    with pytest.raises(ValueError, match="3 eval batches"):
        task.score([np.zeros((2, 2))])
    with pytest.raises(ValueError, match="expected 2"):
        task.score([np.zeros((3, 2)), np.zeros((2, 2)), np.zeros((1, 2))])


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(KeyError, match="fashion-cnn"):
        lowbit.zoo.load("resnet")
    assert lowbit.zoo.names() == ["efficientnet-lite0", "fashion-cnn", "minilm", "smollm2"]


def test_force_offline_keeps_a_user_value(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    force_offline()
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "0" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
