"""Tile pixels and their encoding: the one place 8-bit PNG and WebP tiles are made, for the
server's tiles and for seeding alike.

:func:`block_pixels` applies a layer's rescale or colormap to an image (one tile, or a seeding
metatile at once) with the rio-tiler / titiler steps of ``titiler.core.utils.render_image``, up
to the encoder (every step is per pixel, so cutting a metatile after colouring gives each tile's
pixels). :func:`encode` writes a tile with Pillow in the smallest PNG kind that decodes to the same
RGBA: class layers become palette PNGs (one byte per pixel) and tiles with no transparent pixel drop
the alpha channel (RGB or grey). Images that would not end in 8 bits (a 16-bit PNG) go to titiler's
own renderer (``tiles._image_to_bytes``).

The default compression is zlib's run-length strategy (``Z_RLE``) after PNG's row filters: the
filters leave small residuals in imagery, which RLE + Huffman coding packs about as well as a full
LZ77 search at a fraction of the time (on real Sentinel-2 tiles 2.6x faster than zlib level 4 for
1 % fewer bytes, 3.4x faster than GDAL's PNG driver at level 6, titiler's encoder:
``benchmarks/bench_png.py``).
"""
from __future__ import annotations

import io
import warnings
import zlib
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from rio_tiler.colormap import apply_cmap, cmap
from rio_tiler.models import ImageData
from rasterio.dtypes import dtype_ranges
from titiler.core.resources.enums import ImageType
from titiler.core.utils import rescale_array


WEBP_QUALITY = int(ImageType.webp.profile.get("quality", 75))  # the server's WebP quality
PngLevel = int | Literal["rle"]  # a zlib level (0-9, default strategy) or run-length coding
DEFAULT_PNG_LEVEL: PngLevel = "rle"


@dataclass(frozen=True)
class Encoding:
    fmt: str  # png | webp
    png_level: PngLevel = DEFAULT_PNG_LEVEL
    palette: bool = True  # class (colormap) layers as palette PNGs

    def png_options(self) -> dict[str, int]:
        """Pillow's ``save`` options for this compression."""
        if self.png_level == "rle":
            return {"compress_level": 1, "compress_type": zlib.Z_RLE}  # any level > 0: RLE ignores it
        return {"compress_level": self.png_level}


@dataclass
class Pixels:
    """A block's output pixels: ``data`` (bands, H, W) uint8, ``alpha`` (H, W) uint8, and for
    colormap layers the class ``codes`` (H, W) uint8 the colours were looked up from."""

    data: np.ndarray
    alpha: np.ndarray
    codes: np.ndarray | None = None


def block_pixels(img: ImageData, layer, params) -> Pixels | None:
    """The rendering of ``img`` up to the encoder; None where it would not end in 8-bit grey or RGB
    (then the caller renders with titiler's own function).

    Only the window around the data is coloured (a block at a region's edge is mostly empty);
    pixels outside it are transparent black."""
    b, h, w = img.array.shape
    win = valid_window(img.array)
    if win is None:
        return Pixels(np.zeros((b if b == 3 else 1, h, w), np.uint8), np.zeros((h, w), np.uint8))
    r0, r1, c0, c1 = win
    # A copy: rio-tiler rescales in place, and the block's data still has coarser zooms to make.
    px = _window_pixels(ImageData(img.array[:, r0:r1, c0:c1].copy(), crs=img.crs,
                                  dataset_statistics=img.dataset_statistics), layer, params)
    if px is None:
        return None
    data = np.zeros((px.data.shape[0], h, w), np.uint8)
    alpha = np.zeros((h, w), np.uint8)
    data[:, r0:r1, c0:c1] = px.data
    alpha[r0:r1, c0:c1] = px.alpha
    codes = None
    if px.codes is not None:
        codes = np.zeros((h, w), np.uint8)
        codes[r0:r1, c0:c1] = px.codes
    return Pixels(data, alpha, codes)


def _window_pixels(img: ImageData, layer, params) -> Pixels | None:
    # rio-tiler casts a NaN fill value to the output dtype ("invalid value encountered in cast").
    # catch_warnings swaps the process-wide filters, so a tile rendered in another thread can leave
    # the block early and let the warning through; numpy's errstate is per thread (a context variable).
    with warnings.catch_warnings(), np.errstate(invalid="ignore"):
        warnings.simplefilter("ignore")
        codes = None
        rescale = None
        if layer.colormap is not None:
            colormap = layer.colormap
            codes = img.array.data[0] if img.array.dtype == np.uint8 and img.count == 1 else None
        else:
            rescale = params.rescale or layer.rescale
            name = params.colormap_name or layer.colormap_name
            colormap = cmap.get(name) if name else None
            if rescale:
                img, rescale = orient_rescale(img, rescale)
        # titiler.core.utils.render_image from here on, minus the encoder.
        if rescale:
            img.rescale(rescale)
        data, mask = img.data, img.mask
        input_range = _dtype_range(data.dtype)
        output_range = img.dataset_statistics or (input_range,)
        if colormap:
            data, alpha_from_cmap = apply_cmap(data, colormap)
            output_range = (_dtype_range(data.dtype),)
            mask = np.where(mask != input_range[0], alpha_from_cmap, output_range[0][0]).astype(data.dtype)
        if data.dtype != np.uint8:
            if data.dtype == np.uint16:
                return None  # a 16-bit PNG: the server's encoder keeps it
            data = rescale_array(data, mask, in_range=output_range)
    if data.dtype != np.uint8 or data.shape[0] not in (1, 3):
        return None
    return Pixels(np.ascontiguousarray(data), np.ascontiguousarray(mask.astype(np.uint8)), codes)


def orient_rescale(img: ImageData, rescale: tuple[tuple[float, float], ...]) -> tuple[ImageData, tuple[tuple[float, float], ...]]:
    """rio-tiler rescales ``min < max`` only: ``max < min`` (a reversed ramp) becomes the negated
    band over the negated range, ``min == max`` a step at that value (below: 0, from it on: 255)."""
    n = img.count
    pairs = [rescale[i] if len(rescale) == n else rescale[0] for i in range(n)]  # rio-tiler's own rule
    if all(lo < hi for lo, hi in pairs):
        return img, rescale
    data = img.array.astype(np.float64)
    out = []
    for b, (lo, hi) in enumerate(pairs):
        if lo > hi:
            data[b] = -data[b]
            out.append((-lo, -hi))
        elif lo == hi:
            data[b] = (data[b] >= lo).astype(np.float64)
            out.append((0.0, 1.0))
        else:
            out.append((lo, hi))
    return ImageData(data, bounds=img.bounds, crs=img.crs), tuple(out)


def valid_window(arr: np.ma.MaskedArray, align: int = 1) -> tuple[int, int, int, int] | None:
    """(row0, row1, col0, col1) around every unmasked pixel, widened to multiples of ``align``."""
    valid = ~np.ma.getmaskarray(arr).all(axis=0)
    rows, cols = np.flatnonzero(valid.any(axis=1)), np.flatnonzero(valid.any(axis=0))
    if rows.size == 0:
        return None
    h, w = valid.shape
    r0, c0 = rows[0] // align * align, cols[0] // align * align
    r1 = min(h, -(-(rows[-1] + 1) // align) * align)
    c1 = min(w, -(-(cols[-1] + 1) // align) * align)
    return int(r0), int(r1), int(c0), int(c1)


def _dtype_range(dtype) -> tuple[float, float]:
    return dtype_ranges[str(dtype)]


def tile_pixels(px: Pixels, i: int, j: int, size: int = 256) -> Pixels:
    rows, cols = slice(j * size, (j + 1) * size), slice(i * size, (i + 1) * size)
    codes = px.codes[rows, cols] if px.codes is not None else None
    return Pixels(px.data[:, rows, cols], px.alpha[rows, cols], codes)


def encode(px: Pixels, enc: Encoding) -> bytes:
    """One tile's bytes: PNG (grey or RGB, with alpha where a pixel is transparent, or palette) or
    WebP (RGBA, the server's quality)."""
    bio = io.BytesIO()
    if enc.fmt == "webp":
        rgb = px.data if px.data.shape[0] == 3 else np.repeat(px.data, 3, axis=0)  # as rio-tiler's WEBP
        Image.fromarray(_interleave(rgb, px.alpha), "RGBA").save(bio, "WEBP", quality=WEBP_QUALITY, lossless=False)
        return bio.getvalue()
    if enc.palette and px.codes is not None and px.data.shape[0] == 3:
        pal = _palette(px)
        if pal is not None:
            image = Image.fromarray(np.ascontiguousarray(px.codes), "P")
            image.putpalette(pal[:, :3].tobytes(), rawmode="RGB")
            image.save(bio, "PNG", transparency=pal[:, 3].tobytes(), **enc.png_options())
            return bio.getvalue()
    grey = px.data.shape[0] == 1
    if px.alpha.min() == 255:  # opaque: no alpha channel, a quarter fewer bytes to filter and pack
        pixels, mode = (px.data[0], "L") if grey else (np.ascontiguousarray(np.moveaxis(px.data, 0, -1)), "RGB")
    else:
        pixels, mode = _interleave(px.data, px.alpha), "LA" if grey else "RGBA"
    Image.fromarray(pixels, mode).save(bio, "PNG", **enc.png_options())
    return bio.getvalue()


def _interleave(data: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    out = np.empty(data.shape[1:] + (data.shape[0] + 1,), dtype=np.uint8)
    out[..., :-1] = np.moveaxis(data, 0, -1)
    out[..., -1] = alpha
    return out


def _palette(px: Pixels) -> np.ndarray | None:
    """A 256 x RGBA table with ``table[codes] == pixels`` everywhere, or None if a code has two
    colours in this tile (then the tile is written as RGBA, never a palette that changes it).
    Transparent pixels count as transparent black, whatever colour is under them."""
    assert px.codes is not None
    rgba = _interleave(px.data, px.alpha)
    rgba[px.alpha == 0] = 0
    table = np.zeros((256, 4), dtype=np.uint8)
    table[px.codes.ravel()] = rgba.reshape(-1, 4)
    if not np.array_equal(table[px.codes], rgba):
        return None
    return table
