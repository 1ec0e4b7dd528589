"""Data out: a layer's values over a bounding box as one GeoTIFF (as titiler's ``/bbox`` does).

The extract is on the layer's own grid (its native CRS and cell size; no resampling), so its values
are exactly the layer's data: factor values in physical units, model probabilities (computed through
the block engine, as tiles are), or class codes for class layers (with the colour table inside).
Its size is bounded (``engine_reader.MAX_CELLS``) and a computed layer may need at most the per-request block
budget of the server; beyond either the answer is a 422 that says what to do.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import rasterio
from geojson_pydantic import MultiPolygon, Polygon
from pydantic import Field, TypeAdapter, ValidationError
from rasterio.io import MemoryFile

from slidemap.compute.region.grid import Grid
from slidemap.server.engine_reader import grid_window
from slidemap.server.errors import BadTileRequest

# What /feature.tif takes: GeoJSON's (Multi)Polygon, told apart by its case-sensitive "type".
_WGS84_POLYGON = TypeAdapter(Annotated[Polygon | MultiPolygon, Field(discriminator="type")])


@dataclass
class Extract:
    data: np.ndarray  # [bands, rows, cols]
    grid: Grid
    nodata: float | int
    band_names: list[str]
    colormap: dict[int, tuple[int, int, int, int]] | None
    tags: dict[str, str]

    def to_geotiff(self) -> bytes:
        profile = self.grid.profile(count=self.data.shape[0], dtype=self.data.dtype.name, nodata=self.nodata)
        profile.update(driver="GTiff", tiled=self.grid.width >= 256 and self.grid.height >= 256,
                       compress="DEFLATE")
        with MemoryFile() as mem:
            with mem.open(**profile) as dst:
                dst.write(self.data)
                for i, name in enumerate(self.band_names, start=1):
                    dst.set_band_description(i, name)
                if self.colormap:
                    dst.write_colormap(1, self.colormap)
                dst.update_tags(**self.tags)
            return mem.read()


def extract_bbox(service, layer_id: str, bbox: tuple[float, float, float, float], model: str | None = None,
                 cancel: threading.Event | None = None) -> Extract:
    registry = service.registry
    catalog = registry.refresh()
    layer = registry.get(layer_id, catalog)
    state = registry.check_input(layer, catalog)
    info, data_version = service.resolve(layer, model, catalog)
    tags = {"layer": layer.id, "units": layer.units or "", "data_version": data_version,
            "synthetic": str(bool(registry.synthetic)).lower()}
    colormap = None
    if layer.categorical and layer.colormap:
        colormap = {int(k): tuple(int(c) for c in v) for k, v in layer.colormap.items()}
    if not layer.computed:
        grid = registry.grid_of(layer, catalog)
        win = grid_window(grid, bbox)
        with rasterio.open(state.path) as src:
            data = src.read(list(layer.indexes), window=win, out_dtype="float32")
        names = [layer.id.split("/", 1)[-1]] if len(layer.indexes) == 1 else [f"band{i}" for i in layer.indexes]
        out_grid = grid.window_grid(int(win.row_off), int(win.col_off), int(win.height), int(win.width))
        return Extract(data, out_grid, float("nan"), names, None, tags)
    assert info is not None
    tags.update(model=info.name, model_version=info.version)
    img = service.reader(layer, info, catalog, cancel=cancel).part(bbox)
    out_grid = Grid(img.crs, img.transform, img.width, img.height)
    values = img.array.data.astype(np.float32)
    if layer.output == "class":
        classes = registry.classify(values[0], registry.class_breaks(info))
        return Extract(classes[None], out_grid, 0, [layer.id.replace("/", "_")], colormap, tags)
    return Extract(values, out_grid, float("nan"), [layer.id.replace("/", "_")], None, tags)


def extract_feature(service, layer_id: str, geometry: dict, model: str | None = None,
                    cancel: threading.Event | None = None) -> Extract:
    """The layer's values inside a WGS84 (Multi)Polygon: its bounding box's extract with the cells
    outside the polygon set to no data (as titiler's ``/feature``)."""
    from rasterio.features import geometry_mask
    from rasterio.warp import transform_geom
    from shapely.geometry import box, mapping, shape

    # GeoJSON's own rules, strictly (RFC 7946): exactly "Polygon" or "MultiPolygon" (shapely's shape()
    # ignores case and unwraps a Feature), closed rings of four or more positions, and coordinates that
    # are JSON numbers (lax parsing reads true as 1 and "7.5" as 7.5).
    try:
        # JSON mode, as the client wrote it: strict Python mode would refuse a "bbox" array (not a tuple).
        _WGS84_POLYGON.validate_json(json.dumps(geometry), strict=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise BadTileRequest(f"not a GeoJSON Polygon or MultiPolygon in WGS84 (type names as GeoJSON writes "
                             f"them, coordinates as numbers): {where + ': ' if where else ''}{first['msg']}"[:300]) from None
    try:
        geom = shape(geometry)
    except Exception as exc:  # noqa: BLE001 - any malformed GeoJSON is the client's to fix
        raise BadTileRequest(f"not a GeoJSON geometry ({str(exc)[:120]})") from exc
    if geom.geom_type not in ("Polygon", "MultiPolygon") or geom.is_empty or not geom.is_valid:
        raise BadTileRequest(f"give one valid Polygon or MultiPolygon in WGS84 (got {geom.geom_type}"
                             f"{', invalid' if not geom.is_valid else ''})")
    # Beyond WGS84's range PROJ fails (or answers garbage); say which coordinate is wrong, as /bbox does.
    w, s, e, n = geom.bounds
    if not (-180 <= w and e <= 180):
        raise BadTileRequest(f"longitudes must be within -180..180 degrees (the polygon spans {w:g}..{e:g})")
    if not (-90 <= s and n <= 90):
        raise BadTileRequest(f"latitudes must be within -90..90 degrees (the polygon spans {s:g}..{n:g})")
    out = extract_bbox(service, layer_id, (w, s, e, n), model, cancel)
    # GeoJSON edges are straight in WGS84 (RFC 7946) but only vertices are reprojected, so an edge
    # from far away lands anywhere: reproject the polygon's part over the extract, densified.
    west, south, east, north = out.grid.bounds_in("EPSG:4326")
    part = geom.intersection(box(west, south, east, north)).segmentize(max(east - west, north - south) / 256)
    if part.is_empty:  # the polygon's box overlaps the layer but the polygon does not
        outside = np.ones(out.data.shape[1:], dtype=bool)
    else:
        try:
            # shapely's own GeoJSON: the canonical type and float coordinates, whatever the client wrote.
            native = transform_geom("EPSG:4326", out.grid.crs, mapping(part))
        except Exception as exc:  # noqa: BLE001 - PROJ/GDAL failing on the client's polygon is the client's to fix
            raise BadTileRequest(f"the polygon cannot be reprojected to the layer's CRS ({str(exc)[:120]})") from exc
        outside = geometry_mask([native], out_shape=out.data.shape[1:], transform=out.grid.transform)
    data = out.data.copy()
    data[:, outside] = out.nodata
    out.data = data
    out.tags["feature"] = "cells outside the polygon are no data"
    return out
