"""Which metatiles a seed reads, and which tiles each one makes.

A metatile is an aligned N x N block of tiles at one zoom (N a power of two), read and warped
once. With the pyramid on, a metatile read at zoom z also makes the tiles of z-1 .. z-log2(N)
that lie inside it by halving its data (an aligned 8 x 8 block at z is exactly one tile at z-3),
so a range of zooms reads the source only at every (log2(N)+1)-th zoom. Metatiles never share a
tile, so every task is independent of every other: they can run in any order, anywhere.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import morecantile

Tile3 = tuple[int, int, int]

METATILE_SIZES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class Meta:
    """Tiles x0..x0+nx-1, y0..y0+ny-1 read at zoom ``z``; ``levels`` coarser zooms derived from it;
    ``tiles``: the wanted tiles (of every zoom it makes), the rest of the block is not written."""

    z: int
    x0: int
    y0: int
    nx: int
    ny: int
    levels: int
    tiles: tuple[Tile3, ...]


def read_zooms(zooms: tuple[int, int], n: int, pyramid: bool) -> list[tuple[int, int]]:
    """(zoom read from the source, coarser zooms derived from it), finest first."""
    lo, hi = zooms
    if not pyramid or n == 1:
        return [(z, 0) for z in range(hi, lo - 1, -1)]
    step = n.bit_length() - 1  # log2(n)
    out = []
    z = hi
    while z >= lo:
        levels = min(step, z - lo)
        out.append((z, levels))
        z -= levels + 1
    return out


def plan(tms: morecantile.TileMatrixSet, tiles: list[Tile3], zooms: tuple[int, int], n: int,
         pyramid: bool) -> list[Meta]:
    """The metatiles that make exactly ``tiles``."""
    pyramid = pyramid and tms.is_quadtree  # halving needs each tile to have 2 x 2 children
    by_zoom: dict[int, list[Tile3]] = defaultdict(list)
    for t in tiles:
        by_zoom[t[0]].append(t)
    metas: list[Meta] = []
    for z, levels in read_zooms(zooms, n, pyramid):
        m = tms.matrix(z)
        blocks: dict[tuple[int, int], list[Tile3]] = defaultdict(list)
        for k in range(levels + 1):
            for t in by_zoom.get(z - k, []):
                # The tile's footprint at the read zoom starts at (x << k, y << k).
                blocks[((t[1] << k) // n, (t[2] << k) // n)].append(t)
        for (bx, by), members in sorted(blocks.items()):
            x0, y0 = bx * n, by * n
            nx, ny = min(n, m.matrixWidth - x0), min(n, m.matrixHeight - y0)
            metas.append(Meta(z, x0, y0, nx, ny, levels, tuple(sorted(members))))
    return metas
