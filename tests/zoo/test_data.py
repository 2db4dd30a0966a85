"""The offline data readers: shapes, label sets, and the constants derived from the data."""

import numpy as np
import pytest
import torch

from lowbit.zoo import data, efficientnet, fashion


def test_fashion_mnist_splits():
    train_x, train_y = data.fashion_mnist("train")
    test_x, test_y = data.fashion_mnist("test")
    assert train_x.shape == (60_000, 28, 28) and train_x.dtype == torch.uint8
    assert test_x.shape == (10_000, 28, 28) and test_y.dtype == torch.int64
    assert torch.equal(torch.bincount(train_y), torch.full((10,), 6_000))  # balanced, 10 classes


def test_normalize_constants_are_the_training_statistics():
    train_x, _ = data.fashion_mnist("train")
    pixels = train_x.double() / fashion.PIXEL_MAX
    assert abs(pixels.mean().item() - fashion.FASHION_MEAN) < 1e-4
    assert abs(pixels.std().item() - fashion.FASHION_STD) < 1e-4
    x = fashion.normalize(train_x[:3])
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    assert x.min().item() == pytest.approx(-fashion.FASHION_MEAN / fashion.FASHION_STD, rel=1e-6)  # pixel 0


def test_movie_reviews_are_pang_lee():
    texts, labels = data.movie_reviews()
    assert len(texts) == len(labels) == 12_808
    assert set(np.unique(labels).tolist()) == {0, 1}
    assert all(isinstance(t, str) and t for t in texts[:100])


def test_lm_corpora_are_distinct_sources():
    speeches, plots = data.convention_speeches(), data.movie_plots()
    assert len(speeches) > 100 and len(plots) > 1000
    assert not set(speeches) & set(plots)


def test_photos_load_offline_and_split_by_photo():
    photos = data.natural_photos()
    assert len(photos) >= 12
    assert all(p.dtype == np.uint8 and p.ndim == 3 and p.shape[2] == 3 for p in photos.values())
    calib, evaluation, eval_names = efficientnet._split_photos()
    assert not set(eval_names) & set(efficientnet.CALIB_PHOTOS)
    assert len(calib) + len(evaluation) == len(photos)


def test_photo_views_are_crops_and_flips_in_model_range():
    photo = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    views = efficientnet.photo_views([photo])
    assert views.shape == (2 * 10, 3, 224, 224)
    assert views.min() >= -127 / 128 and views.max() <= 1.0
    assert torch.equal(views[0], views[5].flip(-1))  # centre crop and its mirror image at the first scale
