"""The one grid type: CRS, north-up transform and shape, passed around instead of loose tuples.

Every raster slidemap makes lies on the analysis grid or the imagery grid of a region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.warp import reproject, transform_bounds


@dataclass(frozen=True)
class Grid:
    crs: CRS
    transform: Affine
    width: int
    height: int

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_raster(cls, path: str | Path) -> Grid:
        with rasterio.open(path) as src:
            return cls(src.crs, src.transform, src.width, src.height)

    @classmethod
    def from_bounds(
        cls, crs: CRS | str, bounds: tuple[float, float, float, float], resolution: float
    ) -> Grid:
        """A north-up grid of square cells covering ``bounds`` (snapped outwards to whole cells)."""
        left, bottom, right, top = bounds
        width = max(1, math.ceil((right - left) / resolution - 1e-9))
        height = max(1, math.ceil((top - bottom) / resolution - 1e-9))
        transform = Affine(resolution, 0.0, left, 0.0, -resolution, top)
        return cls(CRS.from_user_input(crs), transform, width, height)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grid:
        return cls(
            CRS.from_user_input(data["crs"]),
            Affine(*data["transform"][:6]),
            int(data["width"]),
            int(data["height"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "crs": self.crs.to_string(),
            "transform": [float(v) for v in tuple(self.transform)[:6]],
            "width": self.width,
            "height": self.height,
            "resolution": list(self.res),
            "bounds": list(self.bounds),
            "shape": list(self.shape),
        }

    # ---- geometry -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (self.height, self.width)

    @property
    def res(self) -> tuple[float, float]:
        return (abs(self.transform.a), abs(self.transform.e))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        left, top = self.transform.c, self.transform.f
        right = left + self.transform.a * self.width
        bottom = top + self.transform.e * self.height
        return (left, bottom, right, top)

    def bounds_in(self, crs: CRS | str) -> tuple[float, float, float, float]:
        return transform_bounds(self.crs, CRS.from_user_input(crs), *self.bounds, densify_pts=21)

    def window_grid(self, row_off: int, col_off: int, height: int, width: int) -> Grid:
        """The sub-grid of a window (may extend past the grid: used for halos)."""
        transform = self.transform @ Affine.translation(col_off, row_off)
        return Grid(self.crs, transform, width, height)

    def xy(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cell-centre coordinates of (rows, cols)."""
        rows = np.asarray(rows, dtype=np.float64) + 0.5
        cols = np.asarray(cols, dtype=np.float64) + 0.5
        t = self.transform
        return t.a * cols + t.b * rows + t.c, t.d * cols + t.e * rows + t.f

    def rowcol(self, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer (row, col) of the cells containing points; may be outside the grid."""
        inv = ~self.transform
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        cols = inv.a * xs + inv.b * ys + inv.c
        rows = inv.d * xs + inv.e * ys + inv.f
        return np.floor(rows).astype(np.int64), np.floor(cols).astype(np.int64)

    def contains(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows)
        cols = np.asarray(cols)
        return (rows >= 0) & (rows < self.height) & (cols >= 0) & (cols < self.width)

    def profile(self, count: int = 1, dtype: str = "float32", nodata: float | None = None) -> dict:
        """A rasterio profile for a tiled, compressed GeoTIFF on this grid."""
        profile = {
            "driver": "GTiff",
            "crs": self.crs,
            "transform": self.transform,
            "width": self.width,
            "height": self.height,
            "count": count,
            "dtype": dtype,
            "compress": "deflate",
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
        }
        if self.width < 256 or self.height < 256:
            profile["tiled"] = False
            profile.pop("blockxsize")
            profile.pop("blockysize")
        if nodata is not None:
            profile["nodata"] = nodata
        return profile

    # ---- resampling ---------------------------------------------------------------------
    def reproject_band(
        self,
        src_path: str | Path,
        band: int = 1,
        resampling: Resampling = Resampling.bilinear,
        dtype: str = "float32",
        src_nodata: float | None = None,
        dst_nodata: float = np.nan,
    ) -> np.ndarray:
        """Read one band of a raster resampled onto this grid; cells outside it get ``dst_nodata``."""
        out = np.full(self.shape, dst_nodata, dtype=dtype)
        with rasterio.open(src_path) as src:
            nodata = src_nodata if src_nodata is not None else src.nodata
            reproject(
                source=rasterio.band(src, band),
                destination=out,
                src_nodata=nodata,
                dst_transform=self.transform,
                dst_crs=self.crs,
                dst_nodata=dst_nodata,
                resampling=resampling,
            )
        return out

    def reproject_array(
        self,
        array: np.ndarray,
        src_grid: Grid,
        resampling: Resampling = Resampling.bilinear,
        src_nodata: float | None = np.nan,
        dst_nodata: float = np.nan,
    ) -> np.ndarray:
        out = np.full(self.shape, dst_nodata, dtype=array.dtype)
        reproject(
            source=array,
            destination=out,
            src_transform=src_grid.transform,
            src_crs=src_grid.crs,
            src_nodata=src_nodata,
            dst_transform=self.transform,
            dst_crs=self.crs,
            dst_nodata=dst_nodata,
            resampling=resampling,
        )
        return out
