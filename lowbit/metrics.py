"""Task metrics as plain functions of tensors: accuracy, fidelity to a reference, perplexity, probe accuracy.

Every function takes torch tensors (numpy arrays are accepted too), reduces in float64 and returns a Python
float.
Fidelity metrics take the reference (fp32) first and the model under test second.
"""

from __future__ import annotations

import math

import numpy as np
import torch

IGNORE_INDEX = -100  # label value skipped by perplexity, as in torch.nn.functional.cross_entropy


def _f64(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    return torch.as_tensor(x).detach().to(torch.float64)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """[..., D] -> [rows, D]: every leading axis becomes one row."""
    return x.reshape(-1, x.shape[-1])


def _check_same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{what}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows whose arg-max class equals the label. logits [N, C], labels [N]."""
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"top1_accuracy: logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}"
        )
    return (logits.argmax(-1) == labels).double().mean().item()


def top1_agreement(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Fraction of rows where both models pick the same top-1 class. reference, test [N, C]."""
    reference, test = torch.as_tensor(reference), torch.as_tensor(test)
    _check_same_shape(reference, test, "top1_agreement")
    return (reference.argmax(-1) == test.argmax(-1)).double().mean().item()


def confident_top1_agreement(reference: torch.Tensor, test: torch.Tensor, threshold: float = 0.5) -> float:
    """top1_agreement over the rows whose reference softmax puts at least `threshold` on its top-1 class: the
    predictions the reference model is sure of (NaN when there are none). A near-tie of the reference flips under any
    perturbation, so agreement over all rows of an ambiguous evaluation set bounds what quantization can reach."""
    reference, test = torch.as_tensor(reference), torch.as_tensor(test)
    _check_same_shape(reference, test, "confident_top1_agreement")
    sure = torch.softmax(_f64(reference), -1).max(-1).values >= threshold
    if not bool(sure.any()):
        return float("nan")
    return (reference.argmax(-1) == test.argmax(-1))[sure].double().mean().item()


def logit_kl(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Mean over rows of KL(softmax(reference) || softmax(test)), in nats."""
    reference, test = _f64(reference), _f64(test)
    _check_same_shape(reference, test, "logit_kl")
    log_p = torch.log_softmax(_rows(reference), -1)
    log_q = torch.log_softmax(_rows(test), -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean().item()


def cosine_similarity(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Mean over rows of the cosine between matching rows (last axis is the vector)."""
    reference, test = _f64(reference), _f64(test)
    _check_same_shape(reference, test, "cosine_similarity")
    return torch.nn.functional.cosine_similarity(_rows(reference), _rows(test), dim=-1).mean().item()


def sqnr_db(reference: torch.Tensor, test: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10 log10(sum ref^2 / sum (ref - test)^2), in dB; inf when equal."""
    reference, test = _f64(reference), _f64(test)
    _check_same_shape(reference, test, "sqnr_db")
    noise = (reference - test).pow(2).sum().item()
    signal = reference.pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def token_nll(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> tuple[float, int]:
    """Summed negative log-likelihood (nats) of `labels` under `logits`, and the number of tokens counted.

    logits [..., V] and labels [...] are already aligned (logits at position t predict labels at t); labels
    equal to `ignore_index` are skipped.
    """
    logits, labels = _f64(logits), torch.as_tensor(labels)
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"token_nll: logits {tuple(logits.shape)} do not match labels {tuple(labels.shape)}")
    nll = torch.nn.functional.cross_entropy(
        _rows(logits), labels.reshape(-1).long(), ignore_index=ignore_index, reduction="sum"
    )
    return nll.item(), int((labels != ignore_index).sum())


def perplexity(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> float:
    """exp(mean token NLL) of aligned logits [..., V] and labels [...] (shift them first for a causal LM)."""
    total, count = token_nll(logits, labels, ignore_index)
    return perplexity_from_nll(total / count if count else math.nan)


def perplexity_from_nll(mean_nll: float) -> float:
    """exp of a mean negative log-likelihood in nats."""
    return math.exp(mean_nll)


def fit_probe(features: torch.Tensor, labels: torch.Tensor, c: float = 1.0, max_iter: int = 2000):
    """A logistic-regression probe (scikit-learn, L2, lbfgs) fitted on features [N, D] and labels [N]."""
    from sklearn.linear_model import LogisticRegression

    probe = LogisticRegression(C=c, max_iter=max_iter)
    return probe.fit(_f64(features).numpy(), torch.as_tensor(labels).numpy())


def probe_accuracy(probe, features: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of rows a fitted probe (anything with `.predict`) labels correctly."""
    predicted = np.asarray(probe.predict(_f64(features).numpy()))
    return float((predicted == torch.as_tensor(labels).numpy()).mean())


def fold_ids(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """Fold number in [0, folds) for each of n samples: a seeded permutation dealt round-robin."""
    if not 2 <= folds <= n:
        raise ValueError(f"need 2 <= folds <= n samples, got folds={folds}, n={n}")
    ids = np.empty(n, dtype=np.int64)
    ids[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
    return ids


def fit_fold_probes(reference: torch.Tensor, labels: torch.Tensor, ids: np.ndarray) -> list:
    """One probe per fold k, fitted on the reference features of every sample whose fold id is not k."""
    reference, labels = _f64(reference), torch.as_tensor(labels)
    held_out = [torch.from_numpy(ids == k) for k in range(int(ids.max()) + 1)]
    return [fit_probe(reference[~held], labels[~held]) for held in held_out]


def fold_probe_accuracy(probes: list, ids: np.ndarray, test: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction correct over all samples, each scored by the probe that did not see its fold."""
    test, labels = _f64(test), torch.as_tensor(labels)
    correct = 0.0
    for k, probe in enumerate(probes):
        held = torch.from_numpy(ids == k)
        correct += probe_accuracy(probe, test[held], labels[held]) * int(held.sum())
    return correct / len(labels)


def cross_probe_accuracy(
    reference: torch.Tensor, test: torch.Tensor, labels: torch.Tensor, folds: int = 5, seed: int = 0
) -> float:
    """k-fold probe accuracy: for each fold, fit on the *reference* features of the other folds and score the
    *test* features of the held-out fold; returns the fraction correct over all samples.
    With test = reference this is ordinary k-fold cross-validated accuracy.
    """
    _check_same_shape(torch.as_tensor(reference), torch.as_tensor(test), "cross_probe_accuracy")
    ids = fold_ids(len(labels), folds, seed)
    return fold_probe_accuracy(fit_fold_probes(reference, labels, ids), ids, test, labels)
