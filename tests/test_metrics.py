"""lowbit.metrics against hand computations on tiny tensors."""

import math

import numpy as np
import pytest
import torch

from lowbit import metrics


def test_top1_accuracy_counts_argmax_hits():
    logits = torch.tensor([[1.0, 2.0], [3.0, 0.0], [0.0, 5.0]])
    assert metrics.top1_accuracy(logits, torch.tensor([1, 0, 0])) == pytest.approx(2 / 3)


def test_top1_accuracy_rejects_mismatched_labels():
    with pytest.raises(ValueError, match="do not match"):
        metrics.top1_accuracy(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))


def test_top1_agreement_compares_argmaxes():
    reference = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    test = torch.tensor([[2.0, 1.0], [9.0, 0.0]])
    assert metrics.top1_agreement(reference, test) == 0.5
    assert metrics.top1_agreement(reference, reference) == 1.0


def test_confident_top1_agreement_counts_only_rows_the_reference_is_sure_of():
    reference = torch.tensor([[0.0, 0.1, 0.05], [5.0, 0.0, 0.0], [0.0, 0.0, 4.0]])  # a near-tie, two sure rows
    test = torch.tensor([[0.2, 0.1, 0.0], [4.0, 0.0, 0.0], [0.0, 3.0, 0.0]])  # flips the tie and the third row
    assert metrics.top1_agreement(reference, test) == pytest.approx(1 / 3)
    assert metrics.confident_top1_agreement(reference, test) == 0.5  # rows 1 and 2 (top-1 probability >= 0.5)
    assert metrics.confident_top1_agreement(reference, test, threshold=0.975) == 1.0  # row 1 alone (0.987; 0.965)
    assert math.isnan(metrics.confident_top1_agreement(reference[:1], test[:1]))


def test_logit_kl_matches_hand_computation():
    # row 0: p = softmax([0, ln 3]) = [1/4, 3/4], q = [1/2, 1/2]; row 1: identical rows, KL 0
    reference = torch.tensor([[0.0, math.log(3.0)], [1.0, 2.0]], dtype=torch.float64)
    test = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    kl_row0 = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert metrics.logit_kl(reference, test) == pytest.approx(kl_row0 / 2, rel=1e-12)


def test_logit_kl_ignores_constant_shift_and_is_zero_on_itself():
    reference = torch.tensor([[0.5, -1.0, 2.0]])
    assert metrics.logit_kl(reference, reference + 7.0) == pytest.approx(0.0, abs=1e-12)
    assert metrics.logit_kl(reference, reference) == 0.0


def test_cosine_similarity_is_mean_over_rows():
    reference = torch.tensor([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0]])
    test = torch.tensor([[0.0, 1.0], [2.0, 2.0], [4.0, 3.0]])
    assert metrics.cosine_similarity(reference, test) == pytest.approx((0.0 + 1.0 + 24 / 25) / 3, rel=1e-12)


def test_cosine_similarity_flattens_leading_axes():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # [1, 2, 2]: two rows
    assert metrics.cosine_similarity(x, torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])) == pytest.approx(0.5)


def test_sqnr_db_matches_hand_computation():
    # signal 3^2 + 4^2 = 25, noise 1^2 = 1 -> 10 log10(25)
    assert metrics.sqnr_db(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.0])) == pytest.approx(
        10 * math.log10(25)
    )
    assert metrics.sqnr_db(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.0])) == math.inf


def test_fidelity_metrics_reject_shape_mismatch():
    for fn in (metrics.top1_agreement, metrics.logit_kl, metrics.cosine_similarity, metrics.sqnr_db):
        with pytest.raises(ValueError, match="shapes differ"):
            fn(torch.zeros(2, 3), torch.zeros(3, 2))


def test_perplexity_of_uniform_logits_is_vocab_size():
    assert metrics.perplexity(torch.zeros(2, 5, 4), torch.randint(0, 4, (2, 5))) == pytest.approx(4.0)


def test_perplexity_matches_hand_computation_and_skips_ignored():
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, math.log(3.0)], [5.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([1, 0, metrics.IGNORE_INDEX])
    # p = 3/4 and 1/4: mean NLL (ln 4/3 + ln 4) / 2 -> perplexity sqrt(16 / 3)
    assert metrics.perplexity(logits, labels) == pytest.approx(math.sqrt(16 / 3), rel=1e-12)
    total, count = metrics.token_nll(logits, labels)
    assert count == 2 and total == pytest.approx(math.log(4 / 3) + math.log(4), rel=1e-12)
    assert metrics.perplexity_from_nll(total / count) == pytest.approx(math.sqrt(16 / 3), rel=1e-12)


class _SignProbe:
    def predict(self, x):
        return (x[:, 0] > 0).astype(np.int64)


def test_probe_accuracy_counts_correct_predictions():
    features = torch.tensor([[1.0], [-1.0], [2.0], [-3.0]])
    assert metrics.probe_accuracy(_SignProbe(), features, torch.tensor([1, 0, 0, 0])) == 0.75


def test_fold_ids_are_balanced_and_seeded():
    ids = metrics.fold_ids(12, 5, seed=3)
    assert sorted(np.bincount(ids).tolist()) == [2, 2, 2, 3, 3]
    assert np.array_equal(ids, metrics.fold_ids(12, 5, seed=3))
    with pytest.raises(ValueError):
        metrics.fold_ids(3, 5)


def test_cross_probe_accuracy_on_separable_and_flipped_features():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(40) % 2
    reference = (labels * 2.0 - 1.0)[:, None] + 0.1 * torch.randn(40, 3, generator=generator)
    assert metrics.cross_probe_accuracy(reference, reference, labels) == 1.0
    # probes fitted on the reference read negated features exactly backwards
    assert metrics.cross_probe_accuracy(reference, -reference, labels) == 0.0
