"""Seeding: fill the block store and tile cache ahead of users, on all local cores or a Dask cluster.

``slidemap seed REGION --layer detection --zoom 12-15 [--format tree|mbtiles|pmtiles] [--out PATH]
[--workers N] [--dask local|tcp://scheduler:8786]``

Two phases, each split into tasks:

1. **blocks** (computed layers only): every native block of the model is computed once. Tasks
   are disjoint sets of blocks, so no two workers run the model on the same cells; block writes
   are atomic and idempotent, so even a retried task is harmless.
2. **tiles**: each task is a metatile (:mod:`slidemap.server.seed_plan`): an N x N block of tiles
   read and warped once (:mod:`slidemap.server.seed_read`), coloured once
   (:mod:`slidemap.server.tile_encode`) and cut into tiles. For continuous (bilinear) file
   layers the coarser zooms inside a metatile are made by averaging its data 2 x 2 (the pyramid,
   as gdal2tiles does), before the rescale and colormap are applied.

Every tile goes into the server's own tile cache (``REGION/cache/tiles``, the key the server
looks up, atomic writes), which is also where a second seed resumes from; with ``mbtiles`` /
``pmtiles`` the tiles also come back to this process, the one writer of the archive
(:mod:`slidemap.server.seed_archive`). Tasks run here, in a pool of ``--workers`` processes
(default: one per CPU) or on Dask (:mod:`slidemap.server.seed_runner`).

Workers rebuild the tile service from the region folder (nothing but paths and plain settings
travels to them), so the region and cache folders must be visible to every worker.

Where a seeded tile differs from the server's own rendering of it: metatile pixels of bilinear
layers can differ by GDAL's approximate transform (1/8 pixel) from a per-tile warp, and pyramid
tiles are 2 x 2 means of the finer zoom's data rather than a warp of the source's overview
(``--no-pyramid`` reads every zoom from the source). Both are within a few grey levels; the
tests hold them to that.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from slidemap.compute import provenance
from slidemap.compute.maps.blocks import BLOCK_SIZE
from slidemap.errors import InputError
from slidemap.server.tile_encode import DEFAULT_PNG_LEVEL, Encoding, PngLevel
from slidemap.server.seed_plan import METATILE_SIZES, Meta, plan

BLOCKS_PER_TASK = 8
DEFAULT_METATILE = 8


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
    from slidemap.server.service import ServerSettings

    # Seeding has no per-request budget or queue limit and keeps every tile it makes.
    s = ServerSettings(cache_dir=cache_dir, max_blocks_per_request=10**9, cache_size_mb=10**7,
                       max_pending_blocks=10**9, max_queue_seconds=math.inf, compute_timeout_s=24 * 3600,
                       block_size=block_size, report_device=False)
    d = asdict(s)
    d.pop("loaders")
    return d


_SERVICES: dict[tuple, Any] = {}


def _service_key(region: str, settings: dict[str, Any]) -> tuple:
    return (region, tuple(sorted((k, str(v)) for k, v in settings.items())))


def _service(region: str, settings: dict[str, Any]):
    """One tile service per worker process (models load once per worker)."""
    from slidemap.server.service import ServerSettings, build_service

    key = _service_key(region, settings)
    if key not in _SERVICES:
        _SERVICES[key] = build_service(Path(region), ServerSettings(**settings))
    return _SERVICES[key]


def _warm_worker(region: str, settings: dict[str, Any]) -> None:
    try:
        _service(region, settings)
    except Exception:  # noqa: BLE001 - the parent reports a bad region itself, in one line
        pass


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


# ---- phase 1: model blocks -------------------------------------------------------------------
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
    return BlockTaskResult(ran, _worker_id())


def _blocks_job(args: tuple) -> BlockTaskResult:
    return compute_blocks_task(*args)


# ---- phase 2: metatiles ----------------------------------------------------------------------
@dataclass(frozen=True)
class TileJob:
    """One metatile of one layer: everything a worker needs, as plain values."""

    region: str
    settings: dict[str, Any]
    layer_id: str
    model: str | None
    data_version: str  # what the parent planned for; a worker that finds another refuses
    tms_id: str
    encoding: Encoding
    meta: Meta
    keep: bool  # hand the bytes back (archives), not just cache them


@dataclass
class TileJobResult:
    tiles: list[tuple[int, int, int, bytes]]
    rendered: int
    reused: int
    worker: str


def render_meta_task(job: TileJob) -> TileJobResult:
    """Make a metatile's tiles (reusing those already in the tile cache) and cache them."""
    from slidemap.server.cache import TileKey
    from slidemap.server.tiles import RenderParams, _fingerprint_now, get_tms

    service = _service(job.region, job.settings)
    registry = service.registry
    catalog = registry.refresh()
    layer = registry.get(job.layer_id, catalog)
    info, data_version = service.resolve(layer, job.model, catalog)
    if data_version != job.data_version:
        raise InputError(f"{layer.id}: its input or model changed while seeding; run the seed again")
    state = registry.check_input(layer, catalog)
    tms = get_tms(job.tms_id)
    params = RenderParams()
    fmt = job.encoding.fmt
    keys = {t: TileKey(layer.id, data_version, params.canonical(), tms.id, *t, 1, fmt) for t in job.meta.tiles}
    out: dict[tuple[int, int, int], bytes] = {}
    for t, key in keys.items():
        data = service.cache.get(key)
        if data is not None:
            out[t] = data
    todo = [t for t in job.meta.tiles if t not in out]
    made: dict[tuple[int, int, int], bytes] = {}
    if todo:
        if fmt in ("png", "webp"):
            made = _render_meta(service, layer, info, state, tms, job, set(todo), catalog, params)
        else:  # GeoTIFF / NumPy tiles: the server's own path, tile by tile (it caches them)
            for z, x, y in todo:
                made[(z, x, y)] = service.tile(layer.id, tms.id, z, x, y, 1, fmt, params, job.model).content
        if _fingerprint_now(state.path) != state.fingerprint:
            # The input was replaced while this metatile was made: cache (and hand back) nothing.
            raise InputError(f"{state.rel} changed while seeding {layer.id}; run the seed again")
        if fmt in ("png", "webp"):
            for t, data in made.items():
                service.cache.put(keys[t], data)
    out.update(made)
    tiles = [(*t, out[t]) for t in job.meta.tiles] if job.keep else []
    return TileJobResult(tiles, len(made), len(job.meta.tiles) - len(made), _worker_id())


def _render_meta(service, layer, info, state, tms, job: TileJob, todo: set, catalog, params) -> dict:
    from morecantile import Tile
    from rasterio.errors import RasterioError

    from slidemap.server import seed_read as rd
    from slidemap.server.tile_encode import block_pixels, encode, tile_pixels
    from slidemap.server.tiles import _empty_image, _image_to_bytes

    m, fmt = job.meta, job.encoding.fmt
    if layer.computed:
        breaks = service.registry.class_breaks(info) if layer.output == "class" else None
        img = rd.read_computed_block(service, layer, info, tms, m.z, m.x0, m.y0, m.nx, m.ny, breaks, catalog)
    else:
        try:
            img = rd.read_file_block(layer, state.path, tms, m.z, m.x0, m.y0, m.nx, m.ny)
        except (RasterioError, OSError) as exc:
            raise service.registry.report_fault(state, exc) from exc
    # A tile with nothing on it is the server's own empty tile (same bytes), made once.
    bands = 1 if (layer.colormap is not None or layer.colormap_name) else len(layer.indexes)
    empty_img = _empty_image(tms, Tile(m.x0, m.y0, m.z), rd.TILE, bands,
                             "uint8" if layer.colormap is not None else "float32")
    empty = _image_to_bytes(empty_img, layer, fmt, params)
    made = {}
    for k in range(m.levels + 1):
        if k and img is not None:
            img = rd.downsample2x(img)
        z, x0, y0 = m.z - k, m.x0 >> k, m.y0 >> k
        wanted = [t for t in todo if t[0] == z]
        if not wanted:
            continue
        px = block_pixels(img, layer, params) if img is not None else None
        for t in wanted:
            i, j = t[1] - x0, t[2] - y0
            if img is None:
                made[t] = empty
            elif px is None:  # an output the seeder does not colour itself: the server's renderer
                made[t] = _image_to_bytes(rd.cut(img, i, j), layer, fmt, params)
            else:
                tp = tile_pixels(px, i, j)
                made[t] = empty if not tp.alpha.any() else encode(tp, job.encoding)
    return made


def _chunks(items: Sequence, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield list(items[i : i + n])


# ---- the seed ----------------------------------------------------------------------------------
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
    workers: int | None = None,
    metatile: int = DEFAULT_METATILE,
    pyramid: bool = True,
    png_level: PngLevel = DEFAULT_PNG_LEVEL,
) -> SeedReport:
    """Seed ``layers``; return what was done (``str(report)`` is a one-paragraph summary).

    ``workers``: local processes (default: one per CPU; 1 = this process); with ``dask`` the size
    of a ``local`` cluster. ``metatile``: tiles per side read at once. ``pyramid``: make coarser
    zooms of continuous layers by halving finer data. ``png_level``: PNG compression, ``"rle"`` (zlib's
    run-length strategy, the fastest) or a zlib level 0-9.
    """
    from slidemap.server.service import ServerSettings, build_service
    from slidemap.server.seed_archive import ArchiveWriter, archive_metadata
    from slidemap.server.seed_runner import Runner
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
    if metatile not in METATILE_SIZES:
        raise InputError(f"--metatile {metatile}: use one of {', '.join(map(str, METATILE_SIZES))}")
    if png_level != "rle" and not (isinstance(png_level, int) and 0 <= png_level <= 9):
        raise InputError(f"--png-level {png_level}: use rle, or a zlib level from 0 (none) to 9 (smallest)")
    if workers is not None and workers < 1:
        raise InputError(f"--workers {workers}: must be at least 1")
    settings = _settings_dict(cache_dir, block_size)
    runner = Runner(workers, dask, progress)
    try:
        runner.warm(_warm_worker, str(region), settings)
        service = build_service(region, ServerSettings(**settings))
    except BaseException:
        runner.close()
        raise
    _SERVICES[_service_key(str(region), settings)] = service  # tasks run in this process reuse it
    tms = get_tms(tms_id)
    encoding = Encoding(tile_format, png_level)
    t0 = time.perf_counter()
    report = SeedReport(service.registry.region_name, service.registry.synthetic, where=runner.where)
    try:
        for layer_id in layers:
            layer = service.registry.get(layer_id)
            zooms = parse_zoom(zoom, zoom_range(service.registry, layer, tms))
            stats = LayerSeed(layer_id, zooms)
            layer_model = None
            if layer.computed:
                info = service.registry.model_info(layer, model)
                layer_model = info.version  # every worker uses the same version, whatever becomes the default
                engine = service.registry.engine(layer, info)
                stats.blocks_total = engine.n_rows * engine.n_cols
                missing = engine.missing_native([(r, c) for r in range(engine.n_rows) for c in range(engine.n_cols)], 0)
                tasks = [(str(region), settings, layer_id, layer_model, chunk) for chunk in _chunks(missing, BLOCKS_PER_TASK)]
                stats.block_tasks = len(tasks)
                for res in runner.map(_blocks_job, tasks, f"{layer_id}: blocks", size=lambda t: len(t[4]),
                                      unit="block"):
                    stats.blocks_computed += res.ran
                    stats.blocks_by_worker[res.worker] += res.ran
            _, data_version = service.resolve(layer, layer_model)
            w, s, e, n = service.registry.grid_of(layer).bounds_in("EPSG:4326")
            tiles = [(t.z, t.x, t.y) for z in range(zooms[1], zooms[0] - 1, -1) for t in tms.tiles(w, s, e, n, [z])]
            # Pyramid only where averaging is the layer's own resampling (not classes or model cells).
            derive = pyramid and layer.resampling == "bilinear" and not layer.computed
            metas = plan(tms, tiles, zooms, metatile, derive)
            keep = out_format != "tree"
            jobs = [TileJob(str(region), settings, layer_id, layer_model, data_version, tms_id, encoding, m, keep)
                    for m in metas]
            stats.tile_tasks = len(jobs)
            t1 = time.perf_counter()
            writer = ArchiveWriter(Path(out), out_format, archive_metadata(service, layer, zooms, tile_format),
                                   tile_format) if keep and out is not None else contextlib.nullcontext()
            with writer:
                for res in runner.map(render_meta_task, jobs, f"{layer_id}: tiles", size=lambda j: len(j.meta.tiles),
                                      unit="tile"):
                    stats.rendered += res.rendered
                    stats.reused += res.reused
                    if keep:
                        writer.add_many(res.tiles)
            stats.tile_seconds = time.perf_counter() - t1
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
    rendered: int = 0  # tiles made by this seed
    reused: int = 0  # tiles found in the tile cache already (a resumed or repeated seed)
    tile_tasks: int = 0
    tile_seconds: float = 0.0
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
    where: str = "in process"

    def __str__(self) -> str:
        lines = []
        for s in self.layers:
            workers = f" by {len(s.blocks_by_worker)} workers" if len(s.blocks_by_worker) > 1 else ""
            reused = f" ({s.reused} already cached)" if s.reused else ""
            rate = f", {s.tiles / s.tile_seconds:.0f} tiles/s" if s.tile_seconds > 0 else ""
            lines.append(f"{s.layer}: {s.tiles} tiles{reused}, zoom {s.zooms[0]}-{s.zooms[1]}{rate}, "
                         f"{s.blocks_computed} model blocks computed{workers} -> {s.where}")
        synthetic = provenance.suffix(self.synthetic)
        return f"seeded {self.region}{synthetic} in {self.seconds:.1f} s ({self.where})\n  " + "\n  ".join(lines)
