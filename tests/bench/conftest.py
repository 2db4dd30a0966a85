"""Make the repository root importable (bench/ is not an installed package); local onnxruntime cache."""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("XDG_CACHE_HOME", "/tmp/xdg")
