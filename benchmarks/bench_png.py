"""PNG encoding of imagery tiles: zlib levels against the run-length strategy, RGBA against RGB.

The tiles are real: the 16 first Sentinel-2 tiles of ``../shared/data/s2_landslide_chittagong``
(bands 3, 2, 1 as RGB, each stretched from its 2nd to 98th percentile to 8 bits, as a map layer's
rescale does), plus the SYNTHETIC 20 km demo imagery when ``--region`` is given. Each variant
encodes every tile 5 times with Pillow (the seeding and server encoder, ``server/tile_encode.py``);
the table gives milliseconds and kilobytes per 256 x 256 tile. ``GDAL level 6`` is titiler's own
encoder (rio-tiler's ``render`` through GDAL's PNG driver) on the same RGBA arrays.

``.venv/bin/python benchmarks/bench_png.py [--region DIR]``; writes benchmarks/results/png.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from PIL import Image
from rio_tiler.utils import render

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.machine import cpu_description as machine  # noqa: E402

CHIPS = ROOT.parent / "shared" / "data" / "s2_landslide_chittagong" / "images"
ROUNDS = 5


def stretch(rgb: np.ndarray) -> np.ndarray | None:
    """(3, H, W) float -> (H, W, 4) uint8 RGBA, opaque; None for a tile without contrast."""
    finite = rgb[np.isfinite(rgb)]
    if finite.size == 0:
        return None
    lo, hi = np.percentile(finite, (2, 98))
    if hi <= lo:
        return None
    out = np.full(rgb.shape[1:] + (4,), 255, np.uint8)
    out[..., :3] = np.moveaxis(np.clip((np.nan_to_num(rgb, nan=lo) - lo) / (hi - lo) * 255, 0, 255), 0, -1)
    return out


def chip_tiles(n: int = 16) -> list[np.ndarray]:
    tiles = []
    for path in sorted(CHIPS.glob("*.tif")):
        with rasterio.open(path) as src:
            rgba = stretch(src.read([3, 2, 1]).astype("float32"))
        if rgba is not None and rgba.shape[:2] == (256, 256):
            tiles.append(rgba)
        if len(tiles) == n:
            break
    return tiles


def region_tiles(region: Path, n: int = 16) -> list[np.ndarray]:
    with rasterio.open(region / "build" / "imagery.tif") as src:
        rgb = src.read([3, 2, 1], window=((0, 1024), (0, 1024))).astype("float32")
    return [t for i in range(4) for j in range(4)
            if (t := stretch(rgb[:, i * 256:(i + 1) * 256, j * 256:(j + 1) * 256])) is not None][:n]


def pillow(mode: str, **options) -> Callable[[np.ndarray], bytes]:
    def encode(rgba: np.ndarray) -> bytes:
        bio = io.BytesIO()
        pixels = rgba if mode == "RGBA" else np.ascontiguousarray(rgba[..., :3])
        Image.fromarray(pixels, mode).save(bio, "PNG", **options)
        return bio.getvalue()
    return encode


def gdal_level6(rgba: np.ndarray) -> bytes:
    return render(np.moveaxis(rgba[..., :3], -1, 0).copy(), mask=rgba[..., 3], img_format="PNG")


VARIANTS: list[tuple[str, Callable[[np.ndarray], bytes]]] = [
    ("GDAL level 6, RGBA (titiler's encoder)", gdal_level6),
    ("Pillow level 6, RGBA", pillow("RGBA", compress_level=6)),
    ("Pillow level 4, RGBA", pillow("RGBA", compress_level=4)),
    ("Pillow level 1, RGBA", pillow("RGBA", compress_level=1)),
    ("Pillow run-length, RGBA", pillow("RGBA", compress_level=1, compress_type=zlib.Z_RLE)),
    ("Pillow run-length, RGB (opaque tiles; the default)", pillow("RGB", compress_level=1, compress_type=zlib.Z_RLE)),
]


def measure(tiles: list[np.ndarray]) -> list[tuple[str, float, float]]:
    rows = []
    for name, encode in VARIANTS:
        encode(tiles[0])  # warm-up
        t0, size = time.perf_counter(), 0
        for _ in range(ROUNDS):
            for tile in tiles:
                size += len(encode(tile))
        n = ROUNDS * len(tiles)
        rows.append((name, (time.perf_counter() - t0) / n * 1e3, size / n / 1e3))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--region", type=Path, default=None, help="a prepared demo region (adds its imagery)")
    args = ap.parse_args()
    sets = [("real Sentinel-2 (Chittagong tiles)", chip_tiles())]
    if args.region:
        sets.append(("SYNTHETIC 20 km demo imagery", region_tiles(args.region)))
    lines = [
        "## PNG encoding of imagery tiles",
        "",
        f"- machine: {machine()}",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- command: `.venv/bin/python benchmarks/bench_png.py{' --region DIR' if args.region else ''}`",
        "- tiles: 256 x 256, bands 3-2-1 stretched 2-98 % to 8 bits, opaque; each variant encodes every tile "
        f"{ROUNDS} times (one process, one thread)",
        "",
    ]
    for label, tiles in sets:
        rows = measure(tiles)
        base_ms, base_kb = rows[0][1], rows[0][2]
        lines += [f"**{label}** ({len(tiles)} tiles)", "",
                  "| encoder | ms / tile | kB / tile | time vs GDAL level 6 | size vs GDAL level 6 |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {ms:.2f} | {kb:.1f} | {ms / base_ms:.2f}x | {kb / base_kb:.2f}x |"
                  for name, ms, kb in rows]
        lines.append("")
    out = ROOT / "benchmarks" / "results" / "png.md"
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
