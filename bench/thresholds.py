"""Range estimators compared: thresholds, MSE and SQNR on known distributions, speed and memory.

    .venv/bin/python bench/thresholds.py [--minilm] [--no-write]

Writes the `## Range estimators` section of BENCHMARKS.md. Distributions: three normals with different means
and spreads and a Laplace, 10^6 samples fed as 100 batches of 10^4, int8 and int4 symmetric per-tensor;
`--minilm` adds the input of MiniLM's first FFN down-projection (after GELU) on its calibration sentences.
Speed: one thread, 10^7 elements in 100 batches per estimator. Memory: the bytes of every tensor the estimator
holds after 1 and after 100 batches, and the peak RSS (VmHWM) of a fresh child process doing either.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_flags  # noqa: E402
from bench.markdown import write_section_text  # noqa: E402
from lowbit.calib import METHODS, make_estimator  # noqa: E402
from lowbit.core import fake_quantize, get_qtype  # noqa: E402
from lowbit.metrics import sqnr_db  # noqa: E402

SECTION = "## Range estimators"
N, BATCHES = 1_000_000, 100
SPEED_BATCH, SPEED_BATCHES = 100_000, 100
NORMALS = ((0.0, 1.0), (2.0, 0.5), (-1.0, 3.0))  # (mean, std)


def distributions(seed: int = 0) -> dict[str, tuple[torch.Tensor, float, float]]:
    """name -> (samples, mean, std)."""
    g = torch.Generator().manual_seed(seed)
    out = {f"N({m:g}, {s:g}²)": (torch.randn(N, generator=g) * s + m, m, s) for m, s in NORMALS}
    u = torch.rand(N, generator=g) - 0.5
    lap = -u.sign() * torch.log1p(-2 * u.abs())  # Laplace(0, 1): std sqrt(2)
    out["Laplace(0, 1)"] = (lap, 0.0, 2**0.5)
    return out


def minilm_activation(max_batches: int = 8) -> torch.Tensor:
    """Inputs of layer 0's FFN down-projection (BertOutput.dense) on MiniLM's calibration batches."""
    from lowbit import zoo

    task = zoo.load("minilm")
    seen = []
    layer = task.model.encoder.encoder.layer[0].output.dense
    handle = layer.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().reshape(-1)))
    with torch.inference_mode():
        for batch in task.calib[:max_batches]:
            task.model(*batch)
    handle.remove()
    return torch.cat(seen)


def compare(x: torch.Tensor, qtype) -> dict[str, dict]:
    rows = {}
    for name in METHODS:
        est = make_estimator(name)
        for chunk in torch.tensor_split(x, BATCHES):
            est.observe(chunk)
        lo, hi = est.compute_range(qtype)
        x_hat = fake_quantize(x, est.qparams(qtype))
        rows[name] = {
            "min": lo.item(),
            "max": hi.item(),
            "mse": (x - x_hat).double().pow(2).mean().item(),
            "sqnr_db": sqnr_db(x, x_hat),
        }
    return rows


def accuracy_tables(extra: dict) -> list[str]:
    lines = []
    for bits in (8, 4):
        qtype = get_qtype(f"int{bits}")
        lines += [
            f"### int{bits}, symmetric, per tensor",
            "",
            "| data | 3σ bound | method | min | max | MSE | SQNR dB |",
            "|---|---|---|---|---|---|---|",
        ]
        for dname, (x, mean, std) in {**distributions(), **extra}.items():
            bound = max(abs(mean - 3 * std), abs(mean + 3 * std))
            res = compare(x, qtype)
            best = min(res, key=lambda k: res[k]["mse"])
            for m, r in res.items():
                mark = " **(best)**" if m == best else ""
                lines.append(
                    f"| {dname} | {bound:.3g} | {m}{mark} | {r['min']:.4g} | {r['max']:.4g} | "
                    f"{r['mse']:.3e} | {r['sqnr_db']:.2f} |"
                )
            print(
                f"int{bits} {dname}: admm [{res['admm']['min']:.3f}, {res['admm']['max']:.3f}], "
                f"kl [{res['kl']['min']:.3f}, {res['kl']['max']:.3f}], 3σ bound {bound:.3f}",
                flush=True,
            )
        lines.append("")
    return lines


def state_bytes(obj, seen=None) -> int:
    """Bytes of every tensor reachable from an estimator's attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (list, tuple)):
        return sum(state_bytes(o, seen) for o in obj)
    if hasattr(obj, "__dict__"):
        return sum(state_bytes(v, seen) for v in vars(obj).values())
    return 0


def child_peak(name: str, batches: int) -> float:
    """VmHWM (MiB) of a fresh process that feeds `batches` batches to `name` and computes its range."""
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, str(batches)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["vmhwm_mib"]


def run_child(name: str, batches: int) -> None:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    est = make_estimator(name)
    for _ in range(batches):
        est.observe(torch.randn(SPEED_BATCH, generator=g) * (1 + torch.rand(1, generator=g).item()))
    est.compute_range(get_qtype("int8"))
    hwm = next(
        int(l.split()[1]) for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM")
    )
    print(json.dumps({"vmhwm_mib": hwm / 1024}))


def speed_table() -> list[str]:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(1)
    data = [torch.randn(SPEED_BATCH, generator=g) * (1 + 0.5 * (i % 3)) for i in range(SPEED_BATCHES)]
    lines = [
        f"### Speed and memory (one thread, {SPEED_BATCHES} batches of {SPEED_BATCH:,} elements)",
        "",
        "| method | observe Melem/s | compute_range s (int8) | state bytes after 1 / 100 batches | "
        "peak RSS MiB after 1 / 100 batches |",
        "|---|---|---|---|---|",
    ]
    for name in METHODS:
        est = make_estimator(name)
        est.observe(data[0])
        one = state_bytes(est)
        t0 = time.perf_counter()
        for x in data[1:]:
            est.observe(x)
        rate = SPEED_BATCH * (SPEED_BATCHES - 1) / (time.perf_counter() - t0) / 1e6
        t0 = time.perf_counter()
        est.compute_range(get_qtype("int8"))
        solve = time.perf_counter() - t0
        rss = (child_peak(name, 1), child_peak(name, SPEED_BATCHES))
        lines.append(
            f"| {name} | {rate:.1f} | {solve:.3f} | {one:,} / {state_bytes(est):,} | "
            f"{rss[0]:.0f} / {rss[1]:.0f} |"
        )
        print(lines[-1], flush=True)
    return lines + [""]


def write_section(path: Path, body: str) -> None:
    """Replace (or append) the `## Range estimators` section, leaving every other section as it was."""
    write_section_text(path, body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minilm", action="store_true", help="add MiniLM's FFN down-projection input")
    parser.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return run_child(args.child[0], int(args.child[1]))
    torch.set_num_threads(1)
    extra = {}
    if args.minilm:
        act = minilm_activation()
        extra["MiniLM FFN-down input"] = (act, act.mean().item(), act.std().item())
    cpu = cpu_flags()
    command = "python bench/thresholds.py" + (" --minilm" if args.minilm else "")
    head = [
        SECTION,
        "",
        f"Command: `{command}` — {datetime.date.today().isoformat()}, {cpu['model']}, "
        f"flags {' '.join(cpu['flags'])}, torch {torch.__version__}, one thread.",
        "",
        f"Each estimator sees {N:,} samples in {BATCHES} batches; the range then fake-quantizes all of them. "
        "3σ bound = max(|μ−3σ|, |μ+3σ|) of the generating distribution (of the sample for MiniLM).",
        "",
    ]
    body = "\n".join(head + accuracy_tables(extra) + speed_table()) + "\n"
    print(body)
    if not args.no_write:
        write_section(ROOT / "BENCHMARKS.md", body)


if __name__ == "__main__":
    main()
