"""Score a detector on the Chittagong Sentinel-2 tiles, on labelled pixels only.

    .venv/bin/python reports/real/score_chittagong.py MODEL_DIR NAME [--band-order B4,B3,B2,B8] [--scale 10000]

Runs ``slidemap detect`` (the library call) on every tile of ../shared/data/s2_landslide_chittagong/images,
keeps the pixels whose label is 1 (non-landslide) or 2 (landslide), 0 (unlabelled) is ignored, and pools
them over all tiles. The threshold is the model card's (chosen on the model's own validation data);
nothing is tuned on this data. Writes reports/real/chittagong_<NAME>.json and .md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "s2_landslide_chittagong"


def main(argv: list[str] | None = None) -> int:
    from slidemap.compute.maps.detection import detect_file, load_detector
    from slidemap.compute.region.raster_io import write_bytes_atomic, write_json_atomic
    from slidemap.training.seg_metrics import segmentation_metrics

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("name")
    ap.add_argument("--band-order", default="B4,B3,B2,B8")
    ap.add_argument("--scale", type=float, default=10000.0)
    args = ap.parse_args(argv)
    det = load_detector(args.model)
    band_order = args.band_order.split(",")
    if det.units == "display8":  # an RGB model trained on 8-bit chips: name the file's bands R,G,B,NIR
        band_order = ["R", "G", "B", "NIR"]
    ys, ps = [], []
    tiles = sorted((DATA / "images").glob("*.tif"))
    with tempfile.TemporaryDirectory() as tmp:
        for tile in tiles:
            out = Path(tmp) / tile.name
            detect_file(args.model, tile, out, band_order=band_order, scale=args.scale, progress=False, detector=det)
            with rasterio.open(out) as r:
                prob = r.read(1)
            with rasterio.open(DATA / "labels" / tile.name) as r:
                lab = r.read(1)
            y = np.full(lab.shape, 255, np.uint8)
            y[lab == 1] = 0
            y[lab == 2] = 1
            ys.append(y.ravel())
            ps.append(prob.ravel())
    y, p = np.concatenate(ys), np.concatenate(ps)
    m = segmentation_metrics(y, p, det.threshold)
    labelled = int(m["pixels"])
    prevalence = m["landslide_pixels"] / labelled if labelled else float("nan")
    m["constant_landslide_f1"] = 2 * prevalence / (1 + prevalence)
    valid = (y != 255) & np.isfinite(p)
    mean_p = {"landslide": float(np.mean(p[valid & (y == 1)])), "non_landslide": float(np.mean(p[valid & (y == 0)]))}
    report = {
        "kind": "unet-real-eval",
        "synthetic": bool(det.card.get("synthetic")),
        "data": {"path": str(DATA), "tiles": len(tiles), "band_order": band_order, "scale": args.scale,
                 "labels": "sparse: 0 unlabelled (ignored), 1 non-landslide, 2 landslide"},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_versions": {args.name: det.version},
        "model_trained_on": det.card.get("training_data", {}).get("source", {}),
        "metrics": m,
        "mean_probability": mean_p,
        "caveats": [
            "labels are sparse polygons (about 0.3% of pixels), not full masks; only labelled pixels are scored",
            "landslide-labelled pixels do not look like fresh scars (mean NIR as high as background, NDVI not lower): "
            "old or revegetated landslides, or imagery older than the events; treat as weak labels",
            "tiles overlap by 50%, so many labelled pixels are counted twice",
            "the threshold is the model card's, chosen on the model's own validation data; nothing was tuned here",
        ],
    }
    name = f"chittagong_{args.name}"
    write_json_atomic(ROOT / "reports" / "real" / f"{name}.json", report)
    synth = " (model trained on SYNTHETIC data)" if report["synthetic"] else ""
    md = [
        f"# Chittagong Sentinel-2 tiles: {args.name}{synth}",
        "",
        f"Model `{args.model}` (version {det.version}); {len(tiles)} tiles; band order {','.join(band_order)}; "
        f"scaling: {'per-image stretch to 8-bit' if det.units == 'display8' else f'reflectance = DN / {args.scale:g}'}.",
        "",
        "**Weak labels.** " + "; ".join(report["caveats"]) + ".",
        "",
        "| labelled px | landslide share | accuracy | precision | recall | F1 | mIoU | PR-AUC | threshold | F1 of 'all landslide' |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| {labelled} | {prevalence:.3f} | {m['accuracy']:.3f} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | "
        f"{m['miou']:.3f} | {m['pr_auc']:.3f} | {m['threshold']:.3f} | {m['constant_landslide_f1']:.3f} |",
        "",
        f"Mean probability on landslide-labelled pixels {mean_p['landslide']:.3f}, on non-landslide-labelled pixels "
        f"{mean_p['non_landslide']:.3f}.",
        "",
    ]
    write_bytes_atomic(ROOT / "reports" / "real" / f"{name}.md", "\n".join(md).encode())
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
