"""Metatile reads for seeding: one warp for an N x N block of tiles, then tiles cut from it.

A block is tile-aligned (its pixel grid is the tiles' pixel grid), so a pixel of the block is
the pixel the server's per-tile read makes, up to GDAL's approximate transformer (1/8 pixel)
for bilinear layers; nearest-neighbour computed layers use an exact transform and match.

:func:`downsample2x` builds a coarser zoom from a finer block's *data* (before rescaling or
colouring), the way gdal2tiles builds its overview tiles: each coarse pixel is the mean of its
valid 2 x 2 children.
"""

from __future__ import annotations


import morecantile
import numpy as np
from morecantile import Tile
from rasterio.io import MemoryFile
from rio_tiler.io import Reader
from rio_tiler.models import ImageData

from slidemap.compute.maps.blocks import InputUnreadable as BlockInputUnreadable
from slidemap.server.tile_encode import valid_window
from slidemap.server.tiles import _as_categorical, native_extent, read_over_data

TILE = 256  # seeded tiles are @1x


def block_bounds(tms: morecantile.TileMatrixSet, z: int, x0: int, y0: int, nx: int, ny: int) -> tuple[float, ...]:
    """(left, bottom, right, top) of the tiles x0..x0+nx-1, y0..y0+ny-1 in the TMS's CRS."""
    ul = tms.xy_bounds(Tile(x0, y0, z))
    lr = tms.xy_bounds(Tile(x0 + nx - 1, y0 + ny - 1, z))
    return ul.left, lr.bottom, lr.right, ul.top


def read_block(src: Reader, tms: morecantile.TileMatrixSet, z: int, x0: int, y0: int, nx: int, ny: int,
               **kwargs) -> ImageData | None:
    """The block's pixels (masked where there is no data); None when it misses the dataset.

    As :func:`slidemap.server.tiles.read_tile`: only the pixel-aligned part of the block over the
    dataset is warped, so a block hanging far past a small region costs nothing extra.
    """
    return read_over_data(src, tms, block_bounds(tms, z, x0, y0, nx, ny), nx * TILE, ny * TILE, **kwargs)


def read_file_block(layer, path, tms: morecantile.TileMatrixSet, z: int, x0: int, y0: int, nx: int,
                    ny: int) -> ImageData | None:
    """A file-backed layer's block, read as the server reads its tiles (same bands, resampling)."""
    with Reader(str(path), tms=tms) as src:
        img = read_block(src, tms, z, x0, y0, nx, ny, indexes=layer.indexes,
                         reproject_method=layer.resampling, resampling_method=layer.resampling)
    if img is not None and layer.categorical:
        img = _as_categorical(img)
    return img


def read_computed_block(service, layer, info, tms: morecantile.TileMatrixSet, z: int, x0: int, y0: int,
                        nx: int, ny: int, breaks: list[float] | None, catalog) -> ImageData | None:
    """A computed layer's block: the server's ``TileService._computed`` for a block of tiles, with
    every missing block computed (a seed has no per-request budget)."""
    engine = service.registry.engine(layer, info, catalog)
    extent = native_extent(engine, tms, block_bounds(tms, z, x0, y0, nx, ny), nx * TILE)
    if extent is None:
        return None
    level, eb, _ = extent
    missing = engine.missing_native(engine.blocks_for_bounds(eb, level), level)
    try:
        engine.ensure(missing)
    except BlockInputUnreadable as exc:
        raise service.registry.report_fault(service.registry.input_state(layer, catalog),
                                            RuntimeError(exc.detail)) from exc
    arr, grid, _ = engine.mosaic(eb, level)
    with MemoryFile() as mem:
        with mem.open(driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="float32",
                      crs=grid.crs, transform=grid.transform, nodata=float("nan")) as ds:
            ds.write(arr, 1)
        # The server's exact transform (tolerance ~0): nearest-neighbour picks match its tiles.
        with Reader(mem.name, tms=tms, options={"vrt_options": {"tolerance": 1e-6}}) as src:
            img = read_block(src, tms, z, x0, y0, nx, ny, reproject_method="nearest", resampling_method="nearest")
    if img is not None and layer.output == "class":
        assert breaks is not None
        classes = service.registry.classify(img.array.filled(np.nan), breaks)
        img = ImageData(np.ma.MaskedArray(classes, mask=classes == 0), bounds=img.bounds, crs=img.crs)
    return img


def downsample2x(img: ImageData) -> ImageData:
    """Half the size: each pixel the mean of its valid 2 x 2 children, valid where at least two are.

    Two of four is where the coarse pixel's centre (the children's shared corner) is inside the
    data as often as not, which is where the server's direct warp of the coarser zoom draws its
    edge; averaging is what GDAL's overviews and gdal2tiles do for continuous data.
    """
    arr = img.array
    b, h, w = arr.shape
    out = np.ma.MaskedArray(np.zeros((b, h // 2, w // 2), dtype=np.float32), mask=True)
    win = valid_window(arr, 2)
    if win is not None:
        r0, r1, c0, c1 = win  # only the part with data: blocks at a region's edge are mostly empty
        sub = arr[:, r0:r1, c0:c1]
        valid = ~np.ma.getmaskarray(sub)
        data = np.where(valid, sub.data, 0).astype(np.float32, copy=False)
        # Strided adds, not reshape(...).sum(axis=(2, 4)): several times faster in NumPy.
        sums = data[:, 0::2, 0::2] + data[:, 1::2, 0::2] + data[:, 0::2, 1::2] + data[:, 1::2, 1::2]
        v = valid.view(np.uint8)
        counts = v[:, 0::2, 0::2] + v[:, 1::2, 0::2] + v[:, 0::2, 1::2] + v[:, 1::2, 1::2]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = sums / counts
        out[:, r0 // 2:r1 // 2, c0 // 2:c1 // 2] = np.ma.MaskedArray(mean, mask=counts < 2)
    return ImageData(out, bounds=img.bounds, crs=img.crs, dataset_statistics=img.dataset_statistics)


def cut(img: ImageData, i: int, j: int) -> ImageData:
    """Tile (column ``i``, row ``j``) of a block, as its own ImageData (a view, no copy)."""
    arr = img.array[:, j * TILE:(j + 1) * TILE, i * TILE:(i + 1) * TILE]
    return ImageData(arr, crs=img.crs)
