"""A tiny SYNTHETIC region build folder for the detector tests: 4-band imagery and a landslide mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine


def tiny_region(root: Path, size: int = 192, seed: int = 0, n_slides: int = 14) -> Path:
    """A build folder with 4-band imagery and a landslide mask: bare, bright, low-NIR scars."""
    rng = np.random.default_rng(seed)
    build = root / "build"
    build.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), np.uint8)
    placed = 0
    while placed < n_slides:
        cy, cx, r = rng.integers(8, size - 8), rng.integers(8, size - 8), rng.integers(3, 6)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (r + 2) ** 2
        if mask[disc].any():  # keep landslides apart: each is its own area
            continue
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        placed += 1
    base = np.stack([0.04, 0.06, 0.05, 0.30])[:, None, None] + rng.normal(0, 0.01, (4, size, size))
    scar = np.array([0.12, 0.14, 0.16, 0.15])[:, None, None]
    img = np.where(mask[None] == 1, scar + rng.normal(0, 0.01, (4, size, size)), base).astype("float32")
    img[:, :6, :6] = np.nan
    transform = Affine(10, 0, 500000, 0, -10, 3000000)
    prof = dict(driver="GTiff", width=size, height=size, crs="EPSG:32649", transform=transform)
    with rasterio.open(build / "imagery.tif", "w", count=4, dtype="float32", nodata=np.nan, **prof) as dst:
        dst.write(img)
        for i, b in enumerate(["B2", "B3", "B4", "B8"], start=1):
            dst.set_band_description(i, b)
    with rasterio.open(build / "labels_imagery.tif", "w", count=1, dtype="uint8", **prof) as dst:
        dst.write(mask[None])
    (build / "factors.json").write_text(json.dumps({"synthetic": True}))
    return root
