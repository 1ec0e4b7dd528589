"""Batch shapes and threads for the susceptibility networks: where the window path's time goes, and
which batch (window 3D-CNN) or block (fast form) size and thread count get closest to the CPU's
float32 matmul peak.

Region: ``REGION`` (argument; default ``bench_lsm.py``'s 20 km demo region, made and trained if missing). Models: its
newest ``multiscale`` artefact (window 3D-CNN) and its fast form, as `map susceptibility` loads them.
Each arm runs in a fresh process per thread setting (TensorFlow fixes its thread pools at start):
``SLIDEMAP_TF_THREADS`` unset (TensorFlow's default: one pool per core) and 1 / 2 / ... up to the cores.

- window path: numba extraction alone (cells/s), the network alone on pre-extracted windows at each
  batch size (cells/s, GFLOP/s, share of peak), and the whole ``predict_block`` as `map` runs it;
- fast form: ``predict_region`` over the whole region at each block size (cells/s, share of peak).

One warm-up call per shape (tracing excluded); best of ``--repeats``. Writes
``benchmarks/results/batch_shapes.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import best_of, cpu_description, float32_peak_gflops  # noqa: E402

WINDOW_BATCHES = (256, 1024, 2048, 4096, 8192)
FAST_BLOCKS = (96, 160, 224, 336, 512, 704)
WINDOW_SIDE = 96  # the window path's sub-area (9,216 cells)


def measure(region: Path, repeats: int) -> dict:
    """One process, one thread setting: every shape's figures."""
    from benchmarks.bench_lsm import load_pair
    from slidemap.compute.maps.susceptibility import predict_region
    from slidemap.compute.maps.windows import block_centres, iter_windows
    from slidemap.training.lsm_networks import flops_dense_per_cell, flops_window_cnn

    peak = float32_peak_gflops()
    stack, window, fast = load_pair(region)
    h = window.halo
    sub = np.full((stack.shape[0], WINDOW_SIDE + 2 * h, WINDOW_SIDE + 2 * h), np.nan, np.float32)
    sub[:, h:, h:] = stack[:, : WINDOW_SIDE + h, : WINDOW_SIDE + h]
    encoded = window.encoding.encode(sub)
    rows, cols = block_centres(WINDOW_SIDE, WINDOW_SIDE, h)
    win_stack = np.ascontiguousarray(encoded[list(window.window_channels)])
    centre = np.ascontiguousarray(encoded[:, rows, cols][list(window.centre_channels)].T)
    n = len(rows)

    def extract_all() -> None:
        for _ in iter_windows(win_stack, rows, cols, window.sizes, window.out_size, 2048):
            pass

    extract_s = best_of(extract_all, repeats)
    windows = np.concatenate([w.copy() for _, w in iter_windows(win_stack, rows, cols, window.sizes,
                                                                window.out_size, 2048)])
    fl_w = flops_window_cnn(window.model)
    network = {}
    for batch in WINDOW_BATCHES:
        def run(batch: int = batch) -> None:
            for start in range(0, n, batch):
                window.predict_fn([windows[start : start + batch], centre[start : start + batch]])

        run()  # warm-up (traces the shapes)
        secs = best_of(run, repeats)
        network[batch] = {"seconds": secs, "cells_s": n / secs, "share": n / secs * fl_w / 1e9 / peak}
    window.predict_block(sub)
    whole_s = best_of(lambda: window.predict_block(sub), repeats)

    fl_f = flops_dense_per_cell(fast.model)
    cells = int(np.isfinite(stack).all(axis=0).sum())
    blocks = {}
    for block in FAST_BLOCKS:
        predict_region(fast, stack[:, :64, :64], block=block, progress=False)
        secs = best_of(lambda block=block: predict_region(fast, stack, block=block, progress=False), repeats)
        blocks[block] = {"seconds": secs, "cells_s": cells / secs, "share": cells / secs * fl_f / 1e9 / peak}
    return {
        "threads": os.environ.get("SLIDEMAP_TF_THREADS", "default"),
        "peak": peak, "window_cells": n, "window_flop": fl_w, "extract_cells_s": n / extract_s,
        "network": network, "predict_block_cells_s": n / whole_s, "whole_block_share": n / whole_s * fl_w / 1e9 / peak,
        "fast_cells": cells, "fast_flop": fl_f, "blocks": blocks, "grid": list(stack.shape[1:]),
    }


def render(results: list[dict], region: Path, repeats: int) -> str:
    lines = [
        "## Batch shapes and threads (`benchmarks/bench_batch_shapes.py`)",
        "",
        f"- machine: {cpu_description()}",
        f"- date: {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        f"- command: `.venv/bin/python benchmarks/bench_batch_shapes.py {region}` (best of {repeats}; warm-up "
        "calls excluded, start-up excluded; one fresh process per thread setting)",
        f"- region: {results[0]['grid'][1]} x {results[0]['grid'][0]} cells; window path on a "
        f"{WINDOW_SIDE} x {WINDOW_SIDE} sub-area ({results[0]['window_cells']:,} cells, "
        f"{results[0]['window_flop'] / 1e6:.2f} MFLOP/cell); fast form over the whole region "
        f"({results[0]['fast_cells']:,} cells, {results[0]['fast_flop'] / 1e6:.3f} MFLOP/cell)",
        "",
        "Share of peak: GFLOP/s over the same process's 4096 x 4096 float32 TensorFlow matmul.",
        "",
        "**Window 3D-CNN**: numba extraction alone, the network alone at each batch size, and the whole "
        "`predict_block` (extraction + network, batch 2048 as `map` runs it).",
        "",
        "| threads | peak GFLOP/s | extraction cells/s | "
        + " | ".join(f"network, batch {b}" for b in WINDOW_BATCHES) + " | whole predict_block |",
        "|---|---|---|" + "---|" * len(WINDOW_BATCHES) + "---|",
    ]
    for r in results:
        cells = " | ".join(f"{v['cells_s']:,.0f} ({v['share']:.0%})" for v in r["network"].values())
        lines.append(f"| {r['threads']} | {r['peak']:.0f} | {r['extract_cells_s']:,.0f} | {cells} | "
                     f"{r['predict_block_cells_s']:,.0f} ({r['whole_block_share']:.0%}) |")
    lines += [
        "",
        "**Fast form** (`predict_region`, whole region, block side as given; cells/s and share of peak):",
        "",
        "| threads | " + " | ".join(f"block {b}" for b in FAST_BLOCKS) + " |",
        "|---|" + "---|" * len(FAST_BLOCKS),
    ]
    for r in results:
        cells = " | ".join(f"{v['cells_s']:,.0f} ({v['share']:.1%})" for v in r["blocks"].values())
        lines.append(f"| {r['threads']} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("region", type=Path, nargs="?", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", action="store_true", help="measure in this process only (JSON on stdout)")
    args = parser.parse_args()
    if args.region is None:
        from benchmarks.bench_lsm import DEFAULT_REGION, ensure_region

        args.region = ensure_region(DEFAULT_REGION)
    if args.one:
        print(json.dumps(measure(args.region, args.repeats)))
        return 0
    settings = [None] + [str(t) for t in range(1, (os.cpu_count() or 1) + 1)]
    results = []
    for threads in settings:
        env = {k: v for k, v in os.environ.items() if k != "SLIDEMAP_TF_THREADS"}
        if threads:
            env["SLIDEMAP_TF_THREADS"] = threads
        out = subprocess.run([sys.executable, __file__, str(args.region), "--repeats", str(args.repeats), "--one"],
                             env=env, capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(f"threads {threads or 'default'}: done", file=sys.stderr)
    text = render(results, args.region, args.repeats)
    (ROOT / "benchmarks" / "results" / "batch_shapes.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
