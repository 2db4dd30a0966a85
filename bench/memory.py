"""Peak memory, measured honestly: the peak resident set (VmHWM) of a child process.

Phase 1 of the runner forks one child per variant after the task is loaded: the child builds the variant
(calibration, quantization, export), scores it on the evaluation batches and reports its own VmHWM. So
"peak RSS (build+eval)" = task data + fp32 model + whatever the variant's build and run add, in one process.
For ONNX deployables a second, bare child (`bench/ort_peak.py`: numpy + onnxruntime, no torch) loads the file
and runs one batch: "run RSS" is what deploying that file costs.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

KIB_PER_MIB = 1024
ORT_PEAK_SCRIPT = Path(__file__).with_name("ort_peak.py")


def status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / KIB_PER_MIB
    raise RuntimeError(f"/proc/self/status has no {field}; peak memory needs Linux")


def rss_mib() -> float:
    """The current resident set in MiB (/proc/self/statm: cheap enough to sample every few milliseconds)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class StagePeaks:
    """Peak resident set per stage, sampled in a thread every `period_s`: call it with each stage's name as the
    stage starts (stream_quantize's `on_stage`), then `close()` for {stage: peak MiB}. Sampled, so a stage's
    figure can miss a peak shorter than the period; VmHWM stays the figure of record for the whole process."""

    def __init__(self, period_s: float = 0.002) -> None:
        self.period_s, self.stage, self.peaks = period_s, "start", {"start": rss_mib()}
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self) -> None:
        while self.running:
            self._note(rss_mib())
            time.sleep(self.period_s)

    def _note(self, mib: float) -> None:
        stage = self.stage
        self.peaks[stage] = max(self.peaks.get(stage, 0.0), mib)

    def __call__(self, stage: str) -> None:
        self._note(rss_mib())
        self.stage = stage
        self._note(rss_mib())

    def close(self) -> dict[str, float]:
        self._note(rss_mib())
        self.running = False
        self.thread.join()
        return dict(self.peaks)


def _child(fn: Callable[[], dict], out: Path) -> None:
    try:
        result = fn()
        result["peak_rss_mib"] = status_mib("VmHWM")
    except Exception as exc:  # reported as a row, not a crash of the runner
        result = {
            "error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
            "trace": traceback.format_exc(),
        }
    out.write_text(json.dumps(result))


def run_forked(fn: Callable[[], dict], out: Path, timeout_s: float) -> dict:
    """Run fn in a forked child; return its dict plus peak RSS, or an error row (timeout, crash)."""
    out.unlink(missing_ok=True)
    base = status_mib("VmRSS")
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(fn, out))
    proc.start()
    proc.join(timeout_s)
    if proc.is_alive():
        proc.kill()
        proc.join()
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if not out.exists():
        return {"error": f"child process died (exit code {proc.exitcode})"}
    result = json.loads(out.read_text())
    result["fork_base_rss_mib"] = base
    return result


def ort_run_peak(onnx_path: Path, feeds: dict[str, np.ndarray], workdir: Path) -> float | None:
    """Peak RSS (MiB) of a bare process that loads onnx_path in onnxruntime and runs one batch."""
    npz = workdir / "peak-feeds.npz"
    np.savez(npz, **feeds)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(ORT_PEAK_SCRIPT), str(onnx_path), str(npz)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if proc.returncode != 0:
        return None
    return float(proc.stdout.strip().splitlines()[-1])
