"""What every benchmark reports about the machine: the CPU, and its measured float32 peak.

The peak is a large TensorFlow matmul timed in the same process as the benchmark, so a
"share of peak" is a ratio of two numbers taken under the same machine load.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time


def cpu_description() -> str:
    """``<CPU model>, <N> cores, Python x.y.z, <OS> <arch>``."""
    model = platform.processor() or "unknown CPU"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.machine()}"


def cpu_model() -> str:
    return cpu_description().split(",", 1)[0]


def best_of(fn, repeats: int) -> float:
    """Fastest wall time of ``repeats`` calls of ``fn`` (seconds)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def float32_peak_gflops(n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of an n x n float32 matmul in TensorFlow (best of ``repeats``, after a warm-up)."""
    from slidemap.compute.models.runtime import configure_tensorflow

    tf = configure_tensorflow()
    a = tf.random.uniform((n, n), dtype=tf.float32)
    b = tf.random.uniform((n, n), dtype=tf.float32)
    matmul = tf.function(lambda: tf.linalg.matmul(a, b))
    matmul().numpy()
    return 2.0 * n**3 / best_of(lambda: matmul().numpy(), repeats) / 1e9
