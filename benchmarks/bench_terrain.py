"""Terrain kernels: each numba kernel against its plain NumPy version on a 2000 x 2000 DEM.

Asserts the two give the same output, then times them (best of a few calls, after one warm-up
call so numba's compile / cache load is not counted). Also times the whole ``terrain_factors``
call. Writes benchmarks/results/terrain.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import cpu_description as machine  # noqa: E402

log = logging.getLogger("bench_terrain")

SIZE = 2000
CELL = (30.0, 30.0)


def synthetic_dem(n: int = SIZE, seed: int = 0) -> np.ndarray:
    """Deterministic fractal-ish terrain (sum of random sinusoids, ~1500 m relief) with a NaN hole."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n].astype(np.float64) / n
    z = np.zeros((n, n))
    for octave in range(6):
        f = 2.0**octave
        for _ in range(3):
            kx, ky, ph = rng.normal(0, f * 4), rng.normal(0, f * 4), rng.uniform(0, 2 * np.pi)
            z += (800.0 / f) * np.sin(kx * x + ky * y + ph)
    z += 1200.0
    z[n // 3 : n // 3 + 40, n // 2 : n // 2 + 60] = np.nan  # nodata hole
    return z


def best_ms(fn, *args, repeat: int) -> float:
    fn(*args)  # warm-up: numba compile or cache load, page faults
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return 1000.0 * min(times)


def same(a, b) -> None:
    a = a if isinstance(a, tuple) else (a,)
    b = b if isinstance(b, tuple) else (b,)
    for x, y in zip(a, b, strict=True):
        if x.dtype.kind == "f":
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, equal_nan=True)
        else:
            np.testing.assert_array_equal(x, y)


def main() -> None:
    import numba

    from slidemap.compute.terrain import derivatives as terrain
    from slidemap.compute.terrain import kernels as k

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    dem = synthetic_dem()
    dx, dy = CELL
    rows = []
    for name, label in [
        ("horn_slope_aspect", "Horn slope + aspect"),
        ("zt_curvatures", "Zevenbergen-Thorne plan + profile curvature"),
        ("surface_ratio", "surface-area ratio (roughness)"),
        ("d8_steepest", "D8 steepest descent (on the DEM)"),
    ]:
        fast, slow = getattr(k, name), getattr(k, name + "_numpy")
        same(fast(dem, dx, dy), slow(dem, dx, dy))
        t_nb = best_ms(fast, dem, dx, dy, repeat=5)
        t_np = best_ms(slow, dem, dx, dy, repeat=2)
        log.info("%s: numba %.1f ms, numpy %.1f ms", name, t_nb, t_np)
        rows.append(f"| {label} (`{name}`) | {t_nb:.1f} | {t_np:.1f} | {t_np / t_nb:.1f}x |")
    t_flow = best_ms(terrain.flow_accumulation, dem, CELL, repeat=2)
    t_all = best_ms(terrain.terrain_factors, dem, CELL, repeat=2)
    log.info("flow_accumulation %.0f ms, terrain_factors %.0f ms", t_flow, t_all)
    lines = [
        "## terrain kernels",
        "",
        f"- machine: {machine()}; numba {numba.__version__}, {numba.get_num_threads()} threads; numpy {np.__version__}",
        f"- date: {dt.datetime.now().isoformat(timespec='minutes')}",
        "- command: `.venv/bin/python benchmarks/bench_terrain.py`",
        f"- load average at the end (1/5/15 min): {' / '.join(f'{v:.1f}' for v in os.getloadavg())}"
        " (other jobs on a shared machine make times noisy; the ratios are what matter)",
        f"- input: synthetic {SIZE} x {SIZE} float64 DEM, 30 m cells, with a NaN hole; outputs float32",
        "- each kernel's numba and NumPy outputs are asserted equal (rtol 1e-5; D8 codes exactly);",
        "  times are the best of 5 (numba) / 2 (NumPy) calls after one warm-up call",
        "",
        "| kernel | numba ms | NumPy ms | speed-up |",
        "|---|---|---|---|",
        *rows,
        "",
        f"Whole-DEM steps (no NumPy twin): `flow_accumulation` (pyflwdir fill + D8 + flats + pyflwdir "
        f"accumulation) {t_flow:.0f} ms; `terrain_factors` (all seven factors) {t_all:.0f} ms.",
        "",
    ]
    out = ROOT / "benchmarks" / "results" / "terrain.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
