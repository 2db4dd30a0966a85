"""Bare deployment probe: load an ONNX file in onnxruntime, run one batch, print peak RSS in MiB.

Imports only numpy and onnxruntime (no torch), so the figure is what serving that file costs.
Usage: python bench/ort_peak.py model.onnx feeds.npz
"""

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort


def main(model: str, feeds_path: str) -> None:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    feeds = dict(np.load(feeds_path))
    session.run(None, feeds)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) / 1024)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
