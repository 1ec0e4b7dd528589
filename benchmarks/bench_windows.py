"""Multi-scale window extraction: the numba kernel against NumPy references.

Stack: 14 factors x 1000 x 1000 float32 (random, normalised). Centres: random cells, windows 12, 17
and 22 resampled to 12 x 12 (area-weighted). References, checked equal first:

* ``loop``: the plain NumPy/SciPy reference of ``tests/test_windows.py`` (pad, slice, exact
  super-sampling per sample) -- the readable specification;
* ``einsum``: a vectorised NumPy version (fancy-index gather of each window, then two weight-matrix
  contractions per scale) -- the fastest honest NumPy one we could write.

GB/s counts the bytes the extractor writes (N x 14 x 12 x 12 x 3 x 4 B). Writes
benchmarks/results/windows.md.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import cpu_description as machine  # noqa: E402
from slidemap.compute.maps.windows import MULTISCALE_SIZES, area_weights, extract_windows  # noqa: E402
from tests.test_windows import _reference  # noqa: E402

FACTORS, SIZE = 14, 1000
N_KERNEL, N_EINSUM, N_LOOP = 50_000, 4_000, 400


def einsum_reference(stack: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    pad = max(MULTISCALE_SIZES)
    padded = np.pad(stack, ((0, 0), (pad, pad), (pad, pad)))
    out = np.empty((len(rows), stack.shape[0], 12, 12, 3), np.float32)
    for k, n in enumerate(MULTISCALE_SIZES):
        idx, wts = area_weights(n, 12)
        dense = np.zeros((12, n))
        for i in range(12):
            np.add.at(dense[i], idx[i], wts[i])
        off = np.arange(n) - (n - 1) // 2 + pad
        r = (rows[:, None] + off)[:, :, None]
        c = (cols[:, None] + off)[:, None, :]
        win = padded[:, r, c]  # [F, N, n, n]
        out[..., k] = np.einsum("in,fsnm,jm->sfij", dense, win, dense, optimize=True)
    return out


def timed(fn, *args, repeat: int = 3) -> float:
    fn(*args)
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    rng = np.random.default_rng(0)
    stack = rng.random((FACTORS, SIZE, SIZE), dtype=np.float32)
    rows = rng.integers(0, SIZE, N_KERNEL)
    cols = rng.integers(0, SIZE, N_KERNEL)
    out = np.empty((N_KERNEL, FACTORS, 12, 12, 3), np.float32)

    # correctness first
    np.testing.assert_allclose(
        extract_windows(stack, rows[:N_LOOP], cols[:N_LOOP]), _reference(stack, rows[:N_LOOP], cols[:N_LOOP]), atol=1e-6
    )
    np.testing.assert_allclose(
        extract_windows(stack, rows[:N_LOOP], cols[:N_LOOP]), einsum_reference(stack, rows[:N_LOOP], cols[:N_LOOP]), atol=1e-5
    )

    t_kernel = timed(lambda: extract_windows(stack, rows, cols, out=out))
    # map order: every cell of a 250 x 200 block, row-major (what a map or a served tile asks for)
    from slidemap.compute.maps.windows import block_centres

    map_rows, map_cols = block_centres(250, 200, 300)
    t_map = timed(lambda: extract_windows(stack, map_rows, map_cols, out=out))
    t_einsum = timed(lambda: einsum_reference(stack, rows[:N_EINSUM], cols[:N_EINSUM]), repeat=2)
    t_loop = timed(lambda: _reference(stack, rows[:N_LOOP], cols[:N_LOOP]), repeat=1)
    sample_bytes = FACTORS * 12 * 12 * 3 * 4
    rate = {"numba kernel": N_KERNEL / t_kernel, "NumPy einsum": N_EINSUM / t_einsum, "NumPy loop reference": N_LOOP / t_loop}
    import numba

    lines = [
        "## Multi-scale window extraction (`compute/maps/windows.py`)",
        "",
        f"Machine: {machine()}; numba {numba.__version__} with {numba.get_num_threads()} threads. "
        f"Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}. "
        "Command: `.venv/bin/python benchmarks/bench_windows.py`.",
        "",
        f"Stack {FACTORS} x {SIZE} x {SIZE} float32; random centre cells; windows 12/17/22 -> 12 x 12 "
        "area-weighted; output [N, 14, 12, 12, 3] float32 "
        f"({sample_bytes} B per sample). Best of 3 (loop: 1) after a warm-up; all three checked equal first.",
        "",
        "Random centres (training order) are bound by memory latency: each sample touches 14 x 22 rows at a "
        "random place. Map order (all cells of a block, row-major) reuses cached rows.",
        "",
        "| implementation | samples | seconds | samples/s | GB/s written | speed-up of the kernel (random centres) |",
        "|---|---|---|---|---|---|",
    ]
    rate["numba kernel, map order"] = len(map_rows) / t_map
    for (name, n, t) in (("numba kernel", N_KERNEL, t_kernel), ("numba kernel, map order", len(map_rows), t_map),
                         ("NumPy einsum", N_EINSUM, t_einsum),
                         ("NumPy loop reference", N_LOOP, t_loop)):
        lines.append(
            f"| {name} | {n} | {t:.3f} | {rate[name]:,.0f} | {rate[name] * sample_bytes / 1e9:.3f} | "
            f"{rate['numba kernel'] / rate[name]:.1f}x |"
        )
    lines += [
        "",
        "The machine is shared with other jobs; absolute numbers vary from run to run, the ratios less.",
        "",
    ]
    out_path = ROOT / "benchmarks" / "results" / "windows.md"
    out_path.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NUMBA_NUM_THREADS", str(os.cpu_count() or 1))
    sys.exit(main())
