"""The checkpoint folder on disk: an atomic write of the two files and a verified read.

A save writes both files into a temporary sibling folder, fsyncs them, and only then swaps that folder with the
old one, so that a crash at any point leaves either the old checkpoint or the new one at `folder`, never a mix.
On Linux the swap is one `renameat2(RENAME_EXCHANGE)` call; elsewhere it is two renames, and a crash between
them leaves the old checkpoint in a `.<name>.old-*` sibling, which `read_folder` then names.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

TENSORS_FILE = "model.safetensors"
META_FILE = "lowbit.json"
RENAME_EXCHANGE = 2  # linux/fs.h
AT_FDCWD = -100


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read; the message says what to do."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tensor_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """The safetensors serialisation (tensors sharing memory, such as tied weights, are copied apart)."""
    seen: set[int] = set()
    out = {}
    for name, t in tensors.items():
        t = t.detach().contiguous()
        ptr = t.untyped_storage().data_ptr()
        out[name] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
    return st_save(out)


def write_folder(folder: Path, files: dict[str, bytes]) -> None:
    """Write `files` (name -> bytes) as the folder's whole content, atomically with respect to crashes."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, data in files.items():
            write_file(tmp / name, data)
        _fsync_dir(tmp)
        swap_in(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)  # after an exchange, `tmp` holds the old checkpoint


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def swap_in(new: Path, folder: Path) -> None:
    """Put the folder `new` at `folder`: a rename when there is none yet, else an atomic exchange."""
    if not folder.exists():
        os.rename(new, folder)
    elif not _exchange(new, folder):
        old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(folder, old)
        os.rename(new, folder)
        shutil.rmtree(old)
    _fsync_dir(folder.parent)


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(RENAME_EXCHANGE): swap two paths in one step (Linux >= 3.15). False where unavailable."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    rc = fn(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE)
    return rc == 0


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_folder(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a checkpoint folder, checked: both files present, the JSON readable, the tensor
    file's sha256 equal to the one recorded at save time and parseable."""
    _check_present(folder)
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(
            f"{folder / META_FILE} is not valid JSON ({err}); the file is truncated or corrupt: save the checkpoint "
            "again or copy it again from its source"
        ) from None
    data = (folder / TENSORS_FILE).read_bytes()
    expected = meta.get("safetensors_sha256")
    if expected != sha256(data):
        raise CheckpointError(
            f"{folder / TENSORS_FILE} does not match the sha256 recorded in {META_FILE} ({len(data)} bytes read); "
            "the file is truncated or corrupt: save the checkpoint again or copy it again from its source"
        )
    try:
        return meta, st_load(data)
    except Exception as err:  # safetensors raises its own error types
        raise CheckpointError(f"{folder / TENSORS_FILE} cannot be parsed ({err}); save the checkpoint again") from None


def _check_present(folder: Path) -> None:
    if not folder.is_dir():
        left = sorted(folder.parent.glob(f".{folder.name}.old-*")) if folder.parent.is_dir() else []
        hint = f"; an interrupted save left the previous one in {left[-1]}: rename it to {folder}" if left else ""
        raise CheckpointError(f"no checkpoint folder at {folder}{hint}")
    missing = [n for n in (META_FILE, TENSORS_FILE) if not (folder / n).is_file()]
    if missing:
        raise CheckpointError(
            f"{folder} is not a complete lowbit checkpoint: {', '.join(missing)} missing; lowbit.save(qmodel, folder) "
            f"writes both {META_FILE} and {TENSORS_FILE}"
        )
