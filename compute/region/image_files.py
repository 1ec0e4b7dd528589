"""Reading image chips and their masks (PNG or GeoTIFF), for training on chip folders and for `detect`.

Lives in ``compute`` because detection reads chip folders too (and ``compute`` never imports
``training``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.compute.region.layout import RegionLayout
from slidemap.errors import InputError

IGNORE = 255  # a pixel that neither trains nor scores: the one label code every segmentation module reads
IMAGE_EXTS = (".png", ".tif", ".tiff")
MASK_ENCODINGS = ("auto", "gt127", "binary", "sparse")


def read_image_file(path: Path) -> tuple[np.ndarray, list[str] | None, dict[str, Any]]:
    """Read one chip image as float32 ``[H, W, C]``; PNG alpha that is constant is dropped."""
    if path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.shape[-1] in (2, 4) and np.all(arr[..., -1] == arr[..., -1].flat[0]):
            arr = arr[..., :-1]  # constant alpha carries nothing
        names = ["R", "G", "B"] if arr.shape[-1] == 3 else None
        return arr.astype(np.float32), names, {"georef": None}
    import rasterio

    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{path}: not a readable image ({exc})") from exc
    with src:
        arr = src.read().astype(np.float32)
        if src.nodata is not None and not np.isnan(src.nodata):
            arr[arr == src.nodata] = np.nan
        names = [d for d in src.descriptions] if all(src.descriptions) else None
        georef = None
        if src.crs is not None and not src.transform.is_identity:
            georef = {"crs": src.crs.to_string(), "x": src.transform.c, "y": src.transform.f,
                      "res": abs(src.transform.a), "width": src.width, "height": src.height}
    return np.moveaxis(arr, 0, -1), names, {"georef": georef}


def read_mask_file(path: Path, encoding: str = "auto") -> np.ndarray:
    """Read a mask as uint8 0/1/255 following ``encoding``.

    ``gt127``: first channel > 127 is landslide (8-bit masks, RGB(A) masks);
    ``binary``: any non-zero value is landslide; ``sparse``: 0 unlabelled (ignored),
    1 non-landslide, 2 landslide (ArcGIS classified tiles); ``auto`` picks ``binary`` for
    0/1 masks (any channel count) and ``gt127`` for other multi-channel or 0/255 masks.
    """
    if encoding not in MASK_ENCODINGS:
        raise InputError(f"mask encoding {encoding!r} unknown; use one of {', '.join(MASK_ENCODINGS)}")
    if path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im)
    else:
        import rasterio

        with rasterio.open(path) as src:
            arr = np.moveaxis(src.read(), 0, -1)
    multi = arr.ndim == 3 and arr.shape[-1] > 1
    band = arr[..., 0] if arr.ndim == 3 else arr
    if encoding == "auto":
        values = np.unique(band)
        if set(values.tolist()) <= {0, 1}:  # before the channel count: an RGB 0/1 mask is binary too
            encoding = "binary"
        elif multi or set(values.tolist()) <= {0, 255}:
            encoding = "gt127"
        else:
            raise InputError(
                f"{path}: mask values {values[:8].tolist()} are ambiguous; pass --mask-encoding "
                "gt127, binary or sparse (0 unlabelled, 1 background, 2 landslide)"
            )
    if encoding == "gt127":
        return (band > 127).astype(np.uint8)
    if encoding == "binary":
        return (band > 0).astype(np.uint8)
    out = np.full(band.shape, IGNORE, dtype=np.uint8)
    out[band == 1] = 0
    out[band == 2] = 1
    return out


def region_is_synthetic(region_dir: str | Path) -> bool:
    """Whether a region is SYNTHETIC: its manifest says so, else what `prepare` wrote."""
    region_dir = Path(region_dir)
    try:
        from slidemap.compute.region.manifest import load_region

        return bool(load_region(region_dir, check_files=False).synthetic)
    except Exception:  # no readable manifest: fall back to what prepare wrote
        factors = RegionLayout.of(region_dir).factors_json
        if factors.is_file():
            return bool(json.loads(factors.read_text()).get("synthetic", False))
        return False
