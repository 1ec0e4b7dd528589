"""`slidemap serve REGION_DIR` (tile server via uvicorn) and `slidemap seed REGION_DIR` (fill caches)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(groups: dict[str, argparse._SubParsersAction]) -> None:
    root = groups["root"]
    p = root.add_parser(
        "serve", help="serve a region as XYZ/TileJSON/WMTS tiles with on-demand model compute",
        description="Serve a prepared region's factors, imagery and model layers as XYZ tiles, TileJSON, WMTS "
        "and /point answers; model layers are computed block by block on request and cached under "
        "REGION_DIR/cache. Prints the map, layer, WMTS and API URLs.",
    )
    p.add_argument("region", type=Path, metavar="REGION_DIR", help="a prepared region folder")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--cache-dir", type=Path, default=None, help="block store and tile cache (default REGION/cache)")
    p.add_argument("--cache-size-mb", type=float, default=512.0, help="tile cache limit, LRU eviction (0 = off)")
    p.add_argument("--max-blocks", type=int, default=16, help="model blocks one request may compute")
    p.add_argument("--over-budget", choices=("partial", "error"), default="partial",
                   help="beyond --max-blocks: a marked partial tile, or HTTP 422")
    p.add_argument("--workers", type=int, default=1, help="inference threads (one model call at a time per thread)")
    p.add_argument("--max-pending", type=int, default=64, help="queued model blocks before answering 503")
    p.add_argument("--max-queue-seconds", type=float, default=8.0,
                   help="expected queue wait (measured seconds per block x queued blocks) beyond which new "
                        "work gets 503 + Retry-After at once (default 8)")
    p.add_argument("--compute-timeout", type=float, default=30.0,
                   help="seconds a request waits for its model blocks before answering 503 (default 30)")
    p.add_argument("--block-size", type=int, default=256, help="model block size in native cells (default 256)")
    p.add_argument("--public-url", default=None,
                   help="base URL clients reach this server at (e.g. https://maps.example.org/slidemap); "
                        "default: the request's Host header, if it is an allowed host")
    p.add_argument("--allowed-host", action="append", default=None, metavar="NAME",
                   help="Host header name to accept (repeatable; '*' = any); default 127.0.0.1, localhost, ::1 "
                        "and the --public-url host. Other hosts get 400, which also stops DNS rebinding")
    p.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                   help="browser origin allowed to read answers (repeatable; '*' = any); default: none (CORS off)")
    p.add_argument("--limit-concurrency", type=int, default=256,
                   help="open connections beyond which uvicorn answers 503 (default 256)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"),
                   help="uvicorn's log level (default info; --quiet means warning)")
    p.set_defaults(handler=_serve)

    s = root.add_parser(
        "seed", help="fill a region's block store and tile cache ahead of users",
        description="Render a layer's tiles over a zoom range ahead of users: into the server's tile cache "
        "(--format tree, REGION_DIR/cache) or into one MBTiles or PMTiles archive (--out; its tiles also go "
        "into the tile cache), on every local core (--workers) or on a Dask cluster. Tiles are made in "
        "metatiles (one read and warp per N x N tiles); coarser zooms of continuous layers are averaged from "
        "the finer zoom's data. A second seed reuses tiles already in the cache. Prints tiles, blocks and "
        "seconds per layer.",
    )
    s.add_argument("region", type=Path, metavar="REGION_DIR", help="a prepared region folder")
    s.add_argument("--layer", action="append", required=True, help="layer id (repeatable), e.g. susceptibility")
    s.add_argument("--zoom", default=None, help="zoom range, e.g. 8-12 (default: the layer's own range)")
    s.add_argument("--tms", default="WebMercatorQuad",
                   help="tile matrix set (default WebMercatorQuad; the server's /tileMatrixSets lists the others)")
    s.add_argument("--tile-format", default="png", choices=("png", "webp", "tif", "npy"),
                   help="tile encoding (default png)")
    s.add_argument("--format", dest="out_format", default="tree", choices=("tree", "mbtiles", "pmtiles"),
                   help="tree = the server's tile cache; mbtiles / pmtiles = one archive at --out")
    s.add_argument("--out", type=Path, default=None, help="archive path for mbtiles/pmtiles")
    s.add_argument("--cache-dir", type=Path, default=None,
                   help="block store and tile cache (default REGION/cache; use the server's)")
    s.add_argument("--workers", type=int, default=None,
                   help="local worker processes (default: one per CPU; 1 = this process only); with --dask local: "
                        "the cluster's size")
    s.add_argument("--dask", default=None,
                   help="'local' (LocalCluster) or tcp://scheduler:8786; default: local processes (--workers)")
    s.add_argument("--metatile", type=int, default=8, choices=(1, 2, 4, 8, 16), metavar="N",
                   help="tiles per side read and warped at once: one task (default 8: 8 x 8 tiles)")
    s.add_argument("--no-pyramid", dest="pyramid", action="store_false",
                   help="read every zoom from the source instead of averaging coarser zooms from finer data")
    s.add_argument("--png-level", type=_png_level, default="rle", metavar="rle|0-9",
                   help="PNG compression: rle (default: zlib's run-length strategy after PNG's row filters, "
                        "2-3x faster than level 6 and about as small on imagery) or a zlib level 0-9")
    s.add_argument("--model", default=None, help="model name or version (default: the region's default model)")
    s.add_argument("--block-size", type=int, default=256, help="model block size; use the server's (default 256)")
    s.set_defaults(handler=_seed)


def _png_level(text: str) -> str | int:
    if text == "rle":
        return text
    if text.isdigit() and 0 <= int(text) <= 9:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r}: use rle or a zlib level 0-9")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from slidemap.errors import InputError
    from slidemap.server.app import create_app
    from slidemap.server.service import LOOPBACK, ServerSettings

    if args.public_url and not args.public_url.startswith(("http://", "https://")):
        raise InputError(f"--public-url {args.public_url!r}: give an http:// or https:// URL")
    for name, value, low in (("--max-pending", args.max_pending, 1), ("--max-blocks", args.max_blocks, 1),
                             ("--block-size", args.block_size, 16), ("--workers", args.workers, 1),
                             ("--limit-concurrency", args.limit_concurrency, 1)):
        if value < low:
            raise InputError(f"{name} {value}: must be at least {low}")
    if not (args.max_queue_seconds > 0 and args.compute_timeout > 0):
        raise InputError("--max-queue-seconds and --compute-timeout must be positive")
    settings = ServerSettings(
        cache_dir=args.cache_dir, cache_size_mb=args.cache_size_mb, max_blocks_per_request=args.max_blocks,
        over_budget=args.over_budget, inference_workers=args.workers, max_pending_blocks=args.max_pending,
        max_queue_seconds=args.max_queue_seconds, compute_timeout_s=args.compute_timeout, block_size=args.block_size,
        public_url=args.public_url, allowed_hosts=tuple(args.allowed_host or LOOPBACK),
        cors_origins=tuple(args.cors_origin or ()),
    )
    app = create_app(args.region, settings)
    url = args.public_url.rstrip("/") if args.public_url else \
        f"http://{args.host if args.host not in ('0.0.0.0', '::') else '127.0.0.1'}:{args.port}"
    registry = app.state.registry
    print(f"slidemap: serving {registry.label} ({len(registry.layers)} layers)")
    print(f"  map        {url}/")
    print(f"  layers     {url}/layers")
    print(f"  WMTS       {url}/WMTSCapabilities.xml")
    print(f"  API docs   {url}/docs")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"  note: bound to {args.host}; other machines can reach this server "
              f"(Host headers accepted: {', '.join(settings.allowed_hosts)}; add names with --allowed-host or --public-url)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning" if args.quiet else args.log_level,
                limit_concurrency=args.limit_concurrency, timeout_graceful_shutdown=5)
    return 0


def _seed(args: argparse.Namespace) -> int:
    from slidemap.server.seed_runner import prestart

    prestart(args.workers, args.dask)  # the workers' imports overlap this process's own
    from slidemap.server.seed import seed

    report = seed(
        args.region, layers=args.layer, zoom=args.zoom, tms_id=args.tms, tile_format=args.tile_format,
        out_format=args.out_format, out=args.out, cache_dir=args.cache_dir, dask=args.dask, model=args.model,
        block_size=args.block_size, progress=not args.quiet, workers=args.workers, metatile=args.metatile,
        pyramid=args.pyramid, png_level=args.png_level,
    )
    print(report)
    return 0
