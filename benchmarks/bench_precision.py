"""Mixed precision vs float32: agreement of the outputs and relative speed, per network, on the
device TensorFlow uses (``SLIDEMAP_DEVICE`` / ``python -m benchmarks --device``).

Run: ``.venv/bin/python benchmarks/bench_precision.py``; writes ``benchmarks/results/precision.md``.
The same weights are loaded into a float32 model and into one built under the mixed policy
(``mixed_bfloat16`` on a CPU, ``mixed_float16`` and ``mixed_bfloat16`` on a GPU), and both predict the
same random inputs. Weights are untrained: outputs sit near 0.5, the worst case for decisions at 0.5.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "precision.md"
sys.path.insert(0, str(ROOT))
from benchmarks.machine import cpu_description  # noqa: E402


def timed(fn, x: np.ndarray, repeats: int = 2) -> float:
    fn(x)  # trace / compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    from slidemap.compute.models.runtime import BatchPredictor, configure_tensorflow, device_summary

    configure_tensorflow()
    import keras

    from slidemap.training.lsm_networks import build_dense_fcn, build_window_cnn
    from slidemap.training.unet import build_unet

    device = device_summary()
    gpu = device["device"] == "GPU"
    policies = ["mixed_float16", "mixed_bfloat16"] if gpu else ["mixed_bfloat16"]
    rng = np.random.default_rng(0)
    n = 4 if gpu else 1  # CPUs without bfloat16 units (AVX2 only) emulate it: keep the CPU run short
    nets = {
        "U-Net, width 16, 256-px tiles": (lambda: build_unet(4, base_width=16), [rng.normal(size=(4 * n, 256, 256, 4))]),
        "susceptibility fast form (dense FCN, width 32), 128-cell block": (
            lambda: build_dense_fcn(14, width=32, dense=64), [rng.normal(size=(n, 150, 150, 14))]),
        f"window 3D-CNN (paper widths 32/64), {256 * n} cells": (
            lambda: build_window_cnn(14, 3, 14),
            [rng.normal(size=(256 * n, 14, 12, 12, 3)), rng.normal(size=(256 * n, 14))]),
    }
    rows = []
    for name, (build, xs) in nets.items():
        xs = [a.astype(np.float32) for a in xs]
        x = xs[0] if len(xs) == 1 else xs
        n_samples = len(xs[0])
        keras.mixed_precision.set_global_policy("float32")
        keras.utils.set_random_seed(0)
        reference = build()
        p32 = BatchPredictor(reference, batch_size=n_samples if n_samples < 64 else 512, xla=False)
        t32 = timed(p32, x)
        y32 = p32(x).astype(np.float64)
        for policy in policies:
            keras.mixed_precision.set_global_policy(policy)
            try:
                mixed = build()
            finally:
                keras.mixed_precision.set_global_policy("float32")
            mixed.set_weights(reference.get_weights())
            pm = BatchPredictor(mixed, batch_size=p32.batch_size, xla=False)
            try:
                tm = timed(pm, x)
            except Exception as exc:  # noqa: BLE001 - a policy without kernels on this device is a result too
                rows.append((name, policy, None, None, None, None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}"))
                continue
            ym = pm(x).astype(np.float64)
            d = np.abs(ym - y32)
            same = float(np.mean((ym >= 0.5) == (y32 >= 0.5)))
            rows.append((name, policy, float(d.max()), float(d.mean()), same, t32 / tm, ""))
            print(f"{name} {policy}: max {d.max():.2e} mean {d.mean():.2e} same {same:.1%} speed x{t32 / tm:.2f}",
                  file=sys.stderr)
    where = f"GPU ({', '.join(device['gpu_names'])})" if gpu else "CPU"
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").is_file() else ""
    bf16 = "yes" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "no (bfloat16 is emulated)"
    lines = [
        "# Mixed precision vs float32",
        "",
        f"- machine: {cpu_description()}; TensorFlow {device['tensorflow']} on the {where}; "
        f"CPU bfloat16 units: {bf16}",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        "- command: `.venv/bin/python benchmarks/bench_precision.py` (GPU: `python -m benchmarks --device gpu precision`)",
        f"- load average at the end: {os.getloadavg()[0]:.1f} (shared machine: speed ratios are from one run)",
        "",
        "Same (untrained) weights in a float32 model and in one built under the mixed policy (weights stay",
        "float32, compute in 16 bits); `SLIDEMAP_MIXED_PRECISION=1` picks float16 on a GPU, bfloat16 on a CPU.",
        "Untrained outputs sit near 0.5, the worst case for the share of same decisions at 0.5.",
        "",
        "| network | policy | max abs diff | mean abs diff | same decision at 0.5 | speed vs float32 |",
        "|---|---|---|---|---|---|",
    ]
    for name, policy, dmax, dmean, same, speed, note in rows:
        if dmax is None:
            lines.append(f"| {name} | {policy} | - | - | - | not run: {note} |")
        else:
            lines.append(f"| {name} | {policy} | {dmax:.1e} | {dmean:.1e} | {same:.1%} | x{speed:.2f} |")
    lines.append("")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(RESULTS.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
