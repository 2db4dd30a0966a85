"""fashion-cnn: the shipped checkpoint's accuracy with real labels, and the untrained model's shape."""

import pytest
import torch

import lowbit.zoo
from lowbit import metrics
from lowbit.zoo import fashion

EVAL_SLICE = 2000


@pytest.fixture(scope="module")
def task():
    return lowbit.zoo.load("fashion-cnn", n_calib=64, n_eval=EVAL_SLICE)


def test_checkpoint_is_small():
    assert fashion.CHECKPOINT.stat().st_size < 2 * 1024 * 1024


@pytest.fixture(scope="module")
def outputs(task):
    with torch.inference_mode():
        return [task.model(*b) for b in task.eval]


def test_shipped_model_reaches_92_percent_on_the_test_slice(task, outputs):
    labels = lowbit.zoo.data.fashion_mnist("test")[1][:EVAL_SLICE]
    accuracy = task.score(outputs)["accuracy"]
    assert accuracy >= 0.92
    assert accuracy == metrics.top1_accuracy(torch.cat(outputs), labels)
    assert sum(len(b[0]) for b in task.eval) == EVAL_SLICE


def test_evaluate_runs_the_model_on_every_eval_batch(task, outputs):
    replay = iter(outputs)
    assert task.evaluate(lambda x: next(replay)) == task.score(outputs)
    assert next(replay, None) is None


def test_calibration_comes_from_the_training_split(task):
    train_x, _ = lowbit.zoo.data.fashion_mnist("train")
    first_index = fashion._calib_indices(len(train_x), 1)
    assert torch.equal(task.calib[0][0][:1], fashion.normalize(train_x[first_index]))
    assert sum(len(b[0]) for b in task.calib) == 64


def test_untrained_model_shapes_and_export_metadata(task):
    model = fashion.FashionCNN()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) < 2 * 1024 * 1024 / 4  # fits the 2 MB checkpoint
    assert set(task.dynamic_axes) == set(task.input_names) | set(task.output_names)
    assert task.example_inputs[0].shape == (2, 1, 28, 28)
