"""Susceptibility maps: window path vs dense path cells/s in one run, and the networks' share of the
CPU's float32 peak.

Region: ``REGION`` (argument; default the 20 km demo region, generated and prepared under
``/tmp/slidemap-bench-lsm`` if missing). Models: the region's newest trained ``multiscale`` and
``multiscale_dense`` artefacts when they exist (their blocked-split ROC-AUC is read from the newest
lsm report), and the same two architectures at the paper's widths (32/64 filters, dense 64; dense
model width 32) with untrained weights -- throughput does not depend on the weights' values.
The window path maps a square sub-area (it is the slow reference); the dense path maps the whole
region. Peak: a 4096 x 4096 float32 matmul in TensorFlow (the networks' own library) timed in the
same run. Writes benchmarks/results/lsm.md.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import cpu_description as machine, float32_peak_gflops  # noqa: E402

DEFAULT_REGION = Path("/tmp/slidemap-bench-lsm/demo20")
WINDOW_SIDE = {"trained": 96, "paper widths": 48}


def ensure_region(region: Path) -> Path:
    if (region / "build" / "factors.tif").is_file():
        return region
    from slidemap.compute.demo import generate_demo_region
    from slidemap.compute.prepare import prepare_region

    generate_demo_region(region, size_km=20, seed=0)
    prepare_region(region, show_progress=True)
    return region


def model_from_keras(keras_model, name, factor_names, normalisation, sizes, dense):
    from slidemap.compute.susceptibility import SusceptibilityModel
    from slidemap.training.lsm import compiled_predict

    return SusceptibilityModel(
        name=name, version="untrained", factor_names=factor_names, halo=11,
        mode="dense" if dense else "window", card={}, model=keras_model, normalisation=normalisation,
        sizes=sizes, out_size=12, predict_fn=compiled_predict(keras_model),
    )


def time_map(sm, stack, block) -> tuple[float, int]:
    from slidemap.compute.susceptibility import predict_region

    predict_region(sm, stack[:, :64, :64], block=block, progress=False)  # warm-up / tracing
    t0 = time.perf_counter()
    prob = predict_region(sm, stack, block=block, progress=False)
    return time.perf_counter() - t0, int(np.isfinite(prob).sum())


def main() -> int:
    region = ensure_region(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_REGION)
    import rasterio

    from slidemap.compute.factors import load_normalisation
    from slidemap.compute.susceptibility import load_susceptibility
    from slidemap.compute.windows import MULTISCALE_SIZES
    from slidemap.compute.models.store import latest_model
    from slidemap.training.lsm import build_dense_fcn, build_window_cnn, flops_dense_per_cell, flops_window_cnn

    with rasterio.open(region / "build" / "factors.tif") as src:
        stack = src.read().astype(np.float32)
    norm = load_normalisation(region / "build")
    names = norm.names
    peak = float32_peak_gflops()

    pairs = []
    win_info = latest_model(region, "lsm", ("multiscale",))
    den_info = latest_model(region, "lsm", ("multiscale_dense",))
    if win_info and den_info:
        pairs.append(("trained", load_susceptibility(win_info.path), load_susceptibility(den_info.path)))
    pairs.append((
        "paper widths",
        model_from_keras(build_window_cnn(len(names), 3, widths=(32, 64), dense=64), "multiscale", names, norm, MULTISCALE_SIZES, False),
        model_from_keras(build_dense_fcn(len(names), width=32, dense=64), "multiscale_dense", names, norm, (), True),
    ))

    rows = []
    for label, window, dense in pairs:
        side = WINDOW_SIDE[label]
        t_w, n_w = time_map(window, stack[:, :side, :side], 128)
        t_d, n_d = time_map(dense, stack, 512)
        fw = flops_window_cnn(window.model)
        fd = flops_dense_per_cell(dense.model)
        rows.append({
            "models": label, "window_version": window.version, "dense_version": dense.version,
            "window_cells": n_w, "window_s": t_w, "window_cps": n_w / t_w,
            "dense_cells": n_d, "dense_s": t_d, "dense_cps": n_d / t_d,
            "window_gflops": fw * n_w / t_w / 1e9, "dense_gflops": fd * n_d / t_d / 1e9,
            "window_flops_cell": fw, "dense_flops_cell": fd,
        })

    auc_line = "No lsm report in this region: no trained models to compare."
    reports = sorted((region / "reports" / "lsm").glob("*/report.json"))
    if reports:
        rep = json.loads(reports[-1].read_text())
        m = rep["models"]
        if "multiscale" in m and "multiscale_dense" in m:
            a_w, a_d = m["multiscale"]["blocked"]["roc_auc"], m["multiscale_dense"]["blocked"]["roc_auc"]
            auc_line = (
                f"Blocked-split ROC-AUC (report `{reports[-1].parent.name}`, preset `{rep['preset']}`): "
                f"multiscale (window) {a_w:.3f}, multiscale_dense {a_d:.3f}, difference (dense - window) {a_d - a_w:+.3f}; "
                f"random split: {m['multiscale']['random']['roc_auc']:.3f} vs {m['multiscale_dense']['random']['roc_auc']:.3f}."
            )

    h, w = stack.shape[1:]
    lines = [
        "## Susceptibility maps: window vs dense (`compute/susceptibility.py`)",
        "",
        f"Machine: {machine()}. Date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}. "
        f"Command: `.venv/bin/python benchmarks/bench_lsm.py {region}`.",
        "",
        f"Region `{region}`: {w} x {h} cells, {len(names)} factors. Window path: the multi-scale 3D-CNN "
        "cell by cell through the numba extractor (batches of 2048) on a square sub-area; dense path: the "
        "fully convolutional `multiscale_dense` over the whole region in 512-cell blocks. Both include "
        "normalisation, extraction and NaN handling; one warm-up call first.",
        f"Measured float32 peak (TensorFlow 4096 x 4096 matmul, same run): **{peak:.1f} GFLOP/s**.",
        "",
        "| models | path | cells | seconds | cells/s | FLOP/cell | GFLOP/s | share of matmul peak | dense speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['models']} ({r['window_version']}) | window | {r['window_cells']} | {r['window_s']:.2f} | "
            f"{r['window_cps']:,.0f} | {r['window_flops_cell'] / 1e6:.2f} M | {r['window_gflops']:.2f} | "
            f"{r['window_gflops'] / peak:.1%} | |"
        )
        lines.append(
            f"| {r['models']} ({r['dense_version']}) | dense | {r['dense_cells']} | {r['dense_s']:.2f} | "
            f"{r['dense_cps']:,.0f} | {r['dense_flops_cell'] / 1e3:.1f} k | {r['dense_gflops']:.2f} | "
            f"{r['dense_gflops'] / peak:.1%} | **{r['dense_cps'] / r['window_cps']:.0f}x** |"
        )
    lines += [
        "",
        auc_line,
        "",
        "FLOP counts: 2 x multiply-adds of the convolutions and dense layers (pooling pyramid adds for the "
        "dense model); the window CNN's count is per window, i.e. per cell. The dense model needs far fewer "
        "FLOP per cell by design (2D convolutions over shared activations instead of a 3D-CNN per window), "
        "so its speed-up is both shared computation and a smaller network. The machine is shared with "
        "other jobs; ratios within this run are the meaningful numbers.",
        "",
    ]
    out_path = ROOT / "benchmarks" / "results" / "lsm.md"
    out_path.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
