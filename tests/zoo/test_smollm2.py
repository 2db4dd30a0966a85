"""smollm2: loads offline once per module, perplexity is finite and plausible, score matches metrics."""

import math

import pytest
import torch

import lowbit.zoo
from lowbit import metrics
from lowbit.zoo import smollm2


@pytest.fixture(scope="module")
def task():
    return lowbit.zoo.load("smollm2", n_calib=4, n_eval=2)


@pytest.fixture(scope="module")
def outputs(task):
    with torch.inference_mode():
        return [task.model(*b) for b in task.eval]


def test_perplexity_is_plausible(task, outputs):
    result = task.score(outputs)
    assert math.isfinite(result["perplexity"]) and 5.0 < result["perplexity"] < 100.0
    assert result["nll"] == pytest.approx(math.log(result["perplexity"]))


def test_score_equals_shifted_perplexity(task, outputs):
    ids = torch.cat([b[0] for b in task.eval])
    logits = torch.cat(outputs)
    expected = metrics.perplexity(logits[:, :-1], ids[:, 1:])
    assert task.score(outputs)["perplexity"] == pytest.approx(expected, rel=1e-9)


def test_evaluate_streams_the_same_result(task, outputs):
    replay = iter(outputs)
    assert task.evaluate(lambda ids: next(replay)) == task.score(outputs)


def test_windows_are_fixed_length_and_sources_differ(task):
    assert all(b[0].shape[1] == smollm2.WINDOW for b in task.eval + task.calib)
    assert sum(len(b[0]) for b in task.calib) == 4
    assert task.model(*task.example_inputs).shape[:2] == task.example_inputs[0].shape
