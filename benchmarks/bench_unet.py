"""U-Net benchmark: training chips/s, detection megapixels/s, FLOPs per tile, share of float32 peak.

Run: ``.venv/bin/python -m benchmarks.bench_unet`` (or ``python benchmarks/bench_unet.py``);
writes ``benchmarks/results/unet.md``. The float32 peak is a large TensorFlow matmul measured in the
same run, so the share is a ratio of two numbers taken under the same machine load.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results" / "unet.md"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import best_of, cpu_model, float32_peak_gflops  # noqa: E402


def main() -> int:
    from slidemap.compute.detection import Detector
    from slidemap.compute.inference import configure_tensorflow, device_summary
    from slidemap.training.losses import focal_loss
    from slidemap.training.unet import build_unet, flops_per_tile

    configure_tensorflow()  # GPU memory growth before any model is built
    import keras

    keras.utils.set_random_seed(0)
    device = device_summary()
    rng = np.random.default_rng(0)
    rows = []
    peak = float32_peak_gflops(2048)
    load = os.getloadavg()[0]
    for width in (8, 16):
        model = build_unet(4, base_width=width)
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=focal_loss(0.5, 2.0))
        n_chips, batch = 64, 8
        x = rng.normal(size=(n_chips, 128, 128, 4)).astype("float32")
        y = (rng.random((n_chips, 128, 128, 1)) > 0.95).astype("float32")
        model.fit(x, y, batch_size=batch, epochs=1, verbose=0)  # trace and warm up
        t_train = best_of(lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0), 2)
        chips_s = n_chips / t_train
        card = {"bands": ["B2", "B3", "B4", "B8"], "normalisation": {"mean": [0.0] * 4, "std": [1.0] * 4},
                "units": "reflectance", "version": "bench"}
        det = Detector(model, card, Path("."), tile=256, overlap=64, batch_size=8)
        img = rng.random((4, 1024, 1024)).astype("float32")
        det.predict(img[:, :300, :300])  # trace
        t_det = best_of(lambda: det.predict(img), 2)
        mpx_s = img.shape[1] * img.shape[2] / t_det / 1e6
        f_tile = flops_per_tile(model, 256)
        f_train_chip = 3 * flops_per_tile(model, 128)  # forward + backward ~ 3x forward
        from slidemap.compute.detection import n_tiles

        tiles = n_tiles(1024, 256, 64) ** 2
        det_gflops = tiles * f_tile / t_det / 1e9
        train_gflops = chips_s * f_train_chip / 1e9
        rows.append((width, chips_s, train_gflops, mpx_s, f_tile / 1e9, det_gflops, tiles))
        print(f"width {width}: train {chips_s:.1f} chips/s, detect {mpx_s:.2f} Mpx/s", file=sys.stderr)
    lines = [
        "# U-Net benchmark",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores ({device['device']}; TensorFlow {device['tensorflow']})",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        "- command: `.venv/bin/python -m benchmarks.bench_unet`",
        f"- load average at start: {load:.1f} (the machine is shared; figures are best-of-2 under that load)",
        f"- float32 peak (TensorFlow 2048x2048 matmul, same run): **{peak:.1f} GFLOP/s**",
        "",
        "Training: 64 random 128x128x4 chips, batch 8, focal loss, Adam; one epoch timed after a warm-up epoch.",
        "Detection: a 1024x1024x4 image, 256-px tiles with 64-px blended overlap (the default), batch 8.",
        "FLOPs count 2 per multiply-add from the layer shapes; training FLOPs per chip are taken as 3x forward.",
        "",
        "| base width | train chips/s | train GFLOP/s | share of peak | detect Mpx/s | GFLOP per 256-px tile |"
        " detect GFLOP/s | share of peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for width, chips_s, train_gf, mpx_s, f_tile, det_gf, _tiles in rows:
        lines.append(
            f"| {width} | {chips_s:.1f} | {train_gf:.1f} | {train_gf / peak:.1%} | {mpx_s:.2f} | {f_tile:.2f} | "
            f"{det_gf:.1f} | {det_gf / peak:.1%} |"
        )
    lines += [
        "",
        f"Detection does {rows[0][6]} tiles for the 1024x1024 image: the overlap costs "
        f"{rows[0][6] * 256 * 256 / 1024**2:.2f}x the pixels of a single pass.",
        "No GPU was lent to this task, so there are no GPU figures."
        if device["device"] == "CPU" else f"GPU run: {device['gpus']}.",
        "",
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print(RESULTS.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
