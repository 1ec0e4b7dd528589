"""The one archive a seed writes: MBTiles 1.3 (SQLite) or PMTiles v3, written by one process.

Tiles are added as workers hand them back; the archive is built in a temporary file beside
``out`` and renamed into place only when the seed finishes, so a failed or interrupted seed
leaves the previous archive (or nothing) and never half an archive.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from slidemap.compute import provenance
from slidemap.compute.region.raster_io import atomic_path


def archive_metadata(service, layer, zooms: tuple[int, int], fmt: str) -> dict[str, Any]:
    w, s, e, n = service.registry.grid_of(layer).bounds_in("EPSG:4326")
    synthetic = service.registry.synthetic
    desc = layer.description + provenance.sentence(synthetic)
    return {
        "name": layer.title, "format": fmt, "type": "overlay", "version": "1.3",
        "description": desc, "attribution": "slidemap" + provenance.suffix(synthetic),
        "bounds": [w, s, e, n], "center": [(w + e) / 2, (s + n) / 2, zooms[1]],
        "minzoom": int(zooms[0]), "maxzoom": int(zooms[1]),
    }


class ArchiveWriter:
    """``with ArchiveWriter(out, kind, meta, fmt) as w: w.add(z, x, y, data)`` (XYZ addressing)."""

    def __init__(self, out: Path, kind: str, meta: dict[str, Any], fmt: str) -> None:
        self.out, self.kind, self.meta, self.fmt = Path(out), kind, meta, fmt
        self._stack = contextlib.ExitStack()
        self._conn: sqlite3.Connection | None = None
        self._pm: list[tuple[int, bytes]] = []
        self.count = 0

    def __enter__(self) -> ArchiveWriter:
        self._tmp = self._stack.enter_context(atomic_path(self.out, suffix=f".{self.kind}"))
        if self.kind == "mbtiles":
            self._conn = sqlite3.connect(self._tmp)
            # A scratch file until it is renamed: no journal, no syncs (a crash leaves only a temp file).
            self._conn.execute("PRAGMA journal_mode=OFF")
            self._conn.execute("PRAGMA synchronous=OFF")
            self._conn.execute("CREATE TABLE metadata (name text, value text)")
            self._conn.execute("CREATE TABLE tiles (zoom_level integer, tile_column integer, tile_row integer, "
                               "tile_data blob)")
        return self

    def add_many(self, tiles: list[tuple[int, int, int, bytes]]) -> None:
        if self._conn is not None:
            # MBTiles rows count from the south.
            self._conn.executemany("INSERT INTO tiles VALUES (?, ?, ?, ?)",
                                   [(z, x, (2**z - 1) - y, sqlite3.Binary(d)) for z, x, y, d in tiles])
        else:
            from pmtiles.tile import zxy_to_tileid

            self._pm.extend((zxy_to_tileid(z, x, y), d) for z, x, y, d in tiles)
        self.count += len(tiles)

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            if self._conn is not None:
                self._conn.close()
            self._stack.__exit__(exc_type, exc, tb)  # renames on success, removes the temp file otherwise

    def _finish(self) -> None:
        meta = self.meta
        if self._conn is not None:
            # MBTiles 1.3: every metadata value is text.
            text = {k: ",".join(str(x) for x in v) if isinstance(v, list) else str(v) for k, v in meta.items()}
            self._conn.executemany("INSERT INTO metadata VALUES (?, ?)", list(text.items()))
            self._conn.execute("CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row)")
            self._conn.commit()
        else:
            from pmtiles.tile import Compression, TileType
            from pmtiles.writer import write

            w, s, e, n = meta["bounds"]
            with write(str(self._tmp)) as writer:
                for tileid, data in sorted(self._pm, key=lambda t: t[0]):
                    writer.write_tile(tileid, data)
                header = {
                    "tile_type": TileType.PNG if self.fmt == "png" else TileType.WEBP,
                    "tile_compression": Compression.NONE,
                    "min_zoom": meta["minzoom"], "max_zoom": meta["maxzoom"],
                    "min_lon_e7": int(w * 1e7), "min_lat_e7": int(s * 1e7),
                    "max_lon_e7": int(e * 1e7), "max_lat_e7": int(n * 1e7),
                    "center_zoom": meta["maxzoom"],
                    "center_lon_e7": int((w + e) / 2 * 1e7), "center_lat_e7": int((s + n) / 2 * 1e7),
                }
                writer.finalize(header, meta)
        self._tmp.chmod(0o644)  # an archive to hand out, not a private temp file
