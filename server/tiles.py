"""Tiles: read (rio-tiler), compute (block engine), render (titiler/rio-tiler), cache.

File-backed layers (imagery, factors, inventory overlay) are read with rio-tiler's ``Reader``
straight from their COGs. Computed layers are assembled from whole native-resolution blocks
(:mod:`slidemap.compute.maps.blocks`) into an in-memory GeoTIFF that the same ``Reader`` warps to the
tile, so model cells are never resampled before the model has run on them.

Over-budget policy: a computed tile that needs more missing native blocks than ``max_blocks``
computes the ``max_blocks`` nearest its centre and answers a **marked partial tile** (HTTP 200,
header ``X-Slidemap-Partial: computed=a; missing=b``, ``Cache-Control: no-store``, never
cached), so a map fills in while the user stays; with ``over_budget="error"`` it answers
**422** with a message saying how to seed instead (nothing is computed).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import morecantile
import numpy as np
from morecantile import Tile
from rasterio.errors import RasterioError
from rasterio.warp import transform_bounds
from rio_tiler.errors import PointOutsideBounds, TileOutsideBounds
from rio_tiler.io import Reader
from rio_tiler.models import ImageData
from rio_tiler.utils import render as rt_render
from titiler.core.resources.enums import ImageType
from titiler.core.utils import render_image

from slidemap.compute.maps.blocks import BlockEngine, InputChanged, file_fingerprint
from slidemap.compute.region.grid import Grid
from slidemap.compute.models.store import ModelInfo
from slidemap.server.cache import TileCache, TileKey, etag_for
from slidemap.server.engine_reader import BlockEngineReader
from slidemap.server.errors import BadTileRequest, NotFound
from slidemap.server.layers import Catalog, InputState, Layer, LayerRegistry
from slidemap.server.tile_encode import Encoding, block_pixels, encode, orient_rescale

FORMATS: dict[str, str] = {
    "png": "image/png",
    "webp": "image/webp",
    "tif": "image/tiff; application=geotiff",
    "npy": "application/x-npy",
}
# Tile matrix sets offered (morecantile's registry; WebMercatorQuad is the XYZ default).
SUPPORTED_TMS = ("WebMercatorQuad", "WorldCRS84Quad", "WGS1984Quad", "UTM31WGS84Quad", "EuropeanETRS89_LAEAQuad")


@dataclass(frozen=True)
class RenderParams:
    rescale: tuple[tuple[float, float], ...] | None = None
    colormap_name: str | None = None

    def canonical(self) -> str:
        return json.dumps({"rescale": self.rescale, "colormap_name": self.colormap_name}, sort_keys=True)


def parse_rescale(values: list[str] | None) -> tuple[tuple[float, float], ...] | None:
    """``rescale=min,max`` (once per band, or once for all) -> ((min, max), ...); 400 on anything
    else. ``max < min`` reverses the colour ramp, ``min == max`` draws a step at that value."""
    if not values:
        return None
    out = []
    for v in values:
        parts = v.split(",")
        try:
            lo, hi = (float(p) for p in parts)
        except ValueError:
            raise BadTileRequest(f"rescale={v!r}: expected two numbers 'min,max', e.g. rescale=0,1") from None
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise BadTileRequest(f"rescale={v!r}: needs finite numbers")
        out.append((lo, hi))
    if len(out) > 4:
        raise BadTileRequest("rescale: at most one min,max pair per band (4)")
    return tuple(out)


@dataclass
class TileResult:
    content: bytes
    media_type: str
    etag: str
    cache_control: str
    headers: dict[str, str] = field(default_factory=dict)
    cache_hit: bool = False


def get_tms(tms_id: str) -> morecantile.TileMatrixSet:
    if tms_id not in SUPPORTED_TMS:
        raise NotFound(f"unknown tile matrix set {tms_id!r}; use one of {', '.join(SUPPORTED_TMS)}")
    return _tms(tms_id)


@functools.lru_cache(maxsize=None)
def _tms(tms_id: str) -> morecantile.TileMatrixSet:
    return morecantile.tms.get(tms_id)  # a deep copy per call: made once, never changed


def check_tile(tms: morecantile.TileMatrixSet, z: int, x: int, y: int) -> None:
    """404 for a tile the tile matrix set does not have (zoom, column or row out of range)."""
    if not (tms.minzoom <= z <= tms.maxzoom):
        raise NotFound(f"zoom {z} out of range {tms.minzoom}..{tms.maxzoom} for {tms.id}")
    m = tms.matrix(z)
    if not (0 <= x < m.matrixWidth and 0 <= y < m.matrixHeight):
        raise NotFound(
            f"tile {z}/{x}/{y} out of range for {tms.id}: x < {m.matrixWidth} and y < {m.matrixHeight} at zoom {z}"
        )


def check_holds(registry: LayerRegistry, layer: Layer, tms: morecantile.TileMatrixSet,
                catalog: Catalog | None = None) -> None:
    """404 where the tile matrix set does not hold the layer's region: such a set is neither listed
    (TileJSON, WMTS, OGC API tilesets) nor served. The one rule for every route and seeding."""
    require_holds(registry.grid_of(layer, catalog), tms.id, layer.id)


def require_holds(grid: Grid, tms_id: str, layer_id: str) -> None:
    """:func:`check_holds` for a caller that already holds the layer's grid (the tile path)."""
    if not _holds(grid, tms_id):
        sets = [t for t in SUPPORTED_TMS if _holds(grid, t)]
        raise NotFound(f"tile matrix set {tms_id} does not cover the region of layer {layer_id}; "
                       f"use one of {', '.join(sets) or '(none)'}")


@functools.lru_cache(maxsize=64)
def _holds(grid: Grid, tms_id: str) -> bool:
    """Whether the grid's bounds, in the set's CRS, lie inside the set's own extent. Asked, not
    caught: morecantile clamps points outside a set's extent to its edge instead of raising."""
    try:
        left, bottom, right, top = _bounds_in_tms(grid, tms_id)
    except Exception:  # noqa: BLE001 - PROJ cannot place the region in this CRS at all
        return False
    box = _tms(tms_id).xy_bbox
    return box.left <= left and right <= box.right and box.bottom <= bottom and top <= box.top  # False on NaN


def zoom_range(registry: LayerRegistry, layer: Layer, tms: morecantile.TileMatrixSet,
               catalog: Catalog | None = None) -> tuple[int, int]:
    """Zooms at which the layer's native cells span from the whole region down to ~1 tile pixel
    (404 where the set does not hold the region)."""
    check_holds(registry, layer, tms, catalog)
    return _zoom_range(registry.grid_of(layer, catalog), tms.id)


@functools.lru_cache(maxsize=64)
def _zoom_range(grid: Grid, tms_id: str) -> tuple[int, int]:
    tms = _tms(tms_id)
    res = grid.res[0]
    left, bottom, right, top = grid.bounds
    # The native cell size expressed in the TMS's units at the region centre.
    cx, cy = (left + right) / 2, (bottom + top) / 2
    b = transform_bounds(grid.crs, tms.rasterio_crs, cx - res / 2, cy - res / 2, cx + res / 2, cy + res / 2)
    tms_res = max(abs(b[2] - b[0]), 1e-12)
    maxzoom = tms.zoom_for_res(tms_res)
    maxzoom = int(min(max(maxzoom, tms.minzoom), tms.maxzoom))
    span = max(right - left, top - bottom)
    bb = transform_bounds(grid.crs, tms.rasterio_crs, cx - span / 2, cy - span / 2, cx + span / 2, cy + span / 2)
    minzoom = tms.zoom_for_res(max(abs(bb[2] - bb[0]), 1e-12) / 256)
    return int(max(tms.minzoom, min(minzoom, maxzoom))), maxzoom


@functools.lru_cache(maxsize=64)
def _bounds_in_tms(grid: Grid, tms_id: str) -> tuple[float, float, float, float]:
    return tuple(grid.bounds_in(_tms(tms_id).rasterio_crs))  # type: ignore[return-value]


@functools.lru_cache(maxsize=64)
def wgs84_bounds(grid: Grid) -> tuple[float, float, float, float]:
    """A grid's bounds in WGS84 (west, south, east, north), computed once per grid."""
    return tuple(grid.bounds_in("EPSG:4326"))  # type: ignore[return-value]


def _image_to_bytes(img: ImageData, layer: Layer, fmt: str, params: RenderParams) -> bytes:
    if fmt == "npy":
        data = img.array.astype(np.float32).filled(np.nan)
        with io.BytesIO() as bio:
            np.save(bio, data)
            return bio.getvalue()
    if fmt == "tif":
        if img.array.dtype == np.uint8:
            data = img.array.filled(0)
            nodata: float = 0
        else:
            data = img.array.astype(np.float32).filled(np.nan)
            nodata = float("nan")
        return rt_render(data, img_format="GTiff", transform=img.transform, crs=img.crs, nodata=nodata,
                         compress="deflate")
    px = block_pixels(img, layer, params)
    if px is not None:  # 8-bit grey or RGB: Pillow, run-length PNG or WebP (the seeded tiles' encoder)
        return encode(px, Encoding(fmt))
    output = ImageType.png if fmt == "png" else ImageType.webp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if layer.colormap is not None:
            content, _ = render_image(img, colormap=layer.colormap, output_format=output)
            return content
        from rio_tiler.colormap import cmap

        rescale = params.rescale or layer.rescale
        colormap = cmap.get(params.colormap_name or layer.colormap_name) if (params.colormap_name or layer.colormap_name) else None
        if rescale:
            img, rescale = orient_rescale(img, rescale)
        content, _ = render_image(img, colormap=colormap, output_format=output, rescale=rescale)
        return content


def _empty_image(tms: morecantile.TileMatrixSet, tile: Tile, size: int, bands: int, dtype: str) -> ImageData:
    data = np.ma.MaskedArray(np.zeros((bands, size, size), dtype=dtype), mask=True)
    return ImageData(data, bounds=tuple(tms.xy_bounds(tile)), crs=tms.rasterio_crs)


def read_tile(src: Reader, tms: morecantile.TileMatrixSet, tile: Tile, size: int, **kwargs) -> ImageData | None:
    """``src.tile`` restricted to the tile pixels over the dataset; None when it misses the dataset.

    rio-tiler warps a tile through a virtual raster at the dataset's resolution over the whole
    tile, which for a low-zoom tile over a small region is millions of pixels wide and takes
    minutes. Reading only the pixel-aligned part of the tile over the dataset gives the same
    pixels (same centres, same resampling) at the cost of the region's size.
    """
    if not src.tile_exists(tile.x, tile.y, tile.z):
        return None
    bbox = tms.xy_bounds(tile)
    return read_over_data(src, tms, tuple(bbox), size, size,
                          whole=lambda: src.tile(tile.x, tile.y, tile.z, tilesize=size, **kwargs), **kwargs)


def read_over_data(src: Reader, tms: morecantile.TileMatrixSet, bounds: tuple[float, ...], width: int, height: int,
                   whole: Callable[[], ImageData] | None = None, **kwargs) -> ImageData | None:
    """``width`` x ``height`` pixels over ``bounds`` (the TMS's CRS), warping only the pixel-aligned
    part over the dataset and masking the rest; None when it misses the dataset. ``whole`` reads the
    full extent when all of it is over the dataset (rio-tiler's own tile path). The one rule for the
    server's tiles (:func:`read_tile`) and seeding's metatiles."""
    left, bottom, right, top = bounds
    res = (right - left) / width
    dl, db, dr, dt = transform_bounds(src.crs, tms.rasterio_crs, *src.bounds, densify_pts=21)
    c0 = max(0, math.floor((dl - left) / res))
    c1 = min(width, math.ceil((dr - left) / res))
    r0 = max(0, math.floor((top - dt) / res))
    r1 = min(height, math.ceil((top - db) / res))
    if c1 <= c0 or r1 <= r0:
        return None
    try:
        if whole is not None and (c0, r0, c1, r1) == (0, 0, width, height):
            return whole()
        sub = (left + c0 * res, top - r1 * res, left + c1 * res, top - r0 * res)
        part = src.part(sub, dst_crs=tms.rasterio_crs, bounds_crs=tms.rasterio_crs,
                        width=c1 - c0, height=r1 - r0, **kwargs)
    except TileOutsideBounds:
        return None
    arr = part.array
    full = np.ma.MaskedArray(np.zeros((arr.shape[0], height, width), dtype=arr.dtype), mask=True)
    full[:, r0:r1, c0:c1] = arr
    return ImageData(full, bounds=(left, bottom, right, top), crs=tms.rasterio_crs,
                     band_descriptions=part.band_descriptions)


def _as_categorical(img: ImageData) -> ImageData:
    arr = img.array
    vals = np.where(arr.mask | ~np.isfinite(arr.data), 0, np.rint(np.nan_to_num(arr.data)))
    codes = np.ma.MaskedArray(np.clip(vals, 0, 255).astype(np.uint8), mask=arr.mask | (vals == 0))
    return ImageData(codes, bounds=img.bounds, crs=img.crs)


def native_extent(
    engine: BlockEngine, tms: morecantile.TileMatrixSet, bbox: tuple[float, float, float, float], width_px: int,
) -> tuple[int, tuple[float, float, float, float], tuple[float, float, float, float]] | None:
    """What rendering ``bbox`` (in the TMS's CRS) at ``width_px`` pixels across needs of a block engine:
    ``(level, bounds with margin, bounds)`` in the engine's CRS, or None where it misses the region.
    The one rule for the server's computed tiles and seeding's computed metatiles."""
    # Test overlap in the TMS's CRS first: a zoom-0 tile transformed to a UTM grid is garbage.
    rl, rb, rr, rt = _bounds_in_tms(engine.grid, tms.id)
    if bbox[2] <= rl or bbox[0] >= rr or bbox[3] <= rb or bbox[1] >= rt:
        return None
    tile_res = (bbox[2] - bbox[0]) / width_px
    # Only the part over the region (plus a pixel) needs native blocks.
    clip = (max(bbox[0], rl - tile_res), max(bbox[1], rb - tile_res),
            min(bbox[2], rr + tile_res), min(bbox[3], rt + tile_res))
    nb = transform_bounds(tms.rasterio_crs, engine.grid.crs, *clip, densify_pts=21)
    # Native units per pixel, measured on the clipped part (same scale as the whole bbox).
    level = engine.level_for_resolution((nb[2] - nb[0]) / max(1e-9, (clip[2] - clip[0]) / tile_res))
    cell = engine.grid.res[0] * 2**level
    # Two cells of margin so resampling at the edge sees the same neighbours as the next tile.
    eb = (nb[0] - 2 * cell, nb[1] - 2 * cell, nb[2] + 2 * cell, nb[3] + 2 * cell)
    gl, gb, gr, gt = engine.grid.bounds
    if nb[2] <= gl or nb[0] >= gr or nb[3] <= gb or nb[1] >= gt:
        return None
    return level, eb, tuple(nb)


class TileService:
    """One tile request, start to end: cache lookup, read or compute, render, cache write."""

    def __init__(
        self,
        registry: LayerRegistry,
        cache: TileCache,
        max_blocks: int = 16,
        over_budget: str = "partial",
        max_scale: int = 4,
        max_age: int = 300,
    ) -> None:
        self.registry = registry
        self.cache = cache
        self.max_blocks = max_blocks
        self.over_budget = over_budget
        self.max_scale = max_scale
        self.max_age = max_age

    # ---- validation ---------------------------------------------------------------------------
    def validate(self, layer: Layer, fmt: str, scale: int, params: RenderParams) -> tuple[RenderParams, list[str]]:
        """The render parameters that apply to ``layer``, and the names of those that do not (ignored:
        ``colormap_name`` on RGB or categorical layers, ``rescale`` on categorical ones)."""
        if fmt not in FORMATS:
            raise BadTileRequest(f"unknown tile format {fmt!r}; use one of {', '.join(FORMATS)}")
        if not 1 <= scale <= self.max_scale:
            raise BadTileRequest(f"@{scale}x: scale must be 1..{self.max_scale}")
        ignored = []
        colormap_name, rescale = params.colormap_name, params.rescale
        if colormap_name and (layer.colormap is not None or len(layer.indexes) > 1):
            ignored.append("colormap_name")
            colormap_name = None
        if rescale and layer.colormap is not None:
            ignored.append("rescale")
            rescale = None
        return RenderParams(rescale, colormap_name), ignored

    def resolve(self, layer: Layer, model: str | None, catalog: Catalog | None = None) -> tuple[ModelInfo | None, str]:
        """The model (computed layers; ``model`` is ignored by file-backed ones) and the data version
        a tile of ``layer`` is made from now."""
        info = self.registry.model_info(layer, model) if layer.computed else None
        return info, self.registry.data_version(layer, info, catalog)

    # ---- main entry ---------------------------------------------------------------------------
    def tile(
        self,
        layer_id: str,
        tms_id: str,
        z: int,
        x: int,
        y: int,
        scale: int = 1,
        fmt: str = "png",
        params: RenderParams | None = None,
        model: str | None = None,
        version: str | None = None,
        cancel: threading.Event | None = None,
        _retry: bool = True,
    ) -> TileResult:
        """The tile's bytes. ``version`` is the URL's ``v=`` (the data tag TileJSON handed out): when
        it matches the data the tile is made from now, the answer is immutable."""
        params = params or RenderParams()
        catalog = self.registry.refresh()
        layer = self.registry.get(layer_id, catalog)
        params, ignored = self.validate(layer, fmt, scale, params)
        if model and not layer.computed:
            ignored.append("model")
        tms = get_tms(tms_id)
        check_tile(tms, z, x, y)
        state = self.registry.check_input(layer, catalog)
        require_holds(state.grid, tms.id, layer.id)  # the state's grid: no second input check per tile
        info, data_version = self.resolve(layer, model, catalog)
        breaks = self.registry.class_breaks(info) if (info is not None and layer.output == "class") else None
        key = TileKey(layer.id, data_version, params.canonical(), tms.id, z, x, y, scale, fmt)
        pinned = version is not None and version == data_tag(data_version)
        cache_control = (
            "public, max-age=31536000, immutable" if pinned else f"public, max-age={self.max_age}, must-revalidate"
        )
        t0 = time.perf_counter()
        cached = self.cache.get(key)
        if cached is not None:
            hit = {"X-Cache": "HIT", "X-Slidemap-Data-Version": data_version}
            if ignored:
                hit["X-Slidemap-Ignored"] = ", ".join(ignored)
            return TileResult(cached, FORMATS[fmt], etag_for(cached), cache_control, hit, True)
        tilesize = 256 * scale
        timing: dict[str, float] = {}
        partial = None
        try:
            if layer.computed:
                assert info is not None
                img, partial, timing = self._computed(layer, info, tms, z, x, y, tilesize, breaks, cancel, catalog)
            else:
                t1 = time.perf_counter()
                img = self._file(layer, state, tms, z, x, y, tilesize)
                timing["read"] = time.perf_counter() - t1
        except InputChanged:
            if _retry:
                return self.tile(layer_id, tms_id, z, x, y, scale, fmt, params, model, version, cancel, _retry=False)
            raise
        if _fingerprint_now(state.path) != state.fingerprint:
            # The input was replaced while this tile was made: never cache (or serve) a mixture.
            if _retry:
                return self.tile(layer_id, tms_id, z, x, y, scale, fmt, params, model, version, cancel, _retry=False)
            raise InputChanged(f"{state.rel} is changing; retry in a moment")
        t2 = time.perf_counter()
        if img is None:
            bands = 1 if (layer.colormap is not None or layer.colormap_name) else len(layer.indexes)
            img = _empty_image(tms, Tile(x, y, z), tilesize, bands, "uint8" if layer.colormap is not None else "float32")
        content = _image_to_bytes(img, layer, fmt, params)
        timing["render"] = time.perf_counter() - t2
        headers = {"X-Cache": "MISS", "X-Slidemap-Data-Version": data_version}
        if ignored:
            headers["X-Slidemap-Ignored"] = ", ".join(ignored)
        if partial:
            headers["X-Slidemap-Partial"] = f"computed={partial[0]}; missing={partial[1]}"
            cache_control = "no-store"
        else:
            t3 = time.perf_counter()
            if not self.cache.put(key, content) and self.cache.enabled:
                headers["X-Cache"] = "MISS, NOT-STORED"
            timing["cache"] = time.perf_counter() - t3
        timing["total"] = time.perf_counter() - t0
        headers["Server-Timing"] = ", ".join(f"{k};dur={v * 1000:.2f}" for k, v in timing.items())
        return TileResult(content, FORMATS[fmt], etag_for(content), cache_control, headers)

    # ---- file-backed layers --------------------------------------------------------------------
    def _file(self, layer: Layer, state: InputState, tms: morecantile.TileMatrixSet, z: int, x: int, y: int,
              size: int) -> ImageData | None:
        try:
            with Reader(str(state.path), tms=tms) as src:
                img = read_tile(src, tms, Tile(x, y, z), size, indexes=layer.indexes,
                                reproject_method=layer.resampling, resampling_method=layer.resampling)
        except (RasterioError, OSError) as exc:
            raise self.registry.report_fault(state, exc) from exc
        if img is None:
            return None
        if layer.categorical:
            img = _as_categorical(img)
        return img

    # ---- computed layers ----------------------------------------------------------------------
    def _engine(self, layer: Layer, info: ModelInfo, catalog: Catalog | None) -> BlockEngine:
        return self.registry.engine(layer, info, catalog)

    def reader(self, layer: Layer, info: ModelInfo, catalog: Catalog | None = None, tms: morecantile.TileMatrixSet | None = None,
               cancel: threading.Event | None = None) -> BlockEngineReader:
        """The computed layer's values as a rio-tiler reader over its block engine: tiles, extracts
        and /point all read through it, under this service's per-request budget."""
        return BlockEngineReader(
            self._engine(layer, info, catalog), tms=tms or get_tms("WebMercatorQuad"), name=layer.id,
            max_blocks=self.max_blocks, fail_over_budget=self.over_budget == "error",
            retry_after=self.registry.executor.retry_after, cancel=cancel,
            unreadable=lambda exc: self.registry.report_fault(self.registry.input_state(layer, catalog),
                                                              RuntimeError(exc.detail)))

    def _computed(
        self, layer: Layer, info: ModelInfo, tms: morecantile.TileMatrixSet, z: int, x: int, y: int, size: int,
        breaks: list[float] | None, cancel: threading.Event | None = None, catalog: Catalog | None = None,
    ) -> tuple[ImageData | None, tuple[int, int] | None, dict[str, float]]:
        try:
            img = self.reader(layer, info, catalog, tms, cancel).tile(x, y, z, tilesize=size)
        except TileOutsideBounds:
            return None, None, {}
        partial, timing = img.metadata.get("partial"), dict(img.metadata.get("timing") or {})
        if layer.output == "class":
            assert breaks is not None
            classes = self.registry.classify(img.array.filled(np.nan), breaks)
            img = ImageData(np.ma.MaskedArray(classes, mask=classes == 0), bounds=img.bounds, crs=img.crs)
        return img, partial, timing

    # ---- points -------------------------------------------------------------------------------
    def computed_value(self, layer: Layer, lon: float, lat: float, info: ModelInfo | None = None,
                       cancel: threading.Event | None = None) -> float | None:
        info = info or self.registry.model_info(layer)
        try:
            point = self.reader(layer, info, cancel=cancel).point(lon, lat)
        except PointOutsideBounds:
            return None
        return None if bool(point.array.mask[0]) else float(point.array.data[0])


def data_tag(data_version: str) -> str:
    """The short tag of a data version that tile URLs carry as ``v=`` (pins everything a tile is made of)."""
    return hashlib.sha256(data_version.encode()).hexdigest()[:16]


def _fingerprint_now(path: Path) -> str | None:
    try:
        return file_fingerprint(path)
    except OSError:
        return None


def lonlat_to(crs, lon: float, lat: float) -> tuple[float, float] | None:
    """``(x, y)`` of a WGS84 point in ``crs``, or None where the CRS cannot represent it (far
    outside a projection's valid area PROJ answers inf, or an error, depending on the projection)."""
    try:
        x, y = _from_lonlat(crs.to_wkt()).transform(lon, lat, errcheck=False)
    except Exception:  # noqa: BLE001 - any PROJ failure means: not representable here
        return None
    if not (math.isfinite(x) and math.isfinite(y)):
        return None
    return float(x), float(y)


@functools.lru_cache(maxsize=16)
def _from_lonlat(wkt: str):
    from pyproj import Transformer

    return Transformer.from_crs("EPSG:4326", wkt, always_xy=True)
