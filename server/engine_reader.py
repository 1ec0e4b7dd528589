"""rio-tiler's reader interface over a computed layer's block engine.

A computed layer (detection, susceptibility) has no file to open: its values are blocks a model
computes on request and the block engine stores. :class:`BlockEngineReader` gives it rio-tiler's
``BaseReader`` interface, as ``rio_tiler.io.Reader`` does for a COG, so every way of reading it goes
through one place: the server's tiles (``tile``), box and polygon extracts (``part``, ``feature``),
``/point`` (``point``), ``info`` and ``preview`` / ``statistics``. Each read computes only the blocks
it needs, within the per-request budget (more is an :class:`OverBudget`; a full queue is
:class:`QueueFull`), and drops queued work when ``cancel`` is set (the client went away).

Tiles come back with ``metadata["partial"]`` (blocks computed, blocks still missing) when the budget
or the queue left some out, and ``metadata["timing"]`` (read, halo, model, store, warp seconds).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import attr
import numpy as np
from morecantile import Tile, TileMatrixSet
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds
from rio_tiler.constants import WEB_MERCATOR_TMS, WGS84_CRS
from rio_tiler.errors import PointOutsideBounds, TileOutsideBounds
from rio_tiler.io import BaseReader, Reader
from rio_tiler.models import BandStatistics, ImageData, Info, PointData

from slidemap.compute.maps.blocks import BlockEngine, QueueFull
from slidemap.compute.maps.blocks import InputUnreadable as BlockInputUnreadable
from slidemap.compute.region.grid import Grid
from slidemap.server.errors import BadTileRequest, OverBudget

MAX_CELLS = 4096 * 4096  # one part (box, polygon) at native cells; more belongs to the COGs
PREVIEW_PX = 1024


def _reraise(exc: BlockInputUnreadable) -> Exception:
    return RuntimeError(exc.detail)


@attr.s
class BlockEngineReader(BaseReader):
    """A computed layer's values (one band, float32, NaN where there is none) read through its engine."""

    input: BlockEngine = attr.ib()
    tms: TileMatrixSet = attr.ib(default=WEB_MERCATOR_TMS)
    name: str = attr.ib(default="layer")  # the layer id, for messages
    max_blocks: int = attr.ib(default=64)  # model blocks one read may compute
    fail_over_budget: bool = attr.ib(default=True)  # False: a tile shows what is ready (partial) instead
    retry_after: float = attr.ib(default=1.0)
    cancel: threading.Event | None = attr.ib(default=None)
    # what a block whose input cannot be read becomes (the server reports it as the region's fault)
    unreadable: Callable[[BlockInputUnreadable], Exception] = attr.ib(default=_reraise)

    def __attrs_post_init__(self) -> None:
        grid = self.input.grid
        self.bounds = grid.bounds
        self.crs = grid.crs
        self.transform = grid.transform
        self.height, self.width = grid.height, grid.width

    # ---- computing what a read needs ------------------------------------------------------------
    def _ensure(self, blocks: list[tuple[int, int]], level: int, what: str,
                centre: tuple[float, float] | None = None) -> tuple[object, list[tuple[int, int]]]:
        engine = self.input
        missing = engine.missing_native(blocks, level)
        if centre is not None:  # nearest the centre first, so a partial tile shows its middle
            side = engine.block_size * engine.grid.res[0]
            ox, oy = engine.grid.transform.c, engine.grid.transform.f
            missing.sort(key=lambda rc: (ox + (rc[1] + 0.5) * side - centre[0]) ** 2
                         + (oy - (rc[0] + 0.5) * side - centre[1]) ** 2)
        if len(missing) > self.max_blocks and self.fail_over_budget:
            raise OverBudget(
                f"{what} of {self.name!r} needs {len(missing)} model blocks, more than the per-request budget of "
                f"{self.max_blocks}; zoom in or ask for less, or fill the cache first with "
                f"`slidemap seed REGION --layer {self.name}`"
            )
        try:
            result = engine.ensure(missing, budget=self.max_blocks, cancel=self.cancel)
        except BlockInputUnreadable as exc:
            raise self.unreadable(exc) from exc
        if result.missing and self.fail_over_budget:
            raise QueueFull(f"{self.name}: the inference queue has no room for the {len(missing)} blocks of this "
                            f"{what}; retry shortly", self.retry_after)
        return result, missing

    # ---- BaseReader ----------------------------------------------------------------------------
    def info(self) -> Info:
        return Info(bounds=self.bounds, crs=self.crs.to_string(), band_metadata=[("b1", {})],
                    band_descriptions=[("b1", self.name)], dtype="float32", nodata_type="Nodata",
                    colorinterp=["gray"])

    def tile(self, tile_x: int, tile_y: int, tile_z: int, tilesize: int = 256, **kwargs) -> ImageData:
        """One map tile of the layer (nearest cells from the overview level that fits the zoom)."""
        from slidemap.server.tiles import native_extent, read_tile

        engine = self.input
        extent = native_extent(engine, self.tms, self.tms.xy_bounds(Tile(tile_x, tile_y, tile_z)), tilesize)
        if extent is None:
            raise TileOutsideBounds(f"tile {tile_z}/{tile_x}/{tile_y} is outside {self.name}")
        level, margin_bounds, native_bounds = extent
        blocks = engine.blocks_for_bounds(margin_bounds, level)
        centre = ((native_bounds[0] + native_bounds[2]) / 2, (native_bounds[1] + native_bounds[3]) / 2)
        result, _ = self._ensure(blocks, level, f"tile {tile_z}/{tile_x}/{tile_y}", centre)
        t0 = time.perf_counter()
        arr, grid, complete = engine.mosaic(margin_bounds, level)
        t1 = time.perf_counter()
        timing = {"read": result.timings.read + (t1 - t0), "halo": result.timings.halo,
                  "model": result.timings.model, "store": result.timings.store}
        with MemoryFile() as mem:
            with mem.open(driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="float32",
                          crs=grid.crs, transform=grid.transform, nodata=float("nan")) as ds:
                ds.write(arr, 1)
            # tolerance ~0: exact per-pixel reprojection (GDAL's default approximates the transform to
            # 1/8 pixel, which moves nearest-neighbour ties with the extent of the warped window).
            with Reader(mem.name, tms=self.tms, options={"vrt_options": {"tolerance": 1e-6}}) as src:
                img = read_tile(src, self.tms, Tile(tile_x, tile_y, tile_z), tilesize,
                                reproject_method="nearest", resampling_method="nearest")
        timing["warp"] = time.perf_counter() - t1
        if img is None:
            raise TileOutsideBounds(f"tile {tile_z}/{tile_x}/{tile_y} is outside {self.name}")
        partial = None
        if result.missing:
            partial = (result.computed, len(result.missing))
        elif not complete:  # blocks another request is still computing
            still = len(engine.missing_native(blocks, level))
            partial = (result.computed, still) if still else None
        img.metadata = {**img.metadata, "partial": partial, "timing": timing}
        return img

    def window(self, bbox: tuple[float, float, float, float], bounds_crs: CRS = WGS84_CRS) -> Window:
        """The native cells ``bbox`` covers (whole cells, clipped to the layer); a 4xx when it misses."""
        return grid_window(Grid(self.crs, self.transform, self.width, self.height), bbox, bounds_crs)

    def part(self, bbox: tuple[float, float, float, float], bounds_crs: CRS = WGS84_CRS, **kwargs) -> ImageData:
        """The layer's native cells over ``bbox`` (no resampling), computed within the budget."""
        engine = self.input
        win = self.window(bbox, bounds_crs)
        out = engine.grid.window_grid(int(win.row_off), int(win.col_off), int(win.height), int(win.width))
        self._ensure(engine.blocks_for_bounds(out.bounds, 0), 0, "box")
        arr, mosaic_grid, _ = engine.mosaic(out.bounds, 0)
        r0 = round((mosaic_grid.transform.f - out.transform.f) / engine.grid.res[1])
        c0 = round((out.transform.c - mosaic_grid.transform.c) / engine.grid.res[0])
        values = arr[r0 : r0 + out.height, c0 : c0 + out.width].astype(np.float32)
        masked = np.ma.MaskedArray(values[None], mask=~np.isfinite(values[None]))
        return ImageData(masked, bounds=out.bounds, crs=self.crs, band_names=["b1"], band_descriptions=[self.name])

    def feature(self, shape: dict, shape_crs: CRS = WGS84_CRS, **kwargs) -> ImageData:
        """The cells inside a (Multi)Polygon; those outside are masked."""
        from rasterio.features import bounds as feature_bounds, geometry_mask
        from rasterio.warp import transform_geom

        geometry = shape.get("geometry", shape)
        img = self.part(feature_bounds(geometry), shape_crs)
        native = transform_geom(shape_crs, self.crs, geometry)
        outside = geometry_mask([native], out_shape=img.array.shape[1:], transform=img.transform)
        img.array.mask = img.array.mask | outside[None]
        return img

    def point(self, lon: float, lat: float, coord_crs: CRS = WGS84_CRS, **kwargs) -> PointData:
        """The value of the cell at a location (its block computed if need be, without a budget)."""
        from slidemap.server.tiles import lonlat_to

        grid = self.input.grid
        xy = lonlat_to(grid.crs, lon, lat) if coord_crs == WGS84_CRS else (lon, lat)
        if xy is None:
            raise PointOutsideBounds(f"{lon}, {lat} is outside {self.name}")
        rows, cols = grid.rowcol(np.array([xy[0]]), np.array([xy[1]]))
        if not grid.contains(rows, cols)[0]:
            raise PointOutsideBounds(f"{lon}, {lat} is outside {self.name}")
        try:
            value = self.input.value_at(int(rows[0]), int(cols[0]), budget=None, cancel=self.cancel)
        except BlockInputUnreadable as exc:
            raise self.unreadable(exc) from exc
        arr = np.ma.MaskedArray([np.float32(value)], mask=[not math.isfinite(value)])
        return PointData(arr, band_names=["b1"], coordinates=(lon, lat), crs=coord_crs,
                         pixel_location=(int(cols[0]), int(rows[0])))

    def preview(self, max_size: int = PREVIEW_PX, **kwargs) -> ImageData:
        """The whole layer at the overview level that fits ``max_size`` pixels (within the budget)."""
        engine = self.input
        native = engine.grid.res[0]
        level = engine.level_for_resolution(native * max(engine.grid.width, engine.grid.height) / max_size)
        self._ensure(engine.blocks_for_bounds(engine.grid.bounds, level), level, "preview")
        arr, grid, _ = engine.mosaic(engine.grid.bounds, level)
        masked = np.ma.MaskedArray(arr[None].astype(np.float32), mask=~np.isfinite(arr[None]))
        return ImageData(masked, bounds=grid.bounds, crs=self.crs, band_names=["b1"], band_descriptions=[self.name])

    def statistics(self, **kwargs) -> dict[str, BandStatistics]:
        """Statistics of the preview (rio-tiler's, with its options)."""
        return self.preview().statistics(**kwargs)


def grid_window(grid: Grid, bbox: tuple[float, float, float, float], bounds_crs: CRS = WGS84_CRS) -> Window:
    """Whole cells of ``grid`` under ``bbox`` (in ``bounds_crs``), clipped to the grid; a 4xx when the box
    is malformed, misses the grid or holds more than :data:`MAX_CELLS`. The one rule for computed and
    file layers' extracts."""
    west, south, east, north = bbox
    if not (west < east and south < north):
        raise BadTileRequest(f"bbox {bbox}: give west,south,east,north with west < east and south < north")
    # clip to the layer first: a box far larger than the region (the whole world) does not
    # transform into a projected CRS, but its part over the region does
    lw, ls, le, ln = transform_bounds(grid.crs, bounds_crs, *grid.bounds, densify_pts=21)
    west, south, east, north = max(west, lw), max(south, ls), min(east, le), min(north, ln)
    if not (west < east and south < north):
        raise BadTileRequest(f"bbox {bbox} does not overlap the layer (its bounds are in /layers)")
    native = transform_bounds(bounds_crs, grid.crs, west, south, east, north, densify_pts=21)
    raw = from_bounds(*native, transform=grid.transform)
    c0, r0 = max(0, math.floor(raw.col_off)), max(0, math.floor(raw.row_off))
    c1 = min(grid.width, math.ceil(raw.col_off + raw.width))
    r1 = min(grid.height, math.ceil(raw.row_off + raw.height))
    if c1 <= c0 or r1 <= r0:
        raise BadTileRequest(f"bbox {bbox} does not overlap the layer (its bounds are in /layers)")
    win = Window(c0, r0, c1 - c0, r1 - r0)
    if win.width * win.height > MAX_CELLS:
        raise OverBudget(f"bbox {bbox} covers {int(win.width)} x {int(win.height)} cells, more than "
                         f"{MAX_CELLS:,}; ask for a smaller box, or use the COGs under build/ and maps/")
    return win
