"""Atomic writes: JSON, bytes and Cloud-Optimised GeoTIFFs.

Everything slidemap writes goes to a temporary file beside the target and is renamed into
place, so a reader (or a crash) never sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.shutil import copy as rio_copy

from slidemap.compute.region.grid import Grid


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=suffix or target.suffix or ".tmp", dir=target.parent
    )
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; published files are world-readable like any other
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(target: str | Path, data: Any) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_cog(
    target: str | Path,
    data: np.ndarray,
    grid: Grid,
    band_names: Sequence[str] | None = None,
    nodata: float | None = None,
    tags: dict[str, str] | None = None,
    overview_resampling: str = "average",
    colormap: dict[int, tuple[int, ...]] | None = None,
    layout: CogLayout | None = None,
) -> None:
    """Write ``data`` ([bands, H, W] or [H, W]) as a Cloud-Optimised GeoTIFF with overviews;
    ``colormap`` (``{value: rgb(a)}``, uint8 data) becomes its colour table."""
    if data.ndim == 2:
        data = data[np.newaxis]
    if data.shape[1:] != grid.shape:
        raise ValueError(f"array shape {data.shape[1:]} does not match grid {grid.shape}")
    with cog_writer(target, grid, data.shape[0], data.dtype.name, band_names, nodata, tags, overview_resampling,
                    layout, colormap) as dst:
        dst.write(data)


@dataclass(frozen=True)
class CogLayout:
    """Internal tiling and codec of a COG. The default suits display (DEFLATE with a predictor: small
    files); :data:`FAST_READ` suits rasters the block engine reads window by window."""

    blocksize: int = 256
    compress: str = "DEFLATE"
    predictor: bool = True  # floating-point / horizontal predictor
    level: int | None = None


# Many-band inputs read block by block with a halo (the factor stack): ZSTD at level 1 without a
# predictor decodes much faster than DEFLATE + predictor at about the same size (14 bands, 400 x 400:
# 8.07 vs 8.03 MB), and 128-px tiles cut what a halo drags in (a 256 + 2 x 11 cell window decodes
# 3 x 3 tiles of 256 = 768 x 768 cells, but 4 x 4 of 128 = 512 x 512). Together: block reads about a
# third of the time (benchmarks/bench_blocks.py).
FAST_READ = CogLayout(blocksize=128, compress="ZSTD", predictor=False, level=1)


@contextlib.contextmanager
def cog_writer(
    target: str | Path,
    grid: Grid,
    count: int,
    dtype: str,
    band_names: Sequence[str] | None = None,
    nodata: float | None = None,
    tags: dict[str, str] | None = None,
    overview_resampling: str = "average",
    layout: CogLayout | None = None,
    colormap: dict[int, tuple[int, ...]] | None = None,
) -> Iterator[rasterio.io.DatasetWriter]:
    """Yield a tiled GeoTIFF writer on ``grid``; on exit build overviews, add ``colormap`` as band 1's
    colour table, and publish a COG.

    Lets large rasters be written window by window instead of held in memory.
    """
    layout = layout or CogLayout()
    codec: dict[str, Any] = {"compress": layout.compress, "blocksize": layout.blocksize,
                             "predictor": "YES" if layout.predictor and dtype.startswith("float") else "NO"}
    if layout.level is not None:
        codec["level"] = layout.level
    profile = grid.profile(count=count, dtype=dtype, nodata=nodata)
    profile.update(tiled=True, blockxsize=256, blockysize=256, BIGTIFF="IF_SAFER")
    profile.pop("driver")
    with atomic_path(target) as tmp:
        work = tmp.with_suffix(".work.tif")
        try:
            with rasterio.open(work, "w", driver="GTiff", **profile) as dst:
                yield dst
                if band_names:
                    for i, name in enumerate(band_names, start=1):
                        dst.set_band_description(i, name)
                if tags:
                    dst.update_tags(**tags)
                factors = [f for f in (2, 4, 8, 16, 32, 64) if min(grid.shape) // f >= 16]
                if factors:
                    dst.build_overviews(factors, Resampling[overview_resampling])
            if colormap:
                # after the overviews: GDAL computes each level from the one above, whose band is a
                # palette index without the table, and warns on every level; the levels are class
                # codes either way (mode), and readers take the table from the full-resolution band
                with rasterio.open(work, "r+") as dst:
                    dst.write_colormap(1, colormap)
            rio_copy(
                work,
                tmp,
                driver="COG",
                overview_resampling=overview_resampling.upper(),
                BIGTIFF="IF_SAFER",
                **codec,
            )
        finally:
            if work.exists():
                work.unlink()
