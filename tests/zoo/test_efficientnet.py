"""efficientnet-lite0: fp32 against itself is perfect; a perturbed model is not."""

import pytest
import torch

import lowbit.zoo

N_EVAL = 40


@pytest.fixture(scope="module")
def task():
    return lowbit.zoo.load("efficientnet-lite0", n_calib=8, n_eval=N_EVAL)


def test_fp32_scores_perfect_fidelity(task):
    result = task.evaluate(task.model)
    assert result["top1_agreement"] == 1.0 and result["top1_agreement_confident"] == 1.0
    assert result["logit_kl"] == pytest.approx(0.0, abs=1e-9)


def test_perturbed_logits_lose_fidelity(task):
    reference = task.info["fp32_logits"]
    noisy = reference + 3.0 * torch.randn(reference.shape, generator=torch.Generator().manual_seed(0))
    outputs = list(noisy.split([len(b[0]) for b in task.eval]))
    result = task.score(outputs)
    assert result["top1_agreement"] < 1.0 and result["logit_kl"] > 0.1


def test_batches_classes_and_export_metadata(task):
    assert sum(len(b[0]) for b in task.eval) == N_EVAL and sum(len(b[0]) for b in task.calib) == 8
    assert task.eval[0][0].shape[1:] == (3, 224, 224)
    assert len(task.info["class_names"]) == 1000 and task.info["class_names"][1] == "goldfish"
    assert task.model(*task.example_inputs).shape == (2, 1000)
    assert set(task.dynamic_axes) == set(task.input_names) | set(task.output_names)
