"""What the CLI is handed: a model spec and calibration data, turned into a torch module and batches.

Model specs: a zoo name (`lowbit.zoo.names()`), `pkg.module:factory` (called with no arguments), a saved
ExportedProgram (`.pt2`, torch.export.save) or a TorchScript file (`.pt`/`.pth`/`.ts`, torch.jit.save).

Calibration data (`read_batches`):
- tensors: a `.npy`, `.pt`/`.pth` (a tensor or a dict of tensors) or `.safetensors` file; each tensor is one
  positional model input, in file order, split along axis 0 into batches. A folder of such files: one batch
  per file.
- images: a folder of .jpg/.png/... files, preprocessed as IMAGE_PREPROCESSING says.
- text: a .txt file, one sentence per line, tokenized with `--tokenizer DIR` (a local Hugging Face tokenizer
  folder); the model receives (input_ids, attention_mask).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lowbit.tensorfile import SUFFIXES, read_tensors
from lowbit.zoo.task import Batch, ZooTask, batched

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_MAX = 255.0
IMAGE_PREPROCESSING = (
    "RGB; short side resized to the image size (bicubic), centre-cropped to a square; "
    "scaled to [0, 1]; normalised with the ImageNet mean (0.485, 0.456, 0.406) and standard "
    "deviation (0.229, 0.224, 0.225); NCHW float32. For any other preprocessing, save tensors "
    "(.pt/.npy/.safetensors) and pass those"
)
MAX_TOKENS = 128
TORCHSCRIPT_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript")


class InputError(ValueError):
    """A model spec or data file that cannot be used; the message says what to do."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    model: torch.nn.Module
    task: ZooTask | None = None


def load_model(
    spec: str, n_calib: int | None = None, n_eval: int | None = None, example: Batch | None = None
) -> LoadedModel:
    """Resolve a model spec (module docstring). `example` is needed to convert TorchScript to torch.export."""
    from lowbit import zoo

    if spec in zoo.names():
        task = zoo.load(spec, n_calib=n_calib, n_eval=n_eval)
        return LoadedModel(spec, task.model, task)
    path = Path(spec)
    if path.suffix == ".pt2":
        _must_exist(path)
        return LoadedModel(path.name, _exported(path, example))
    if path.suffix in TORCHSCRIPT_SUFFIXES:
        _must_exist(path)
        return LoadedModel(path.name, _torchscript(path, example))
    if ":" in spec:
        return LoadedModel(spec, _factory(spec))
    raise InputError(
        f"unknown model {spec!r}: give a zoo name ({', '.join(zoo.names())}), pkg.module:factory, "
        "a .pt2 file (torch.export.save) or a TorchScript .pt file (torch.jit.save)"
    )


def _must_exist(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"model file {path} does not exist")


def _factory(spec: str) -> torch.nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError(
            f"cannot import {module_name!r} from {spec!r} ({err}); is it installed or on PYTHONPATH?"
        ) from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(
            f"{module_name} has no callable {attr!r}; give pkg.module:function_returning_a_model"
        )
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise InputError(f"{spec}() returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def _exported(path: Path, example: Batch | None) -> torch.nn.Module:
    """The saved ExportedProgram's module; a fully static program must get batches of its example's shapes."""
    ep = torch.export.load(str(path))
    saved = [tuple(t.shape) for t in ep.example_inputs[0]] if ep.example_inputs else None
    given = [tuple(t.shape) for t in example] if example is not None else None
    if not ep.range_constraints and saved and given and saved != given:
        raise InputError(
            f"{path} was exported with static input shapes {saved} but the calibration batches have shapes "
            f"{given}; use --batch-size {saved[0][0]} (and matching inputs), or export with dynamic_shapes"
        )
    return ep.module()


def _torchscript(path: Path, example: Batch | None) -> torch.nn.Module:
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as err:
        raise InputError(
            f"{path} is not a TorchScript archive ({str(err).splitlines()[0]}); save the model with "
            "torch.jit.save or torch.export.save (.pt2), or give pkg.module:factory"
        ) from err
    if example is None:
        raise InputError("a TorchScript model needs --calib data to be converted for capture")
    from torch._export.converter import TS2EPConverter

    return TS2EPConverter(scripted.eval(), tuple(example)).convert().module()


def is_tensor_data(path: str | Path) -> bool:
    """A tensor file, or a folder without images (of tensor files)."""
    path = Path(path)
    if path.is_dir():
        return not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.iterdir())
    return path.suffix.lower() in SUFFIXES


def read_batches(
    path: str | Path, batch_size: int, tokenizer: str | None = None, image_size: int = 224
) -> tuple[list[Batch], str]:
    """(batches, a one-line description of the data and its preprocessing)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"calibration data {path} does not exist")
    if path.is_dir():
        return _folder(path, batch_size, image_size)
    suffix = path.suffix.lower()
    if suffix in SUFFIXES:
        return _tensor_file(path, batch_size), f"tensors from {path.name}, batches of {batch_size} rows"
    if suffix in (".txt", ".text"):
        return _text(path, batch_size, tokenizer)
    raise InputError(
        f"cannot read calibration data {path}: give a folder of images, a .txt file of sentences, "
        f"or tensors ({', '.join(SUFFIXES)})"
    )


def _read(path: Path) -> list[torch.Tensor]:
    try:
        tensors = list(read_tensors(path).values())
    except Exception as err:  # torch.load / numpy / safetensors raise many types on a bad file
        detail = str(err).splitlines()[0] if str(err) else "empty or truncated file"
        raise InputError(f"could not read tensors from {path} ({type(err).__name__}: {detail})") from err
    if not tensors or any(t.dim() == 0 or len(t) == 0 for t in tensors):
        shapes = [tuple(t.shape) for t in tensors]
        raise InputError(
            f"{path} holds no samples (tensor shapes {shapes}); save tensors of shape [N, ...], N >= 1"
        )
    return tensors


def _tensor_file(path: Path, batch_size: int) -> list[Batch]:
    tensors = _read(path)
    try:
        return batched(*tensors, size=batch_size)
    except ValueError as err:
        raise InputError(f"{path}: every tensor is one model input and needs the same rows; {err}") from err


def _folder(path: Path, batch_size: int, image_size: int) -> tuple[list[Batch], str]:
    files = sorted(p for p in path.iterdir() if p.is_file())
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if images:
        x = torch.stack([load_image(p, image_size) for p in images])
        return batched(x, size=batch_size), f"{len(images)} images from {path}: {IMAGE_PREPROCESSING}"
    tensor_files = [p for p in files if p.suffix.lower() in SUFFIXES]
    if tensor_files:
        return [
            tuple(_read(p)) for p in tensor_files
        ], f"{len(tensor_files)} tensor files from {path}, one batch each"
    raise InputError(f"{path} holds no images ({', '.join(IMAGE_SUFFIXES)}) and no tensor files")


def load_image(path: Path, size: int) -> torch.Tensor:
    """One image -> float32 [3, size, size], preprocessed as IMAGE_PREPROCESSING says."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        scale = size / min(im.size)
        im = im.resize(
            (max(size, round(im.width * scale)), max(size, round(im.height * scale))),
            Image.Resampling.BICUBIC,
        )
        left, top = (im.width - size) // 2, (im.height - size) // 2
        im = im.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / PIXEL_MAX).permute(2, 0, 1)  # [3, H, W]
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return (x - mean) / std


def _text(path: Path, batch_size: int, tokenizer: str | None) -> tuple[list[Batch], str]:
    lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines() if s.strip()]
    if not lines:
        raise InputError(f"{path} holds no sentences; write one sentence per line")
    if tokenizer is None:
        raise InputError(
            "text calibration data needs --tokenizer DIR (a local Hugging Face tokenizer folder); "
            "or tokenize it yourself and pass the tensors as .pt"
        )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer)
    enc = tok(lines, padding="max_length", truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    desc = (
        f"{len(lines)} sentences from {path.name}, tokenized by {tokenizer}, padded/truncated to "
        f"{MAX_TOKENS} tokens; model inputs (input_ids, attention_mask)"
    )
    return batched(enc["input_ids"], enc["attention_mask"], size=batch_size), desc
