"""minilm: unit-norm embeddings, fp32 against itself is perfect, the fp32 probe reads sentiment."""

import pytest
import torch

import lowbit.zoo
from lowbit.zoo import minilm

N_EVAL = 200


@pytest.fixture(scope="module")
def task():
    return lowbit.zoo.load("minilm", n_calib=16, n_eval=N_EVAL)


def test_fp32_scores_perfect_fidelity(task):
    result = task.evaluate(task.model)
    assert result["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert result["probe_accuracy"] == result["probe_accuracy_fp32"]
    assert result["probe_accuracy_fp32"] > 0.6  # sentiment is linearly readable (chance is ~0.58)


def test_scrambled_embeddings_lose_fidelity(task):
    reference = task.info["fp32_embeddings"]
    scrambled = reference.roll(1, dims=0)  # each review gets its neighbour's embedding
    result = task.score(list(scrambled.split([len(b[0]) for b in task.eval])))
    assert result["cosine"] < 0.5
    assert result["probe_accuracy"] < result["probe_accuracy_fp32"]


def test_embeddings_are_unit_norm_and_batches_fixed_length(task):
    norms = task.info["fp32_embeddings"].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert all(ids.shape[1] == mask.shape[1] == minilm.SEQ_LEN for ids, mask in task.eval + task.calib)
    assert task.model(*task.example_inputs).shape == (2, 384)


def test_padding_does_not_change_the_embedding(task):
    ids, mask = task.eval[0]
    row, length = ids[:1], int(mask[0].sum())
    short = task.model(row[:, :length], mask[:1, :length])
    assert torch.allclose(short, task.info["fp32_embeddings"][:1], atol=1e-5)
