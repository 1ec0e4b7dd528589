"""Tile server benchmark: real HTTP (httpx) against `slidemap serve` (uvicorn) and a plain titiler app.

Measures, on one machine in one run:

* cold and warm tile latency (p50, p95) per layer at the layer's native zoom - cold = empty tile
  cache and, for computed layers, empty block store (the model runs); warm = tile-cache hits;
* warm throughput at concurrency 1, 8 and 32;
* the same imagery tiles from a plain titiler.core ``TilerFactory`` app reading the imagery COG
  (no cache: every request renders), as the baseline, with ratios;
* where the time of a cold computed tile goes (model, read, halo, store, warp, render, cache),
  from the server's ``Server-Timing`` headers.

Usage::

    python benchmarks/bench_server.py [--region REGION_DIR] [--size-km 4] [--out benchmarks/results/server.md]

Without ``--region`` a SYNTHETIC demo region is generated, prepared and quick models are trained
(minutes). The region needs trained unet and lsm models for the computed layers.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import morecantile
import numpy as np

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
SLIDEMAP = [PY, "-m", "slidemap.cli"]
WMQ = morecantile.tms.get("WebMercatorQuad")
LAYERS = ("imagery", "factors/slope", "factors/landcover", "inventory", "detection", "susceptibility",
          "susceptibility/classes")
BASELINE = """
import sys, uvicorn
from fastapi import FastAPI
from titiler.core.factory import TilerFactory
from titiler.core.errors import DEFAULT_STATUS_CODES, add_exception_handlers
app = FastAPI()
app.include_router(TilerFactory().router, prefix="/cog")
add_exception_handlers(app, DEFAULT_STATUS_CODES)
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_up(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} not up after {timeout} s")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def make_region(size_km: float, work: Path) -> Path:
    region = work / "region"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = lambda *a: subprocess.run([*SLIDEMAP, *a], check=True, env=env)  # noqa: E731
    run("demo-region", str(region), "--size-km", str(size_km))
    run("prepare", str(region))
    run("train", "lsm", str(region), "--preset", "quick", "--quiet")
    run("train", "unet", str(region), "--preset", "quick", "--splits", "random", "--no-progress")
    return region


def native_tiles(client: httpx.Client, base: str, layer: str) -> tuple[str, list[morecantile.Tile]]:
    tj = client.get(f"{base}/layers/{layer}/WebMercatorQuad/tilejson.json").json()
    w, s, e, n = tj["bounds"]
    tiles = list(WMQ.tiles(w, s, e, n, [tj["maxzoom"]]))
    return tj["tiles"][0], tiles


def fill(template: str, t: morecantile.Tile) -> str:
    return template.replace("{z}", str(t.z)).replace("{x}", str(t.x)).replace("{y}", str(t.y))


def timed_get(client: httpx.Client, url: str) -> tuple[float, httpx.Response]:
    t0 = time.perf_counter()
    r = client.get(url)
    return time.perf_counter() - t0, r


def server_timing(header: str | None) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in (header or "").split(","):
        if ";dur=" in part:
            k, v = part.strip().split(";dur=")
            out[k] = float(v) / 1000
    return out


async def throughput(urls: list[str], concurrency: int, total: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        sem = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with sem:
                r = await client.get(urls[i % len(urls)])
                r.raise_for_status()

        for i in range(min(len(urls), concurrency)):  # connections up
            await one(i)
        t0 = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(total)))
        return total / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--region", type=Path, default=None)
    ap.add_argument("--size-km", type=float, default=4.0)
    ap.add_argument("--requests", type=int, default=300, help="requests per throughput measurement")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "server.md")
    args = ap.parse_args()
    command = "python benchmarks/bench_server.py " + " ".join(sys.argv[1:])

    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    procs: list[subprocess.Popen] = []
    try:
        region = args.region.resolve() if args.region else make_region(args.size_km, work)
        cache = work / "cache"
        port, bport = free_port(), free_port()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        procs.append(subprocess.Popen([*SLIDEMAP, "serve", str(region), "--port", str(port), "--cache-dir", str(cache),
                                       "--max-blocks", "64", "--log-level", "warning",
                                       # one request at a time: no queue limit, so cold tiles are whole
                                       "--max-queue-seconds", "1e6", "--compute-timeout", "600"], env=env,
                                      stdout=subprocess.DEVNULL))
        procs.append(subprocess.Popen([PY, "-c", BASELINE, str(bport)], env=env))
        base, bbase = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bport}"
        wait_up(f"{base}/health", procs[0])
        wait_up(f"{bbase}/docs", procs[1])
        client = httpx.Client(timeout=600)
        synthetic = client.get(f"{base}/layers").json()["synthetic"]
        rows, shares, warm_urls, notes = [], {}, {}, []
        imagery_rescale = None
        for layer in LAYERS:
            r = client.get(f"{base}/layers/{layer}/WebMercatorQuad/tilejson.json")
            if r.status_code != 200:
                notes.append(f"{layer}: skipped ({r.json().get('detail')})")
                continue
            template, tiles = native_tiles(client, base, layer)
            if layer in ("detection", "susceptibility"):
                # Load the models before timing cold tiles (once per server start; /point outside the
                # region loads them without computing anything).
                t_load, _ = timed_get(client, f"{base}/point?lon=0&lat=0")
                notes.append(f"{layer}: model loading before the cold tiles took {t_load:.1f} s")
            cold, warm, parts = [], [], {}
            urls = [fill(template, t) for t in tiles]
            for url in urls:
                dt_, resp = timed_get(client, url)
                resp.raise_for_status()
                cold.append(dt_)
                for k, v in server_timing(resp.headers.get("server-timing")).items():
                    parts[k] = parts.get(k, 0.0) + v
            for url in urls:
                dt_, resp = timed_get(client, url)
                assert resp.headers.get("x-cache") == "HIT", url
                warm.append(dt_)
            warm_urls[layer] = urls
            z = tiles[0].z if tiles else None
            rows.append((layer, z, len(urls), pct(cold, 50), pct(cold, 95), pct(warm, 50), pct(warm, 95)))
            if layer in ("detection", "susceptibility"):
                shares[layer] = parts
        # Baseline: plain titiler on the imagery COG, same tiles, same bands and rescale.
        legend = client.get(f"{base}/layers/imagery/legend").json()
        imagery_rescale = legend.get("rescale")
        bidx = legend.get("bands")
        cog = region / "build" / "imagery.tif"
        q = "&".join([f"url={cog}"] + [f"bidx={b}" for b in bidx] + [f"rescale={lo},{hi}" for lo, hi in imagery_rescale])
        base_urls = [u.replace(f"{base}/layers/imagery/tiles/", f"{bbase}/cog/tiles/").split("?")[0] + "?" + q
                     for u in warm_urls["imagery"]]
        bl, outside = [], set()
        for url in base_urls + base_urls:
            dt_, resp = timed_get(client, url)
            if resp.status_code == 404:  # titiler: tile outside the COG (slidemap answers a transparent tile)
                outside.add(url)
                continue
            resp.raise_for_status()
            bl.append(dt_)
        if outside:
            notes.append(f"titiler baseline: {len(outside)} of {len(base_urls)} imagery tiles answered 404 "
                         "(outside the COG by its own test) and are left out of its figures")
            base_urls = [u for u in base_urls if u not in outside]
        tp = {}
        for name, urls in (("slidemap imagery (cache hits)", warm_urls["imagery"]),
                           ("slidemap detection (cache hits)", warm_urls.get("detection", [])),
                           ("titiler baseline imagery (renders)", base_urls)):
            if urls:
                tp[name] = {c: asyncio.run(throughput(urls, c, args.requests)) for c in (1, 8, 32)}
        client.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        if not args.region:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(work / "cache", ignore_errors=True)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from benchmarks.machine import cpu_model

    cpu = cpu_model()
    ms = lambda s: f"{s * 1000:.1f}"  # noqa: E731
    img = next(r for r in rows if r[0] == "imagery")
    tag = "SYNTHETIC " if synthetic else ""
    lines = [
        f"# Tile server benchmark ({tag}demo region)",
        "",
        f"- machine: {cpu}, {os.cpu_count()} cores (shared with other jobs), Python {platform.python_version()}",
        f"- date: {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}",
        f"- command: `{command}`",
        f"- region: `{region.name}`{' (SYNTHETIC)' if synthetic else ''}; HTTP via httpx to uvicorn on 127.0.0.1; "
        "one inference worker; tile cache and block store empty at the start.",
        "",
        "## Latency per layer at native zoom (ms)",
        "",
        "Cold: first request of each tile (computed layers: the model runs on the blocks under it; model "
        "loading is done before timing). Warm: the same tiles again (tile-cache hits).",
        "",
        "| layer | zoom | tiles | cold p50 | cold p95 | warm p50 | warm p95 |",
        "|---|---|---|---|---|---|---|",
    ]
    for layer, z, n, c50, c95, w50, w95 in rows:
        lines.append(f"| {layer} | {z} | {n} | {ms(c50)} | {ms(c95)} | {ms(w50)} | {ms(w95)} |")
    b50, b95 = pct(bl, 50), pct(bl, 95)
    lines += [
        "",
        "## Baseline: plain titiler (`TilerFactory`) on the imagery COG, same tiles and rendering",
        "",
        "| | p50 ms | p95 ms | ratio to titiler p50 |",
        "|---|---|---|---|",
        f"| titiler (renders every request) | {ms(b50)} | {ms(b95)} | 1.00 |",
        f"| slidemap imagery cold (render + cache write) | {ms(img[3])} | {ms(img[4])} | {img[3] / b50:.2f} |",
        f"| slidemap imagery warm (cache hit) | {ms(img[5])} | {ms(img[6])} | {img[5] / b50:.2f} |",
        "",
        f"## Warm throughput (requests/s, {args.requests} requests per cell)",
        "",
        "| | concurrency 1 | 8 | 32 |",
        "|---|---|---|---|",
    ]
    for name, d in tp.items():
        lines.append(f"| {name} | {d[1]:.0f} | {d[8]:.0f} | {d[32]:.0f} |")
    base_tp = tp.get("titiler baseline imagery (renders)")
    ours = tp.get("slidemap imagery (cache hits)")
    if base_tp and ours:
        lines.append(f"| ratio slidemap warm / titiler | {ours[1] / base_tp[1]:.2f} | {ours[8] / base_tp[8]:.2f} | {ours[32] / base_tp[32]:.2f} |")
    lines += ["", "## Where a cold computed tile's time goes (share of server time, summed over the tiles above)", ""]
    keys = ("model", "read", "halo", "store", "warp", "render", "cache")
    lines += ["| layer | " + " | ".join(keys) + " | server total ms / tile |", "|---|" + "---|" * (len(keys) + 1)]
    for layer, parts in shares.items():
        total = parts.get("total", 0.0) or 1e-9
        n = next(r[2] for r in rows if r[0] == layer)
        lines.append(f"| {layer} | " + " | ".join(f"{100 * parts.get(k, 0.0) / total:.0f} %" for k in keys)
                     + f" | {1000 * total / max(n, 1):.0f} |")
    lines += [
        "",
        "model = inference on native blocks; read = reading input windows and stored blocks; halo = the "
        "extra input read around each block (pro rata of the window); store = writing blocks; warp = "
        "rio-tiler warping the block mosaic to the tile; render = PNG encoding; cache = tile-cache write. "
        "The rest of the total (not shown) is request handling and cache look-up.",
    ]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
