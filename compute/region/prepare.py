"""`slidemap prepare`: build a region's analysis stack into ``REGION/build``.

Each step's output is keyed by a hash of what it is made from (input file contents, the
grid, options, and ``BUILD_VERSION``); a re-run reuses every step whose key is unchanged and
rebuilds the ones downstream of a changed input. Steps write atomically, so an interrupted
build never leaves a half file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.features import rasterize
from rasterio.vrt import WarpedVRT
from rasterio.warp import calculate_default_transform
from scipy import ndimage
from tqdm import tqdm

from slidemap.compute.region.layout import RegionLayout
from slidemap.compute import provenance
from slidemap.compute.terrain import derivatives as terrain
from slidemap.compute.region.inventory_layers import read_inventory, write_inventory
from slidemap.compute.terrain.factors import (
    CATEGORICAL_FACTORS,
    FACTOR_ORDER,
    UNITS,
    FactorSpec,
)
from slidemap.compute.region.grid import Grid
from slidemap.compute.region.raster_io import FAST_READ, atomic_path, cog_writer, sha256_file, write_cog, write_json_atomic
from slidemap.compute.region.manifest import Region, load_region, parse_label, read_classes
from slidemap.errors import RegionError

log = logging.getLogger(__name__)

BUILD_VERSION = "2"  # bump when a step's algorithm changes: every key changes with it
STATE_JSON = "state.json"
IMAGERY_STRIP_ROWS = 1024
LABEL_NONE, LABEL_LANDSLIDE, LABEL_NEGATIVE, LABEL_NODATA = 0, 1, 2, 255
DEFAULT_LINE_BUFFER_M = {"roads": 10.0, "rivers": 15.0}
SYNTHETIC_TAGS = provenance.GEOTIFF_TAGS  # GeoTIFF tags of every derivative of a SYNTHETIC region


@dataclass
class PrepareResult:
    build_dir: Path
    grid: Grid
    factor_names: list[str]
    built: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    seconds: float = 0.0
    inventory: dict[str, Any] = field(default_factory=dict)  # features read, kept and dropped per input


def _key(*parts: Any) -> str:
    digest = hashlib.sha256()
    digest.update(BUILD_VERSION.encode())
    for part in parts:
        digest.update(json.dumps(part, sort_keys=True, default=str).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:20]


class _State:
    """``build/state.json``: the key each step was last built with."""

    def __init__(self, build_dir: Path):
        self.path = build_dir / STATE_JSON
        self.data: dict[str, Any] = {"version": BUILD_VERSION, "steps": {}}
        if self.path.is_file():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                log.warning("%s unreadable; rebuilding everything", self.path)
        self.data.setdefault("steps", {})

    def fresh(self, step: str, key: str, outputs: list[Path]) -> bool:
        return self.data["steps"].get(step, {}).get("key") == key and all(p.exists() for p in outputs)

    def record(self, step: str, key: str, **extra: Any) -> None:
        self.data["steps"][step] = {"key": key, **extra}
        write_json_atomic(self.path, self.data)

    def extra(self, step: str) -> dict[str, Any]:
        return self.data["steps"].get(step, {})


class _Files:
    """Content hashes of input files, computed once per run."""

    def __init__(self) -> None:
        self._cache: dict[Path, str] = {}

    def sha(self, path: Path) -> str:
        if path not in self._cache:
            self._cache[path] = sha256_file(path)
        return self._cache[path]


# ---- grids --------------------------------------------------------------------------------


def analysis_grid(region: Region) -> tuple[Grid, Grid]:
    """(DEM native grid in the analysis CRS, analysis grid)."""
    dem_path = region.path(region.inputs.dem.path)
    with rasterio.open(dem_path) as src:
        if src.crs == region.analysis_crs and _north_up(src.transform):
            native = Grid(src.crs, src.transform, src.width, src.height)
        else:
            transform, width, height = calculate_default_transform(
                src.crs, region.analysis_crs, src.width, src.height, *src.bounds
            )
            native = Grid(region.analysis_crs, transform, width, height)
    resolution = region.manifest.region.resolution
    if resolution == "dem":
        return native, native
    return native, Grid.from_bounds(region.analysis_crs, native.bounds, float(resolution))


def imagery_grid(region: Region, analysis: Grid, relative: str | None = None) -> Grid:
    """The imagery's own resolution in the analysis CRS, cropped to the analysis extent
    (``relative``: another scene's path, e.g. the pre-event one, instead of ``inputs.imagery``)."""
    path = region.path(relative or region.inputs.imagery.path)
    with rasterio.open(path) as src:
        if src.crs == region.analysis_crs and _north_up(src.transform):
            res = abs(src.transform.a)
            origin_x, origin_y = src.transform.c, src.transform.f
        else:
            transform, _, _ = calculate_default_transform(
                src.crs, region.analysis_crs, src.width, src.height, *src.bounds
            )
            # Round to a clean size (9.37 m -> 9.4 m): the U-Net cares about scale, not decimals.
            res = float(f"{abs(transform.a):.2g}") if abs(transform.a) < 100 else round(abs(transform.a))
            origin_x, origin_y = analysis.bounds[0], analysis.bounds[3]
    left, bottom, right, top = analysis.bounds
    # Snap the analysis extent outwards onto the imagery's pixel lattice.
    left = origin_x + math.floor((left - origin_x) / res) * res
    top = origin_y - math.floor((origin_y - top) / res) * res
    width = math.ceil((right - left) / res - 1e-9)
    height = math.ceil((top - bottom) / res - 1e-9)
    return Grid(region.analysis_crs, rasterio.Affine(res, 0, left, 0, -res, top), width, height)


def _resampling_for(src_res: float, dst_res: float, categorical: bool = False) -> Resampling:
    coarser = dst_res > src_res * 1.01
    if categorical:
        return Resampling.mode if coarser else Resampling.nearest
    return Resampling.average if coarser else Resampling.bilinear


# ---- writing helpers ---------------------------------------------------------------------------


def _write_float(path: Path, array: np.ndarray, grid: Grid, name: str, synthetic: bool) -> None:
    tags = dict(SYNTHETIC_TAGS) if synthetic else {}
    write_cog(path, array.astype(np.float32, copy=False), grid, band_names=[name], nodata=float("nan"), tags=tags)


def _read_float(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1).astype(np.float32)


# ---- steps ---------------------------------------------------------------------------------


class _Builder:
    def __init__(self, region: Region, show_progress: bool):
        self.region = region
        self.layout = RegionLayout(region.root)
        self.build = region.build_dir
        self.build.mkdir(parents=True, exist_ok=True)
        self.state = _State(self.build)
        self.files = _Files()
        self.synthetic = region.synthetic
        self.dem_grid, self.grid = analysis_grid(region)
        self.img_grid = imagery_grid(region, self.grid) if region.inputs.imagery else None
        pre = region.inputs.imagery_pre
        # NDVI lives on the imagery grid; with only a pre-event scene, on that scene's grid
        self.ndvi_grid = self.img_grid or (imagery_grid(region, self.grid, pre.path) if pre else None)
        self.result = PrepareResult(self.build, self.grid, [])
        self.show_progress = show_progress
        self.part_keys: dict[str, str] = {}

    def source_of(self, name: str) -> str:
        if name == "ndvi" and self.region.inputs.imagery_pre is not None:
            return "imagery_pre"
        return _source_of(name)

    def imagery_factors_from(self) -> str | None:
        """Where NDVI came from, in words the reports repeat (None: no imagery-derived factor)."""
        if self.region.inputs.imagery_pre is not None:
            return IMAGERY_FROM_PRE
        return IMAGERY_FROM_POST if self.region.inputs.imagery is not None else None

    def gpkg_metadata(self) -> dict[str, Any]:
        """GeoPackage layer metadata marking SYNTHETIC derivatives (as the demo's own files are)."""
        return provenance.gpkg_metadata(self.synthetic)

    def sha(self, relative: str) -> str:
        return self.files.sha(self.region.path(relative))

    def step(self, name: str, key: str, outputs: list[Path], fn: Callable[[], dict[str, Any] | None]) -> dict[str, Any]:
        if self.state.fresh(name, key, outputs):
            self.result.reused.append(name)
            return self.state.extra(name)
        log.info("building %s", name)
        extra = fn() or {}
        self.state.record(name, key, **extra)
        self.result.built.append(name)
        return self.state.extra(name)

    def part(self, name: str) -> Path:
        return self.layout.part(name)

    def native(self, name: str) -> Path:
        return self.layout.native(name)

    # terrain ---------------------------------------------------------------------------
    def terrain(self) -> None:
        spec = self.region.inputs.dem
        key = _key("terrain", self.sha(spec.path), spec.band, self.dem_grid.to_dict(), self.grid.to_dict())
        names = list(terrain.TERRAIN_FACTORS)
        outputs = [self.part(n) for n in names] + [self.native(n) for n in names] + [self.layout.hillshade_tif]

        def build() -> dict[str, Any]:
            dem_path = self.region.path(spec.path)
            dem = self.dem_grid.reproject_band(dem_path, band=spec.band, resampling=Resampling.bilinear)
            if not np.isfinite(dem).any():
                raise RegionError(f"{dem_path}: inputs.dem has no valid cells (all nodata); check the file and its nodata value")
            factors = terrain.terrain_factors(dem, self.dem_grid.res)
            # the base map of a region without imagery: shaded relief at the DEM's own resolution
            write_cog(self.layout.hillshade_tif, terrain.hillshade(dem, self.dem_grid.res), self.dem_grid,
                      band_names=["hillshade"], nodata=0, overview_resampling="average",
                      tags=dict(SYNTHETIC_TAGS) if self.synthetic else {})
            same = self.dem_grid == self.grid
            for n in names:
                _write_float(self.native(n), factors[n], self.dem_grid, n, self.synthetic)
                if same:
                    on_grid = factors[n]
                elif n == "aspect":
                    on_grid = self._aspect_onto_grid(factors[n])
                else:
                    resampling = _resampling_for(self.dem_grid.res[0], self.grid.res[0])
                    on_grid = self.grid.reproject_array(factors[n].astype(np.float32), self.dem_grid, resampling)
                _write_float(self.part(n), on_grid, self.grid, n, self.synthetic)
            return {}

        self.step("terrain", key, outputs, build)
        for n in names:
            self.part_keys[n] = key

    def _aspect_onto_grid(self, aspect: np.ndarray) -> np.ndarray:
        # Average directions as unit vectors: the mean of 359 and 1 degrees is 0, not 180.
        flat = aspect < 0
        rad = np.deg2rad(np.where(flat, 0.0, aspect))
        weight = np.where(flat, 0.0, 1.0)
        resampling = _resampling_for(self.dem_grid.res[0], self.grid.res[0])
        east = self.grid.reproject_array((np.sin(rad) * weight).astype(np.float32), self.dem_grid, resampling)
        north = self.grid.reproject_array((np.cos(rad) * weight).astype(np.float32), self.dem_grid, resampling)
        out = (np.rad2deg(np.arctan2(east, north)) + 360.0) % 360.0
        out[np.hypot(east, north) < 1e-6] = -1.0
        out[~np.isfinite(east)] = np.nan
        return out.astype(np.float32)

    # rainfall ----------------------------------------------------------------------------
    def rainfall(self) -> None:
        spec = self.region.inputs.rainfall
        if spec is None:
            return
        key = _key("rainfall", self.sha(spec.path), spec.band, self.grid.to_dict())

        def build() -> dict[str, Any]:
            path = self.region.path(spec.path)
            native_grid = _native_grid(path, self.grid.crs)
            native = native_grid.reproject_band(path, band=spec.band, resampling=Resampling.bilinear)
            _write_float(self.native("rainfall"), native, native_grid, "rainfall", self.synthetic)
            # Rainfall is a smooth field from a coarse source: bilinear onto a finer grid.
            resampling = _resampling_for(native_grid.res[0], self.grid.res[0])
            on_grid = self.grid.reproject_band(path, band=spec.band, resampling=resampling)
            _write_float(self.part("rainfall"), on_grid, self.grid, "rainfall", self.synthetic)
            return {}

        self.step("rainfall", key, [self.part("rainfall"), self.native("rainfall")], build)
        self.part_keys["rainfall"] = key

    # imagery and NDVI --------------------------------------------------------------------
    def imagery(self) -> None:
        spec = self.region.inputs.imagery
        if spec is None or self.img_grid is None:
            return
        key = _key("imagery", self.sha(spec.path), spec.bands, spec.scale, spec.nodata, self.img_grid.to_dict())
        target = self.layout.imagery_tif

        def build() -> dict[str, Any]:
            path = self.region.path(spec.path)
            tags = dict(SYNTHETIC_TAGS) if self.synthetic else {}
            tags.update(SCALE="reflectance (DN / %g)" % spec.scale, BANDS=",".join(spec.bands))
            invalid_count = 0
            with rasterio.open(path) as src:
                nodata = spec.nodata if spec.nodata is not None else (src.nodata if src.nodata is not None else 0)
                resampling = _resampling_for(_src_res_in(src, self.grid.crs), self.img_grid.res[0])
                with (
                    WarpedVRT(
                        src,
                        crs=self.img_grid.crs,
                        transform=self.img_grid.transform,
                        width=self.img_grid.width,
                        height=self.img_grid.height,
                        src_nodata=nodata,
                        nodata=nodata,
                        resampling=resampling,
                    ) as vrt,
                    cog_writer(target, self.img_grid, len(spec.bands), "float32", spec.bands, float("nan"), tags) as dst,
                ):
                    # Stream in strips of rows: a full Sentinel-2 tile never sits in memory.
                    for row in range(0, self.img_grid.height, IMAGERY_STRIP_ROWS):
                        h = min(IMAGERY_STRIP_ROWS, self.img_grid.height - row)
                        window = rasterio.windows.Window(0, row, self.img_grid.width, h)
                        data = vrt.read(window=window).astype(np.float32)
                        invalid = np.all(data == nodata, axis=0) | np.any(~np.isfinite(data), axis=0)
                        data /= np.float32(spec.scale)
                        data[:, invalid] = np.nan
                        invalid_count += int(invalid.sum())
                        dst.write(data, window=window)
            valid = 1 - invalid_count / (self.img_grid.width * self.img_grid.height)
            return {"grid": self.img_grid.to_dict(), "valid_fraction": float(valid)}

        self.step("imagery", key, [target], build)
        self.part_keys["imagery"] = key

    def ndvi(self) -> None:
        pre = self.region.inputs.imagery_pre
        spec = pre or self.region.inputs.imagery
        if spec is None or self.ndvi_grid is None or not {"B4", "B8"} <= {b.upper() for b in spec.bands}:
            return
        upper = [b.upper() for b in spec.bands]
        if pre is not None:
            key = _key("ndvi", "pre", self.sha(pre.path), pre.bands, pre.scale, pre.nodata,
                       self.ndvi_grid.to_dict(), self.grid.to_dict())
        else:
            key = _key("ndvi", self.part_keys["imagery"], self.grid.to_dict())

        def read_red_nir() -> tuple[np.ndarray, np.ndarray]:
            if pre is None:  # the post-event scene, already reflectance on the imagery grid
                with rasterio.open(self.layout.imagery_tif) as src:
                    return src.read(upper.index("B4") + 1), src.read(upper.index("B8") + 1)
            with rasterio.open(self.region.path(pre.path)) as src:
                nodata = pre.nodata if pre.nodata is not None else (src.nodata if src.nodata is not None else 0)
                resampling = _resampling_for(_src_res_in(src, self.grid.crs), self.ndvi_grid.res[0])
                g = self.ndvi_grid
                with WarpedVRT(src, crs=g.crs, transform=g.transform, width=g.width, height=g.height,
                               src_nodata=nodata, nodata=nodata, resampling=resampling) as vrt:
                    red, nir = (vrt.read(upper.index(b) + 1).astype(np.float32) for b in ("B4", "B8"))
            invalid = (red == nodata) & (nir == nodata)
            red, nir = red / np.float32(pre.scale), nir / np.float32(pre.scale)
            red[invalid] = np.nan
            return red, nir

        def build() -> dict[str, Any]:
            red, nir = read_red_nir()
            with np.errstate(invalid="ignore", divide="ignore"):
                ndvi = (nir - red) / (nir + red)
            ndvi[~np.isfinite(ndvi)] = np.nan
            _write_float(self.native("ndvi"), ndvi, self.ndvi_grid, "ndvi", self.synthetic)
            on_grid = self.grid.reproject_array(
                ndvi.astype(np.float32), self.ndvi_grid, _resampling_for(self.ndvi_grid.res[0], self.grid.res[0])
            )
            _write_float(self.part("ndvi"), on_grid, self.grid, "ndvi", self.synthetic)
            return {}

        self.step("ndvi", key, [self.part("ndvi"), self.native("ndvi")], build)
        self.part_keys["ndvi"] = key

    # vectors -----------------------------------------------------------------------------
    def _read_vector(self, name: str):
        import geopandas as gpd

        spec = getattr(self.region.inputs, name)
        path = self.region.path(spec.path)
        try:
            frame = gpd.read_file(path, layer=spec.layer)
        except Exception as exc:
            raise RegionError(f"{path}: inputs.{name} could not be read ({str(exc).splitlines()[0]})") from exc
        frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
        return frame.to_crs(self.grid.crs)

    def vectors(self) -> None:
        from slidemap.compute.region.manifest import VECTOR_THEMES

        for name in VECTOR_THEMES:
            spec = getattr(self.region.inputs, name)
            if spec is None:
                continue
            key = _key("vector", name, self.sha(spec.path), spec.layer, self.grid.crs.to_string())
            target = self.layout.vector(name)

            def build(name: str = name, target: Path = target) -> dict[str, Any]:
                frame = self._read_vector(name)
                with atomic_path(target) as tmp:
                    frame.to_file(tmp, layer=name, driver="GPKG", **self.gpkg_metadata())
                return {"features": len(frame)}

            self.step(f"vector:{name}", key, [target], build)
            self.part_keys[f"vector:{name}"] = key

    def distances(self) -> None:
        for name, factor in (("roads", "distance_to_roads"), ("rivers", "distance_to_rivers")):
            if getattr(self.region.inputs, name) is None:
                continue
            key = _key("distance", self.part_keys[f"vector:{name}"], self.grid.to_dict())

            def build(name: str = name, factor: str = factor) -> dict[str, Any]:
                import geopandas as gpd

                frame = gpd.read_file(self.layout.vector(name))
                if frame.empty:
                    return {"features": 0}
                mask = rasterize(
                    ((g, 1) for g in frame.geometry), out_shape=self.grid.shape,
                    transform=self.grid.transform, all_touched=True, dtype="uint8",
                )
                if not mask.any():
                    return {"features": 0}
                # Euclidean distance in metres from each cell centre to the nearest feature cell.
                dist = ndimage.distance_transform_edt(mask == 0, sampling=(self.grid.res[1], self.grid.res[0]))
                dist = dist.astype(np.float32)
                _write_float(self.native(factor), dist, self.grid, factor, self.synthetic)
                _write_float(self.part(factor), dist, self.grid, factor, self.synthetic)
                return {"features": len(frame)}

            had_features = self.state.extra(factor).get("features", 1)
            outputs = [self.part(factor), self.native(factor)] if had_features else []
            extra = self.step(factor, key, outputs, build)
            if extra.get("features", 1) and self.part(factor).exists():
                self.part_keys[factor] = key

    # categorical -------------------------------------------------------------------------
    def categorical(self) -> dict[str, dict[str, str]]:
        classes: dict[str, dict[str, str]] = {}
        for name in CATEGORICAL_FACTORS:
            spec = getattr(self.region.inputs, name)
            if spec is None:
                continue
            class_sha = self.sha(spec.classes) if spec.classes else None
            key = _key("categorical", name, self.sha(spec.path), class_sha, self.grid.to_dict())

            def build(name: str = name, spec: Any = spec) -> dict[str, Any]:
                path = self.region.path(spec.path)
                with rasterio.open(path) as src:
                    nodata = src.nodata
                    src_res = _src_res_in(src, self.grid.crs)
                on_grid = self.grid.reproject_band(
                    path, band=1, resampling=_resampling_for(src_res, self.grid.res[0], categorical=True),
                    src_nodata=nodata,
                )
                native_grid = Grid.from_raster(path)
                if native_grid.crs == self.grid.crs and _north_up(native_grid.transform):
                    with rasterio.open(path) as src:
                        native = src.read(1).astype(np.float32)
                        if nodata is not None:
                            native[native == nodata] = np.nan
                else:
                    native_grid = self.grid
                    native = on_grid
                _write_float(self.native(name), native, native_grid, name, self.synthetic)
                _write_float(self.part(name), on_grid, self.grid, name, self.synthetic)
                table = read_classes(self.region.path(spec.classes), name) if spec.classes else {}
                codes = np.unique(on_grid[np.isfinite(on_grid)]).astype(int)
                names = {str(c): table.get(int(c), f"class {int(c)}") for c in codes}
                return {"classes": names}

            extra = self.step(name, key, [self.part(name), self.native(name)], build)
            classes[name] = extra.get("classes", {})
            self.part_keys[name] = key
        return classes

    # inventory and labels ----------------------------------------------------------------
    def inventory(self) -> None:
        specs = self.region.inputs.inventory
        if not specs:
            return
        shas = [self.sha(s.path) for s in specs]
        key = _key("inventory", "layers-by-geometry", shas, [s.model_dump() for s in specs], self.grid.crs.to_string())
        target = self.layout.inventory_gpkg

        def build() -> dict[str, Any]:
            import geopandas as gpd
            import pandas as pd

            read = [self._read_inventory(s) for s in specs]
            frame = gpd.GeoDataFrame(pd.concat([f for f, _ in read], ignore_index=True), crs=self.grid.crs)
            if frame.empty:
                raise RegionError(f"{', '.join(s['file'] for _, s in read)}: no inventory feature lies inside the "
                                  "region; check the inventory's CRS and the DEM's extent")
            with atomic_path(target) as tmp:
                layers = write_inventory(tmp, frame, published_as=target, **self.gpkg_metadata())
            return {
                "landslides": int(frame["label"].sum()),
                "non_landslides": int((~frame["label"]).sum()),
                "layers": layers,
                "inputs": [s for _, s in read],
            }

        self.result.inventory = self.step("inventory", key, [target], build)
        self.part_keys["inventory"] = key

    def _read_inventory(self, spec: Any):
        import geopandas as gpd
        import pandas as pd

        path = self.region.path(spec.path)
        if path.suffix.lower() in (".csv", ".txt"):
            table = pd.read_csv(path)
            x, y = spec.x or "x", spec.y or "y"
            crs = spec.crs or self.grid.crs
            geometry = gpd.points_from_xy(table[x], table[y], crs=crs)
            frame = gpd.GeoDataFrame(table, geometry=geometry)
        else:
            try:
                frame = gpd.read_file(path, layer=spec.layer)
            except Exception as exc:
                raise RegionError(f"{path}: inventory could not be read ({str(exc).splitlines()[0]})") from exc
            if frame.crs is None:
                raise RegionError(f"{path}: inventory has no CRS; set one")
        if spec.label:
            if spec.label not in frame.columns:
                raise RegionError(f"{path}: inventory has no label column {spec.label!r}; fix `label` in region.toml")
            try:
                labels = [parse_label(v) for v in frame[spec.label]]
            except ValueError as exc:
                raise RegionError(f"{path}: inventory column {spec.label!r}: {exc}; use true/false") from exc
        elif "label" in frame.columns:
            labels = [parse_label(v) for v in frame["label"]]
        else:
            labels = [True] * len(frame)
        out = gpd.GeoDataFrame({"label": np.asarray(labels, dtype=bool), "source": path.name}, geometry=frame.geometry.values, crs=frame.crs)
        n_read = len(out)
        out = out[out.geometry.notna() & ~out.geometry.is_empty]
        no_geometry = n_read - len(out)
        out = out.to_crs(self.grid.crs)
        from shapely.geometry import box

        inside = out.intersects(box(*self.grid.bounds))
        outside = int((~inside).sum())
        out = out[inside]
        stats = {"file": path.name, "read": n_read, "kept": len(out), "landslides": int(out["label"].sum()),
                 "non_landslides": int((~out["label"]).sum()),
                 "dropped": {k: v for k, v in (("no or empty geometry", no_geometry), ("outside the region", outside)) if v}}
        return out, stats

    def labels(self) -> None:
        if "inventory" not in self.part_keys:
            return
        grids = {"labels": self.grid}
        if self.img_grid is not None:
            grids["labels_imagery"] = self.img_grid
        for name, grid in grids.items():
            key = _key("labels", name, self.part_keys["inventory"], grid.to_dict(), self.part_keys.get("altitude"), self.part_keys.get("imagery"))
            target = self.build / f"{name}.tif"

            def build(name: str = name, grid: Grid = grid, target: Path = target) -> dict[str, Any]:
                frame = read_inventory(self.layout.inventory_gpkg)
                labels = np.zeros(grid.shape, dtype=np.uint8)
                negatives = frame[~frame["label"].astype(bool)]
                positives = frame[frame["label"].astype(bool)]
                counts: dict[str, int] = {}
                if name == "labels":
                    _burn(labels, negatives, grid, LABEL_NEGATIVE)
                _burn(labels, positives, grid, LABEL_LANDSLIDE)
                if name == "labels":
                    valid = np.isfinite(_read_float(self.part("altitude")))
                else:
                    with rasterio.open(self.layout.imagery_tif) as src:
                        valid = ~np.isnan(src.read(1))
                labels[~valid] = LABEL_NODATA
                counts = {
                    "landslide_cells": int((labels == LABEL_LANDSLIDE).sum()),
                    "negative_cells": int((labels == LABEL_NEGATIVE).sum()),
                }
                profile = grid.profile(count=1, dtype="uint8", nodata=LABEL_NODATA)
                with atomic_path(target) as tmp:
                    with rasterio.open(tmp, "w", **profile) as dst:
                        dst.write(labels, 1)
                        dst.set_band_description(1, "0 none, 1 landslide, 2 known non-landslide, 255 nodata")
                        if self.synthetic:
                            dst.update_tags(**SYNTHETIC_TAGS)
                return counts

            self.step(name, key, [target], build)

    def exclusion(self) -> None:
        if self.img_grid is None:
            return
        themes = [t for t in ("roads", "settlements", "water", "rivers") if f"vector:{t}" in self.part_keys]
        if not themes:
            return
        key = _key("exclusion", [self.part_keys[f"vector:{t}"] for t in themes], self.img_grid.to_dict())
        target = self.layout.exclusion_imagery_tif

        def build() -> dict[str, Any]:
            import geopandas as gpd

            mask = np.zeros(self.img_grid.shape, dtype=np.uint8)
            for theme in themes:
                frame = gpd.read_file(self.layout.vector(theme))
                if frame.empty:
                    continue
                spec = getattr(self.region.inputs, theme)
                buffer = spec.buffer if spec.buffer is not None else DEFAULT_LINE_BUFFER_M.get(theme, 0.0)
                geoms = frame.geometry
                if buffer > 0:
                    geoms = geoms.buffer(buffer)
                _burn(mask, gpd.GeoDataFrame(geometry=geoms, crs=frame.crs), self.img_grid, 1, all_touched=True)
            profile = self.img_grid.profile(count=1, dtype="uint8", nodata=None)
            with atomic_path(target) as tmp:
                with rasterio.open(tmp, "w", **profile) as dst:
                    dst.write(mask, 1)
                    dst.set_band_description(1, "1 = road, river, water or settlement")
                    if self.synthetic:
                        dst.update_tags(**SYNTHETIC_TAGS)
            return {"excluded_fraction": float(mask.mean())}

        self.step("exclusion", key, [target], build)

    # the stack ---------------------------------------------------------------------------
    def stack(self, classes: dict[str, dict[str, str]]) -> list[str]:
        names = [n for n in FACTOR_ORDER if n in self.part_keys and self.part(n).exists()]
        # the layout is in the key: a region prepared before it changed gets the new layout on the next run
        key = _key("stack", [self.part_keys[n] for n in names], names, self.synthetic, repr(FAST_READ))
        target = self.layout.factors_tif

        def build() -> dict[str, Any]:
            arrays = {n: _read_float(self.part(n)) for n in names}
            footprint = np.isfinite(arrays["altitude"])
            filled: dict[str, float] = {}
            for n, band in arrays.items():
                band[~footprint] = np.nan
                holes = footprint & ~np.isfinite(band)
                if holes.any() and np.isfinite(band).any():
                    # An input that stops short of the DEM: take the nearest valid value rather
                    # than let NaN reach the models (recorded, so users can see how much).
                    idx = ndimage.distance_transform_edt(~np.isfinite(band), return_distances=False, return_indices=True)
                    band[holes] = band[tuple(i[holes] for i in idx)]
                    filled[n] = float(holes.sum() / footprint.sum())
            stack = np.stack([arrays[n] for n in names]).astype(np.float32)
            tags = dict(SYNTHETIC_TAGS) if self.synthetic else {}
            # read window by window by the block engine and `map`: the fast-read layout (compute/region/raster_io.py)
            write_cog(target, stack, self.grid, band_names=names, nodata=float("nan"), tags=tags, layout=FAST_READ)
            specs = []
            for n, band in zip(names, stack, strict=True):
                finite = band[np.isfinite(band)]
                lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
                if n == "aspect":
                    lo, hi = -1.0, 360.0
                kind = "categorical" if n in CATEGORICAL_FACTORS else "continuous"
                native = self.native(n)
                specs.append(
                    FactorSpec(
                        name=n, kind=kind, units=UNITS[n], min=lo, max=hi, source=self.source_of(n),
                        native=str(native.relative_to(self.build)) if native.exists() else None,
                        classes=classes.get(n, {}),
                    ).to_dict()
                )
            write_json_atomic(
                self.layout.factors_json,
                {
                    "synthetic": self.synthetic,
                    "region": self.region.name,
                    "grid": self.grid.to_dict(),
                    "factors": specs,
                    "filled_fraction": filled,
                    "imagery_factors_from": self.imagery_factors_from(),
                    "normalisation": "(x - min) / (max - min), clipped to [0, 1]; NaN -> 0",
                },
            )
            return {"factors": names}

        self.step("stack", key, [target, self.layout.factors_json], build)
        return names


def _source_of(name: str) -> str:
    if name in terrain.TERRAIN_FACTORS:
        return "dem"
    return {"ndvi": "imagery", "distance_to_roads": "roads", "distance_to_rivers": "rivers"}.get(name, name)


IMAGERY_FROM_POST = (
    "imagery (no imagery_pre given): if the scene was taken after the landslides, NDVI can carry "
    "the scars and overstate every model's skill; add a pre-event scene as inputs.imagery_pre"
)
IMAGERY_FROM_PRE = "imagery_pre (a scene from before the landslides)"


def _north_up(transform: Any) -> bool:
    """Row 0 at the top, no rotation: the only layout the Grid contract allows as is."""
    return transform.a > 0 and transform.e < 0 and transform.b == 0 and transform.d == 0


def _native_grid(path: Path, crs: CRS) -> Grid:
    """A raster's own grid if north-up in ``crs``, else its default north-up grid in ``crs``."""
    with rasterio.open(path) as src:
        if src.crs == crs and _north_up(src.transform):
            return Grid(src.crs, src.transform, src.width, src.height)
        return Grid(crs, *_default_transform(src, crs))


def _default_transform(src: rasterio.io.DatasetReader, crs: CRS) -> tuple[Any, int, int]:
    return calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)


def _src_res_in(src: rasterio.io.DatasetReader, crs: CRS) -> float:
    if src.crs == crs:
        return abs(src.transform.a)
    transform, _, _ = _default_transform(src, crs)
    return abs(transform.a)


def _burn(out: np.ndarray, frame: Any, grid: Grid, value: int, all_touched: bool = False) -> None:
    """Burn polygons (cell centres inside) and points/lines (cells they touch) into ``out``."""
    if frame is None or len(frame) == 0:
        return
    geoms = list(frame.geometry)
    polys = [g for g in geoms if g.geom_type in ("Polygon", "MultiPolygon")]
    others = [g for g in geoms if g.geom_type not in ("Polygon", "MultiPolygon")]
    if polys:
        burned = rasterize(((g, 1) for g in polys), out_shape=grid.shape, transform=grid.transform,
                           all_touched=all_touched, dtype="uint8")
        # A polygon smaller than a cell still marks the cell it falls in.
        small = rasterize(((g.representative_point(), 1) for g in polys), out_shape=grid.shape,
                          transform=grid.transform, all_touched=True, dtype="uint8")
        out[(burned == 1) | (small == 1)] = value
    if others:
        burned = rasterize(((g, 1) for g in others), out_shape=grid.shape, transform=grid.transform,
                           all_touched=True, dtype="uint8")
        out[burned == 1] = value


def prepare_region(region_dir: str | Path, show_progress: bool = True) -> PrepareResult:
    """Validate the region and build (or reuse) every part of its analysis stack."""
    started = time.perf_counter()
    region = load_region(region_dir)
    fresh_build = not region.build_dir.exists()
    try:
        return _prepare(region, show_progress, started)
    except RegionError:
        # A refused input (e.g. a DEM whose cells are all nodata once on the grid) leaves no
        # half-made build folder behind; an earlier build is never touched.
        if fresh_build:
            shutil.rmtree(region.build_dir, ignore_errors=True)
        raise


def _prepare(region: Region, show_progress: bool, started: float) -> PrepareResult:
    builder = _Builder(region, show_progress)
    steps: list[tuple[str, Callable[[], Any]]] = [
        ("terrain factors", builder.terrain),
        ("rainfall", builder.rainfall),
        ("imagery", builder.imagery),
        ("NDVI", builder.ndvi),
        ("vectors", builder.vectors),
        ("distances", builder.distances),
        ("land cover, soil, lithology", builder.categorical),
        ("inventory", builder.inventory),
        ("labels", builder.labels),
        ("exclusion mask", builder.exclusion),
    ]
    classes: dict[str, dict[str, str]] = {}
    bar = tqdm(steps, desc="prepare", unit="step", disable=not show_progress, leave=False)
    for label, fn in bar:
        bar.set_postfix_str(label)
        value = fn()
        if label.startswith("land cover"):
            classes = value
    builder.result.factor_names = builder.stack(classes)
    builder.result.seconds = time.perf_counter() - started
    return builder.result
