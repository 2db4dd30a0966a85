"""Read one tensor from a .npy, .pt or .safetensors file (the CLI's input)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SUFFIXES = (".npy", ".pt", ".pth", ".safetensors")


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor in the file, by name, in file order (a .npy or bare .pt tensor is named "tensor")."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return {"tensor": torch.from_numpy(np.load(path, allow_pickle=False))}
    if suffix in (".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, torch.Tensor):
            return {"tensor": obj}
        if isinstance(obj, dict):
            tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
            if tensors:
                return tensors
        raise ValueError(
            f"{path} holds a {type(obj).__name__} without tensors; save a tensor or a dict of tensors"
        )
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    raise ValueError(f"cannot read {path}: use one of {', '.join(SUFFIXES)}")


def read_tensor(path: str | Path, name: str | None = None) -> tuple[str, torch.Tensor]:
    """(name, tensor): the tensor called `name`, or the file's first tensor when `name` is None."""
    tensors = read_tensors(path)
    if not tensors:
        raise ValueError(f"{path} holds no tensors")
    if name is None:
        name = next(iter(tensors))
    if name not in tensors:
        raise KeyError(f"{path} has no tensor named {name!r}; it holds: {', '.join(tensors)}")
    return name, tensors[name]
