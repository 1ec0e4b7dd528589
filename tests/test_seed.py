"""Seeding: tree (the server's tile cache), MBTiles, PMTiles, a Dask cluster of processes, and the
`slidemap seed` / `slidemap serve` commands."""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import morecantile
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image

from server_models import add_sklearn_lsm
from slidemap.errors import InputError
from slidemap.server import seed as seed_mod
from slidemap.server.app import ServerSettings, create_app

WMQ = morecantile.tms.get("WebMercatorQuad")
HOSTS = ("testserver", "127.0.0.1")


@pytest.fixture(scope="module")
def region(prepared_region, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed") / "region"
    shutil.copytree(prepared_region, out, ignore=shutil.ignore_patterns("cache", "models"))
    add_sklearn_lsm(out)  # a real model that any process can load (scikit-learn, joblib)
    return out


def client_for(region: Path, cache: Path, **kw) -> TestClient:
    return TestClient(create_app(region, ServerSettings(cache_dir=cache, allowed_hosts=HOSTS, report_device=False, **kw)))


def test_seed_tree_fills_the_servers_cache(region, tmp_path):
    report = seed_mod.seed(region, ["factors/slope"], zoom="11-12", cache_dir=tmp_path)
    assert "factors/slope" in str(report) and "SYNTHETIC" in str(report)
    files = list((tmp_path / "tiles").rglob("*.png"))
    assert len(files) == report.layers[0].tiles
    client = client_for(region, tmp_path)
    tj = client.get("/layers/factors/slope/WebMercatorQuad/tilejson.json").json()
    t = WMQ.tile(tj["center"][0], tj["center"][1], 12)
    r = client.get(tj["tiles"][0].format(z=t.z, x=t.x, y=t.y))
    assert r.status_code == 200 and r.headers["x-cache"] == "HIT"


def test_second_seed_computes_no_blocks(region, tmp_path):
    first = seed_mod.seed(region, ["susceptibility"], zoom="12", cache_dir=tmp_path, block_size=32)
    stats = first.layers[0]
    assert stats.blocks_total == 16 and stats.blocks_computed == 16  # 100 x 100 cells in 32-cell blocks
    again = seed_mod.seed(region, ["susceptibility"], zoom="12", cache_dir=tmp_path, block_size=32)
    assert again.layers[0].blocks_computed == 0 and again.layers[0].block_tasks == 0
    assert "0 model blocks computed" in str(again)
    # The server (same block size) finds every block and every tile already there.
    client = client_for(region, tmp_path, block_size=32)
    tj = client.get("/layers/susceptibility/WebMercatorQuad/tilejson.json").json()
    t = WMQ.tile(tj["center"][0], tj["center"][1], 12)
    r = client.get(tj["tiles"][0].format(z=t.z, x=t.x, y=t.y))
    assert r.headers["x-cache"] == "HIT"
    assert client.app.state.executor.pending == 0


def _source_footprint(region: Path, t: morecantile.Tile) -> np.ndarray:
    """Where the slope band has data in tile ``t``, read by rio-tiler straight from factors.tif."""
    from rio_tiler.io import Reader

    path = region / "build" / "factors.tif"
    with rasterio.open(path) as src:
        band = list(src.descriptions).index("slope") + 1
    with Reader(str(path)) as src:
        img = src.tile(t.x, t.y, t.z, tilesize=256, indexes=band, resampling_method="nearest",
                       reproject_method="nearest")
    return ~np.ma.getmaskarray(img.array)[0]


def _alpha(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))[..., 3] > 0


def test_seed_mbtiles_and_pmtiles_hold_the_servers_tiles_in_place(region, tmp_path):
    out = tmp_path / "slope.mbtiles"
    seed_mod.seed(region, ["factors/slope"], zoom="10-12", out_format="mbtiles", out=out, cache_dir=tmp_path / "c")
    conn = sqlite3.connect(out)
    meta = dict(conn.execute("SELECT name, value FROM metadata"))
    rows = conn.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles").fetchall()
    conn.close()
    assert meta["format"] == "png" and "SYNTHETIC" in meta["description"]
    assert meta["minzoom"] == "10" and meta["maxzoom"] == "12"  # MBTiles 1.3: text values
    assert {z for z, *_ in rows} == {10, 11, 12}
    client = client_for(region, tmp_path / "c")
    bounds = client.get("/layers").json()["layers"]
    w, s, e, n = next(lyr for lyr in bounds if lyr["id"] == "factors/slope")["bounds"]
    expected = {(t.z, t.x, t.y) for t in WMQ.tiles(w, s, e, n, [10, 11, 12])}
    # MBTiles rows count from the south: flip them back to XYZ and find morecantile's tiles.
    got = {(z, x, (2**z - 1) - row): data for z, x, row, data in rows}
    assert set(got) == expected
    inter_total = union_total = big = 0
    for (z, x, y), data in got.items():
        served = client.get(f"/layers/factors/slope/tiles/WebMercatorQuad/{z}/{x}/{y}.png").content
        # Decoded in the served tile's mode: an opaque seeded tile is written without its alpha.
        served_image = Image.open(io.BytesIO(served))
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data)).convert(served_image.mode)), np.asarray(served_image))
        # Placement against GDAL/rio-tiler reading the source: the data footprint is the same
        # (up to the resampling of the outermost cells; a flipped or shifted tile shares nothing).
        alpha, footprint = _alpha(data), _source_footprint(region, morecantile.Tile(x, y, z))
        inter, union = int((alpha & footprint).sum()), int((alpha | footprint).sum())
        inter_total, union_total = inter_total + inter, union_total + union
        if union >= 1000:
            big += 1
            assert inter / union > 0.95, (z, x, y, inter, union)
    assert big >= 2 and inter_total / union_total > 0.97

    pm = tmp_path / "slope.pmtiles"
    seed_mod.seed(region, ["factors/slope"], zoom="10-12", out_format="pmtiles", out=pm, cache_dir=tmp_path / "c")
    from pmtiles.reader import MmapSource, Reader

    with open(pm, "rb") as fh:
        reader = Reader(MmapSource(fh))
        header = reader.header()
        assert header["min_zoom"] == 10 and header["max_zoom"] == 12
        pm_meta = reader.metadata()
        assert pm_meta["minzoom"] == 10 and pm_meta["maxzoom"] == 12  # typed, not "10" beside 12
        assert isinstance(pm_meta["bounds"], list) and "SYNTHETIC" in pm_meta["description"]
        for (z, x, y), data in got.items():
            assert reader.get(z, x, y) == data  # PMTiles addresses tiles in XYZ
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_seed_computed_layer_on_a_dask_cluster_of_processes(region, tmp_path):
    """`--dask local`: a LocalCluster of worker processes, each loading the real model from the
    region; the blocks are split between the workers and each is computed exactly once."""
    report = seed_mod.seed(region, ["susceptibility"], zoom="12-13", cache_dir=tmp_path / "c", dask="local",
                           block_size=16)
    stats = report.layers[0]
    assert stats.blocks_total == 49 and stats.block_tasks == 7  # 100 x 100 cells, 16-cell blocks, 8 per task
    assert stats.blocks_computed == 49  # each block once: a block run twice would count twice
    assert sum(stats.blocks_by_worker.values()) == 49
    pids = {w.split(":")[1] for w in stats.blocks_by_worker}
    assert len(pids) >= 2 and str(__import__("os").getpid()) not in pids  # other processes did the work
    store = next((tmp_path / "c" / "blocks" / "susceptibility").glob("*/*-b16"))
    assert len(list((store / "L0").glob("*.npy"))) == 49
    assert list((tmp_path / "c" / "tiles").rglob("*.png"))


def test_seed_bad_arguments(region, tmp_path):
    with pytest.raises(InputError, match="--zoom"):
        seed_mod.seed(region, ["factors/slope"], zoom="12-8", cache_dir=tmp_path)
    with pytest.raises(InputError, match="--out"):
        seed_mod.seed(region, ["factors/slope"], out_format="mbtiles", cache_dir=tmp_path)
    with pytest.raises(InputError, match="--dask"):
        seed_mod.seed(region, ["factors/slope"], zoom="10", cache_dir=tmp_path, dask="http://x")


# ---- the commands ----------------------------------------------------------------------------------
def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slidemap.cli", *args], capture_output=True, text=True, **kw)


def test_seed_command_success(region, tmp_path):
    out = tmp_path / "slope.pmtiles"
    done = _cli("seed", str(region), "--layer", "factors/slope", "--zoom", "11", "--format", "pmtiles",
                "--out", str(out), "--cache-dir", str(tmp_path / "c"), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "seeded" in done.stdout and "factors/slope" in done.stdout and out.is_file()
    bad = _cli("seed", str(region), "--layer", "factors/slope", "--zoom", "9-3", timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("slidemap: error:") and "Traceback" not in bad.stderr


def test_serve_command_success(region, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "slidemap.cli", "serve", str(region), "--port", str(port), "--cache-dir",
         str(tmp_path / "c"), "--public-url", "http://maps.example.org/slidemap", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert health is not None and health.status_code == 200, proc.stderr.read() if proc.poll() is not None else ""
        assert health.json()["status"] == "ok"
        layers = httpx.get(f"{base}/layers", timeout=10).json()["layers"]
        assert all(lyr["tilejson"].startswith("http://maps.example.org/slidemap/") for lyr in layers)
        evil = httpx.get(f"{base}/layers", headers={"Host": "evil.example"}, timeout=10)
        assert evil.status_code == 400 and "Host header" in evil.json()["detail"]
        assert "access-control-allow-origin" not in httpx.get(f"{base}/health", headers={"Origin": "http://x"}).headers
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    out = proc.stdout.read()
    assert "serving SYNTHETIC" in out and "http://maps.example.org/slidemap/layers" in out
    assert proc.returncode == 0
    assert json.dumps(health.json()).find(str(tmp_path)) == -1  # no server path in /health
