"""Susceptibility maps: a window 3D-CNN against its fast form, in one run, and the networks' share
of the CPU's float32 peak.

Region: ``REGION`` (argument; default the 20 km demo region under ``/tmp/slidemap-bench-lsm``,
generated, prepared and trained with ``--preset demo`` if missing). Models: the region's default
window model's newest ``multiscale`` artefact and its fast form; and the same two architectures at
the paper's widths (32/64 filters, dense 64; fast form width 32) with untrained weights --
throughput does not depend on the weights' values. The window path maps a square sub-area (it is the
slow reference); the fast form maps the whole region. Agreement: Pearson r of the two paths on the
window sub-area, measured here; the blocked-test ROC-AUC of each is read from the model card
(measured at training). Peak: a 4096 x 4096 float32 matmul in TensorFlow timed in the same run.
Whole-command start-up is excluded: every path gets one warm-up call. Writes benchmarks/results/lsm.md.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import cpu_description as machine, float32_peak_gflops  # noqa: E402

DEFAULT_REGION = Path("/tmp/slidemap-bench-lsm/demo20")
WINDOW_SIDE = {"trained": 96, "paper widths": 40}


def ensure_region(region: Path) -> Path:
    from slidemap.compute.models.store import list_models

    if not (region / "build" / "factors.tif").is_file():
        from slidemap.compute.demo.region import generate_demo_region
        from slidemap.compute.region.prepare import prepare_region

        generate_demo_region(region, size_km=20, seed=0)
        prepare_region(region, show_progress=True)
    if not any(m.name == "multiscale" for m in list_models(region, "lsm")):
        subprocess.run([sys.executable, "-m", "slidemap.cli", "train", "lsm", str(region), "--preset", "demo"],
                       check=True)
    return region


def time_map(sm, stack, block) -> tuple[float, np.ndarray]:
    from slidemap.compute.maps.susceptibility import predict_region

    predict_region(sm, stack[:, :48, :48], block=block, progress=False)  # warm-up / tracing
    t0 = time.perf_counter()
    prob = predict_region(sm, stack, block=block, progress=False)
    return time.perf_counter() - t0, prob


def untrained(card_model, keras_model, mode):
    from dataclasses import replace

    from slidemap.compute.models.runtime import compiled_predict

    return replace(card_model, model=keras_model, mode=mode, version="untrained", halo=11,
                   predict_fn=compiled_predict(keras_model))


def load_pair(region: Path):
    """The region's factor stack, and its newest ``multiscale`` model as the window 3D-CNN and as its
    fast form, loaded as `map susceptibility` loads them."""
    import rasterio

    from slidemap.compute.maps.susceptibility import load_susceptibility, resolve_model

    with rasterio.open(region / "build" / "factors.tif") as src:
        stack = src.read().astype(np.float32)
    path = resolve_model(region, "multiscale")
    return stack, load_susceptibility(path, mode="window"), load_susceptibility(path, mode="dense")


def main() -> int:
    region = ensure_region(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_REGION)
    from slidemap.training.lsm_networks import build_dense_fcn, build_window_cnn, flops_dense_per_cell, flops_window_cnn

    peak = float32_peak_gflops()
    stack, window, fast = load_pair(region)
    n_ch, n_win = len(window.encoding.channels), len(window.window_channels)
    pairs = [
        ("trained", window, fast),
        ("paper widths", untrained(window, build_window_cnn(n_win, 3, n_ch, widths=(32, 64), dense=64), "window"),
         untrained(fast, build_dense_fcn(n_ch, width=32, dense=64), "dense")),
    ]
    rows = []
    agreement = None
    for label, wm, fm in pairs:
        side = WINDOW_SIDE[label]
        sub = stack[:, :side, :side]
        tw, pw = time_map(wm, sub, block=side)
        tf_, pf = time_map(fm, stack, block=512)
        cells_w, cells_f = int(np.isfinite(pw).sum()), int(np.isfinite(pf).sum())
        fl_w = flops_window_cnn(wm.model)
        fl_f = flops_dense_per_cell(fm.model)
        rw, rf = cells_w / tw, cells_f / tf_
        rows.append((label, "window", cells_w, tw, rw, fl_w))
        rows.append((label, "fast form", cells_f, tf_, rf, fl_f, rf / rw))
        if label == "trained":
            ok = np.isfinite(pw) & np.isfinite(pf[:side, :side])
            agreement = (float(np.corrcoef(pw[ok], pf[:side, :side][ok])[0, 1]), int(ok.sum()))
    card = window.card.get("fast_form") or {}
    lines = [
        "## Susceptibility maps: window 3D-CNN vs its fast form (`compute/maps/susceptibility.py`)",
        "",
        f"Machine: {machine()}. Date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC. "
        f"Command: `.venv/bin/python benchmarks/bench_lsm.py {region}`.",
        "",
        f"Region `{region.name}`: {stack.shape[2]} x {stack.shape[1]} cells, {stack.shape[0]} factors, {n_ch} model "
        f"channels ({n_win} in the windows). Window path: the multi-scale 3D-CNN cell by cell through the numba "
        "extractor on a square sub-area; fast form: the dense network distilled from it, over the whole region in "
        "512-cell blocks. Both include encoding, extraction and NaN handling; one warm-up call first (start-up "
        "excluded).",
        f"Measured float32 peak (TensorFlow 4096 x 4096 matmul, same run): **{peak:.1f} GFLOP/s**.",
        "",
        "| models | path | cells | seconds | cells/s | FLOP/cell | GFLOP/s | share of matmul peak | fast-form speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        label, kind, cells, secs, rate, fl = row[:6]
        speed = f"**{row[6]:.0f}x**" if len(row) > 6 else ""
        gf = rate * fl / 1e9
        lines.append(f"| {label} | {kind} | {cells} | {secs:.2f} | {rate:,.0f} | {fl / 1e6:.2f} M | {gf:.2f} | "
                     f"{gf / peak:.1%} | {speed} |")
    lines.append("")
    if agreement:
        lines.append(f"Agreement of the trained pair on the {agreement[1]} sub-area cells, this run: Pearson r = "
                     f"**{agreement[0]:.4f}**.")
    if card:
        lines.append(
            f"At training (model card): r = {card.get('pearson_r')} on {card.get('agreement_cells')} cells the fast "
            f"form was not trained on; blocked-test ROC-AUC window {card.get('auc_window')} vs fast form "
            f"{card.get('auc_fast')} (difference {card.get('auc_diff')}); tiles come from the "
            f"{'fast form' if card.get('use') else 'window path'}."
        )
    lines += [
        "",
        "FLOP counts: 2 x multiply-adds of the convolutions and dense layers (the pooling pyramid's adds for the "
        "fast form); the window CNN's count is per window, i.e. per cell. The fast form needs far fewer FLOP per cell "
        "by design (2D convolutions over shared activations instead of a 3D-CNN per window), so its speed-up is "
        "both shared computation and a smaller network. Ratios within this run are the meaningful numbers.",
        "",
    ]
    out = ROOT / "benchmarks" / "results" / "lsm.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
