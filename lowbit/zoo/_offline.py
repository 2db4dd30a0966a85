"""Keep Hugging Face libraries off the network: every zoo file is a local path inside an installed package."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def force_offline() -> None:
    """Set the offline switches unless the user already set them (their value wins)."""
    for name in OFFLINE_VARIABLES:
        os.environ.setdefault(name, "1")


def package_dir(name: str) -> Path:
    """Folder of an installed package, found without importing it (some have heavy or noisy imports)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"package {name!r} is not installed; run `make setup` (it installs the zoo models)"
        )
    return Path(list(spec.submodule_search_locations)[0])
