"""U-Net benchmark: the training loop's cost per chip (wall and CPU seconds), detection megapixels/s,
FLOPs per tile, share of float32 peak, and what the ``demo`` preset costs.

Run: ``.venv/bin/python -m benchmarks.bench_unet`` (or ``python benchmarks/bench_unet.py``); add
``--region PATH`` to also time a whole ``slidemap train unet PATH --preset demo`` (a 20 km demo region:
the README's main job). Writes ``benchmarks/results/unet.md``. The float32 peak is a large TensorFlow
matmul measured in the same run, so the share is a ratio of two numbers taken under the same load;
CPU seconds are given beside wall seconds because the machine is shared.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results" / "unet.md"
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import best_of, cpu_model, float32_peak_gflops  # noqa: E402


class _RandomChips:
    """A sampler of random chips (the training loop's input, without a region)."""

    def __init__(self, bands: int, chip: int) -> None:
        self.bands, self.chip = bands, chip

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.normal(size=(n, self.chip, self.chip, self.bands)).astype("float32")
        return x, (rng.random((n, self.chip, self.chip)) > 0.97).astype("uint8")

    def balance_report(self) -> dict:
        return {}


def time_demo_run(region: Path) -> dict:
    """Wall and CPU seconds of ``slidemap train unet REGION --preset demo`` in a child process."""
    cmd = [sys.executable, "-m", "slidemap.cli", "train", "unet", str(region), "--preset", "demo", "--quiet"]
    t0 = time.perf_counter()
    before = os.times()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    out = {"command": " ".join(["slidemap", *cmd[3:]]), "wall_s": time.perf_counter() - t0, "cpu_s": cpu,
           "exit": proc.returncode, "load": os.getloadavg()[0], "summary": proc.stdout.strip().splitlines()[-3:]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_unet")
    parser.add_argument("--region", type=Path, help="also time `train unet REGION --preset demo`")
    args = parser.parse_args(argv)

    from slidemap.compute.maps.detection import Detector, n_tiles
    from slidemap.compute.models.runtime import configure_tensorflow, device_summary
    from slidemap.training.unet import flops_per_tile
    from slidemap.training.unet_fit import FitConfig, fit_network
    from slidemap.training.unet_train import PRESETS

    configure_tensorflow()  # GPU memory growth before any model is built
    import keras

    keras.utils.set_random_seed(0)
    device = device_summary()
    rng = np.random.default_rng(0)
    rows = []
    peak = float32_peak_gflops(2048)
    load = os.getloadavg()[0]
    demo = PRESETS["demo"]
    for width in (8, 16):
        # the real loop: sampler -> augmentation -> train_on_batch, 8 chips a step; first epoch traces
        cfg = FitConfig(base_width=width, batch_size=8, epoch_chips=64, max_epochs=1, min_epochs=1, patience=0,
                        warmup_epochs=0)
        fit_network(_RandomChips(4, 128), None, None, 4, cfg, "focal", 0.5, 2.0, epochs=1)  # trace, warm up
        timed = fit_network(_RandomChips(4, 128), None, None, 4, cfg, "focal", 0.5, 2.0, epochs=2)
        # per chip, without the (once per model) tracing: the second of two epochs
        t0, c0 = time.perf_counter(), time.process_time()
        model = timed.model
        sampler = _RandomChips(4, 128)
        for _ in range(8):
            x, y = sampler.batch(rng, 8)
            model.train_on_batch(x, y.astype("float32")[..., None])
        wall_chip = (time.perf_counter() - t0) / 64
        cpu_chip = (time.process_time() - c0) / 64
        card = {"bands": ["B2", "B3", "B4", "B8"], "version": "bench",
                "normalisation": {"method": "robust", "scope": "scene",
                                  "reference": {"centre": [0.0] * 4, "scale": [1.0] * 4}}}
        det = Detector(model, card, Path("."), tile=256, overlap=64, batch_size=8)
        img = rng.random((4, 1024, 1024)).astype("float32")
        det.predict(img[:, :300, :300])  # trace
        c1 = time.process_time()
        t_det = best_of(lambda d=det: d.predict(img), 2)
        cpu_det = (time.process_time() - c1) / 2
        mpx_s = img.shape[1] * img.shape[2] / t_det / 1e6
        f_tile = flops_per_tile(model, 256)
        f_train_chip = 3 * flops_per_tile(model, 128)  # forward + backward ~ 3x forward
        tiles = n_tiles(1024, 256, 64) ** 2
        det_gflops = tiles * f_tile / t_det / 1e9
        train_gflops = f_train_chip / wall_chip / 1e9
        rows.append((width, model.count_params(), 1 / wall_chip, cpu_chip, train_gflops, mpx_s, cpu_det, f_tile / 1e9,
                     det_gflops, tiles))
        print(f"width {width}: train {1 / wall_chip:.1f} chips/s ({cpu_chip:.3f} CPU s/chip), detect {mpx_s:.2f} Mpx/s",
              file=sys.stderr)
    w16 = next(r for r in rows if r[0] == demo.base_width)
    demo_chips = demo.epochs * 64
    lines = [
        "# U-Net benchmark",
        "",
        f"- machine: {cpu_model()}, {os.cpu_count()} cores ({device['device']}; TensorFlow {device['tensorflow']})",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        "- command: `.venv/bin/python -m benchmarks.bench_unet" + (f" --region {args.region}`" if args.region else "`"),
        f"- load average at start: {load:.1f} (the machine is shared: CPU seconds are the steadier figure)",
        f"- float32 peak (TensorFlow 2048x2048 matmul, same run): **{peak:.1f} GFLOP/s**",
        "",
        "Training: the real loop (`slidemap.training.unet_fit`: sampler, flips/turns and brightness/contrast/gamma "
        "jitter, `train_on_batch`), random 128x128x4 chips, batch 8, focal loss, Adam, timed after tracing. "
        "Detection: a 1024x1024x4 image, 256-px tiles with 64-px blended overlap (the default), batch 8. "
        "FLOPs count 2 per multiply-add from the layer shapes; training FLOPs per chip are taken as 3x forward.",
        "",
        "| base width | parameters | train chips/s | CPU s per chip | train GFLOP/s | share of peak | detect Mpx/s "
        "| detect CPU s per Mpx | GFLOP per 256-px tile | detect GFLOP/s | share of peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for width, params, chips_s, cpu_chip, train_gf, mpx_s, cpu_det, f_tile, det_gf, _tiles in rows:
        lines.append(
            f"| {width} | {params:,} | {chips_s:.1f} | {cpu_chip:.3f} | {train_gf:.1f} | {train_gf / peak:.1%} | "
            f"{mpx_s:.2f} | {cpu_det / (1024 * 1024 / 1e6):.2f} | {f_tile:.2f} | {det_gf:.1f} | {det_gf / peak:.1%} |"
        )
    lines += [
        "",
        f"Detection does {rows[0][9]} tiles for the 1024x1024 image: the overlap costs "
        f"{rows[0][9] * 256 * 256 / 1024**2:.2f}x the pixels of a single pass.",
        "",
        f"`--preset demo` trains width {demo.base_width} for at most {demo.epochs} epochs of 64 chips on a region "
        f"({demo_chips} chips; early stopping may end it sooner): about {demo_chips * w16[3]:.0f} CPU s of "
        "training steps at the rate above, plus validation each epoch and the final scoring.",
    ]
    if args.region:
        run = time_demo_run(args.region)
        lines += ["", f"Whole run, `{run['command']}`: **{run['wall_s']:.0f} s wall, {run['cpu_s']:.0f} CPU s** "
                  f"(exit {run['exit']}; load average {run['load']:.1f} at the end).", "",
                  "```", *run["summary"], "```"]
        print(json.dumps(run), file=sys.stderr)
    lines += [
        "",
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
