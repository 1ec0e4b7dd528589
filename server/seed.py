"""Seeding: fill the block store and tile cache ahead of users, on one machine or a Dask cluster.

``slidemap seed REGION --layer detection --zoom 12-15 [--format tree|mbtiles|pmtiles] [--out PATH]
[--dask local|tcp://scheduler:8786]``

Two phases, each split into tasks:

1. **blocks** (computed layers only): every native block of the model is computed once. Tasks
   are disjoint sets of blocks, so no two workers run the model on the same cells; block writes
   are atomic and idempotent, so even a retried task is harmless.
2. **tiles**: tiles are rendered finest zoom first (coarser zooms then read persisted overview
   blocks). With ``tree`` each worker writes into the shared tile cache (the server's own
   ``REGION/cache/tiles``); with ``mbtiles``/``pmtiles`` tiles come back to the client, which
   writes one archive (MBTiles 1.3 in SQLite, PMTiles v3 converted from it by the ``pmtiles``
   package), atomically.

Workers rebuild the tile service from the region folder (nothing but paths and plain settings
travels to them), so the region and cache folders must be visible to every worker.
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import morecantile

from slidemap.compute.blocks import BLOCK_SIZE
from slidemap.compute.io import atomic_path
from slidemap.errors import InputError

TILES_PER_TASK = 64
BLOCKS_PER_TASK = 8


def parse_zoom(zoom: str | None, default: tuple[int, int]) -> tuple[int, int]:
    if not zoom:
        return default
    try:
        if "-" in zoom:
            lo, hi = (int(v) for v in zoom.split("-", 1))
        else:
            lo = hi = int(zoom)
    except ValueError:
        raise InputError(f"--zoom {zoom!r}: expected N or MIN-MAX, e.g. --zoom 8-12") from None
    if not (0 <= lo <= hi <= 24):
        raise InputError(f"--zoom {zoom!r}: needs 0 <= MIN <= MAX <= 24")
    return lo, hi


def _settings_dict(cache_dir: Path | None, block_size: int = BLOCK_SIZE) -> dict[str, Any]:
    from slidemap.server.app import ServerSettings

    # Seeding has no per-request budget or queue limit and keeps every tile it makes.
    s = ServerSettings(cache_dir=cache_dir, max_blocks_per_request=10**9, cache_size_mb=10**7,
                       max_pending_blocks=10**9, max_queue_seconds=math.inf, compute_timeout_s=24 * 3600,
                       block_size=block_size, report_device=False)
    d = asdict(s)
    d.pop("loaders")
    return d


_SERVICES: dict[tuple, Any] = {}


def _service(region: str, settings: dict[str, Any]):
    """One tile service per worker process (models load once per worker)."""
    from slidemap.server.app import ServerSettings, build_service

    key = (region, tuple(sorted((k, str(v)) for k, v in settings.items())))
    if key not in _SERVICES:
        _SERVICES[key] = build_service(Path(region), ServerSettings(**settings))
    return _SERVICES[key]


@dataclass(frozen=True)
class BlockTaskResult:
    """What one block task did: model runs (blocks computed, not found already stored), by whom."""

    ran: int
    worker: str


def compute_blocks_task(region: str, settings: dict[str, Any], layer_id: str, model: str | None,
                        blocks: list[tuple[int, int]]) -> BlockTaskResult:
    service = _service(region, settings)
    layer = service.registry.get(layer_id)
    engine = service.registry.engine(layer, service.registry.model_info(layer, model))
    ran = engine.ensure(blocks).timings.blocks
    return BlockTaskResult(ran, f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}")


def render_tiles_task(region: str, settings: dict[str, Any], layer_id: str, model: str | None, tms_id: str,
                      tiles: list[tuple[int, int, int]], fmt: str, keep: bool) -> list[tuple[int, int, int, bytes]]:
    """Render tiles through the server's own path (so the tile cache fills); return bytes if ``keep``."""
    service = _service(region, settings)
    out = []
    for z, x, y in tiles:
        result = service.tile(layer_id, tms_id, z, x, y, 1, fmt, None, model)
        if keep:
            out.append((z, x, y, result.content))
    return out


def _chunks(items: Sequence, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield list(items[i : i + n])


class _Runner:
    """Runs task lists locally or on Dask, with a progress bar."""

    def __init__(self, dask: str | None, progress: bool = True) -> None:
        self.progress = progress
        self.client = None
        self.cluster = None
        if dask:
            from dask.distributed import Client, LocalCluster

            if dask == "local":
                self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                            dashboard_address=None)
                self.client = Client(self.cluster)
                self.client.wait_for_workers(2, timeout=300)  # share the work from the first task on
            elif dask.startswith("tcp://"):
                self.client = Client(dask)
            else:
                raise InputError(f"--dask {dask!r}: use 'local' or tcp://scheduler:8786")

    def map(self, fn, args_list: list[tuple], desc: str) -> list:
        from tqdm import tqdm

        results = []
        if self.client is None:
            for args in tqdm(args_list, desc=desc, unit="task", leave=False, disable=not self.progress):
                results.append(fn(*args))
            return results
        from dask.distributed import as_completed

        futures = [self.client.submit(fn, *args, pure=False) for args in args_list]
        for fut in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="task", leave=False,
                        disable=not self.progress):
            results.append(fut.result())
        return results

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def seed(
    region: Path,
    layers: Sequence[str],
    zoom: str | None = None,
    tms_id: str = "WebMercatorQuad",
    tile_format: str = "png",
    out_format: str = "tree",
    out: Path | None = None,
    cache_dir: Path | None = None,
    dask: str | None = None,
    model: str | None = None,
    block_size: int = BLOCK_SIZE,
    progress: bool = True,
) -> SeedReport:
    """Seed ``layers``; return what was done (``str(report)`` is a one-paragraph summary)."""
    from slidemap.server.app import ServerSettings, build_service
    from slidemap.server.tiles import get_tms, zoom_range

    region = Path(region).resolve()
    if out_format not in ("tree", "mbtiles", "pmtiles"):
        raise InputError(f"--format {out_format!r}: use tree, mbtiles or pmtiles")
    if out_format != "tree":
        if out is None:
            raise InputError(f"--format {out_format} needs --out PATH for the archive")
        if tms_id != "WebMercatorQuad":
            raise InputError(f"--format {out_format} stores WebMercatorQuad tiles only; drop --tms {tms_id}")
        if len(layers) != 1:
            raise InputError(f"--format {out_format}: one archive holds one layer; seed one --layer at a time")
        if tile_format not in ("png", "webp"):
            raise InputError(f"--format {out_format}: --tile-format must be png or webp")
    settings = _settings_dict(cache_dir, block_size)
    service = build_service(region, ServerSettings(**settings))
    tms = get_tms(tms_id)
    runner = _Runner(dask, progress)
    t0 = time.perf_counter()
    report = SeedReport(service.registry.region_name, service.registry.synthetic)
    try:
        for layer_id in layers:
            layer = service.registry.get(layer_id)
            zooms = parse_zoom(zoom, zoom_range(service.registry, layer, tms))
            stats = LayerSeed(layer_id, zooms)
            if layer.computed:
                info = service.registry.model_info(layer, model)
                model = info.version  # every worker uses the same version, whatever becomes the default
                engine = service.registry.engine(layer, info)
                stats.blocks_total = engine.n_rows * engine.n_cols
                missing = engine.missing_native([(r, c) for r in range(engine.n_rows) for c in range(engine.n_cols)], 0)
                tasks = [(str(region), settings, layer_id, model, chunk) for chunk in _chunks(missing, BLOCKS_PER_TASK)]
                stats.block_tasks = len(tasks)
                for res in runner.map(compute_blocks_task, tasks, f"{layer_id}: blocks"):
                    stats.blocks_computed += res.ran
                    stats.blocks_by_worker[res.worker] += res.ran
            w, s, e, n = service.registry.grid_of(layer).bounds_in("EPSG:4326")
            tiles = [(t.z, t.x, t.y) for z in range(zooms[1], zooms[0] - 1, -1) for t in tms.tiles(w, s, e, n, [z])]
            keep = out_format != "tree"
            results: list = []
            # Finest zoom first, one zoom at a time: coarser tiles then read finished overviews.
            for z in range(zooms[1], zooms[0] - 1, -1):
                zt = [t for t in tiles if t[0] == z]
                tasks = [(str(region), settings, layer_id, model, tms_id, chunk, tile_format, keep)
                         for chunk in _chunks(zt, TILES_PER_TASK)]
                for part in runner.map(render_tiles_task, tasks, f"{layer_id}: z{z}"):
                    results.extend(part)
            if out_format != "tree":
                assert out is not None
                _write_archive(Path(out), out_format, results, service, layer, zooms, tile_format)
            stats.tiles = len(tiles)
            stats.where = str(out) if out_format != "tree" else str(service.cache.root)
            report.layers.append(stats)
    finally:
        runner.close()
    report.seconds = time.perf_counter() - t0
    return report


@dataclass
class LayerSeed:
    layer: str
    zooms: tuple[int, int]
    tiles: int = 0
    blocks_total: int = 0
    blocks_computed: int = 0  # model runs; 0 on a second run over a filled store
    block_tasks: int = 0
    blocks_by_worker: Counter = field(default_factory=Counter)
    where: str = ""


@dataclass
class SeedReport:
    region: str
    synthetic: bool
    layers: list[LayerSeed] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = []
        for s in self.layers:
            workers = f" by {len(s.blocks_by_worker)} workers" if len(s.blocks_by_worker) > 1 else ""
            lines.append(f"{s.layer}: {s.tiles} tiles, zoom {s.zooms[0]}-{s.zooms[1]}, "
                         f"{s.blocks_computed} model blocks computed{workers} -> {s.where}")
        synthetic = " (SYNTHETIC data)" if self.synthetic else ""
        return f"seeded {self.region}{synthetic} in {self.seconds:.1f} s\n  " + "\n  ".join(lines)


def _write_archive(out: Path, kind: str, tiles: list[tuple[int, int, int, bytes]], service, layer, zooms, fmt: str) -> None:
    """One archive of ``tiles`` (XYZ z, x, y): MBTiles 1.3 (rows counted from the south, every
    metadata value text, as the spec says) or PMTiles v3 (typed JSON metadata), atomically."""
    w, s, e, n = service.registry.grid_of(layer).bounds_in("EPSG:4326")
    synthetic = service.registry.synthetic
    desc = layer.description + (" SYNTHETIC data: generated, not observed." if synthetic else "")
    meta: dict[str, Any] = {
        "name": layer.title, "format": fmt, "type": "overlay", "version": "1.3",
        "description": desc, "attribution": "slidemap" + (" (SYNTHETIC)" if synthetic else ""),
        "bounds": [w, s, e, n], "center": [(w + e) / 2, (s + n) / 2, zooms[1]],
        "minzoom": int(zooms[0]), "maxzoom": int(zooms[1]),
    }
    with atomic_path(out, suffix=".mbtiles" if kind == "mbtiles" else ".pmtiles") as tmp:
        if kind == "mbtiles":
            text = {k: ",".join(str(x) for x in v) if isinstance(v, list) else str(v) for k, v in meta.items()}
            conn = sqlite3.connect(tmp)
            try:
                conn.execute("CREATE TABLE metadata (name text, value text)")
                conn.execute("CREATE TABLE tiles (zoom_level integer, tile_column integer, tile_row integer, tile_data blob)")
                conn.execute("CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row)")
                conn.executemany("INSERT INTO metadata VALUES (?, ?)", list(text.items()))
                conn.executemany("INSERT INTO tiles VALUES (?, ?, ?, ?)",
                                 [(z, x, (2**z - 1) - y, sqlite3.Binary(data)) for z, x, y, data in tiles])
                conn.commit()
            finally:
                conn.close()
        else:
            from pmtiles.tile import Compression, TileType, zxy_to_tileid
            from pmtiles.writer import write

            with write(str(tmp)) as writer:
                for tileid, data in sorted((zxy_to_tileid(z, x, y), data) for z, x, y, data in tiles):
                    writer.write_tile(tileid, data)
                header = {
                    "tile_type": TileType.PNG if fmt == "png" else TileType.WEBP,
                    "tile_compression": Compression.NONE,
                    "min_zoom": int(zooms[0]), "max_zoom": int(zooms[1]),
                    "min_lon_e7": int(w * 1e7), "min_lat_e7": int(s * 1e7),
                    "max_lon_e7": int(e * 1e7), "max_lat_e7": int(n * 1e7),
                    "center_zoom": int(zooms[1]),
                    "center_lon_e7": int((w + e) / 2 * 1e7), "center_lat_e7": int((s + n) / 2 * 1e7),
                }
                writer.finalize(header, meta)
        tmp.chmod(0o644)  # an archive to hand out, not a private temp file


def tiles_count(bounds: tuple[float, float, float, float], zooms: tuple[int, int]) -> int:
    """How many WebMercatorQuad tiles cover ``bounds`` over ``zooms`` (for estimates)."""
    tms = morecantile.tms.get("WebMercatorQuad")
    return sum(1 for _ in tms.tiles(*bounds, list(range(zooms[0], zooms[1] + 1))))

