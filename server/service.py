"""A region's tile service without HTTP: its settings and :func:`build_service` (registry, block
engines, executor, tile cache). The web app (:mod:`slidemap.server.app`) and seeding
(:mod:`slidemap.server.seed`) both build on it, so seeding never imports the FastAPI module."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from slidemap.compute.region.layout import RegionLayout
from slidemap.compute.maps.blocks import InferenceExecutor
from slidemap.errors import SlidemapError
from slidemap.server.cache import TileCache
from slidemap.server.layers import LayerRegistry
from slidemap.server.tiles import TileService

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServerSettings:
    """Knobs of one server. Defaults suit a laptop; `slidemap serve` exposes the common ones."""

    cache_dir: Path | None = None  # default REGION/cache (block store and tile cache)
    cache_size_mb: float = 512.0  # tile cache limit (LRU); 0 disables the tile cache
    max_blocks_per_request: int = 16  # compute budget per request, in native blocks
    over_budget: Literal["partial", "error"] = "partial"  # marked partial tile, or 422
    inference_workers: int = 1
    max_pending_blocks: int = 64  # queue bound in blocks; beyond it 503 + Retry-After
    max_queue_seconds: float = 8.0  # expected wait of the queue beyond which new blocks get 503
    retry_after_s: int = 2
    block_size: int = 256
    max_scale: int = 4  # largest @Nx
    max_age_s: int = 300  # Cache-Control max-age of tiles whose URL does not pin their data (v=)
    compute_timeout_s: float = 30.0  # a request waits at most this long for its blocks (then 503)
    max_loaded_models: int = 4  # models kept in memory (LRU)
    public_url: str | None = None  # e.g. https://maps.example.org/slidemap; default: from the Host header
    allowed_hosts: tuple[str, ...] = LOOPBACK  # Host header names accepted ("*": any)
    cors_origins: tuple[str, ...] = ()  # origins allowed to read answers from a browser ("*": any)
    max_url_length: int = 4096
    report_device: bool = True  # /health names TensorFlow's device (imports TensorFlow in the background)
    loaders: dict[str, Any] | None = field(default=None, repr=False)  # model loaders by kind (tests inject fakes)


def build_service(region_dir: Path, settings: ServerSettings | None = None) -> TileService:
    """Registry, block engines, executor and tile cache of a region, without HTTP (also for seeding)."""
    settings = settings or ServerSettings()
    region_dir = Path(region_dir).resolve()
    if not region_dir.is_dir():
        raise SlidemapError(f"{region_dir}: no such region folder; make one with `slidemap demo-region` or write region.toml")
    cache_dir = Path(settings.cache_dir) if settings.cache_dir else RegionLayout(region_dir).cache
    executor = InferenceExecutor(settings.inference_workers, settings.max_pending_blocks, settings.retry_after_s,
                                 max_wait_s=settings.max_queue_seconds)
    registry = LayerRegistry(region_dir, cache_dir, executor, settings.loaders, settings.block_size,
                             settings.compute_timeout_s, settings.max_loaded_models)
    cache = TileCache(cache_dir / "tiles", int(settings.cache_size_mb * 1024 * 1024))
    return TileService(registry, cache, settings.max_blocks_per_request, settings.over_budget,
                       settings.max_scale, settings.max_age_s)


# ---- request policy ----------------------------------------------------------------------------
