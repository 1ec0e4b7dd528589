"""Tile server: every endpoint and format, TileJSON schema, WMTS (+ gdalinfo), cache, seams, queue.

Runs on the session's prepared 3 km SYNTHETIC demo region with fake models that satisfy the
model interfaces of ``docs/ARCHITECTURE.md`` (real spatial context, so halos matter), saved as
artefacts in the region's registry so versions, hashes and ``?model=`` work as with real ones.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import morecantile
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image
from rasterio.warp import transform_bounds

from slidemap.compute.region.grid import Grid
from slidemap.compute.models.store import read_card, save_artefact
from slidemap.server.app import ServerSettings, create_app
from server_models import FakeDetector, add_fake_model, make_loaders, served

WMQ = morecantile.tms.get("WebMercatorQuad")
BS = 64
TEST_HOSTS = ("testserver", "127.0.0.1", "localhost", "::1")

# TileJSON 3.0.0 (https://github.com/mapbox/tilejson-spec/tree/master/3.0.0), the fields it defines.
TILEJSON_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["tilejson", "tiles"],
    "properties": {
        "tilejson": {"type": "string", "pattern": r"^3\.0\.\d+$"},
        "tiles": {"type": "array", "minItems": 1, "items": {"type": "string", "pattern": "^https?://.+\\{z\\}.+\\{x\\}.+\\{y\\}"}},
        "vector_layers": {"type": "array"},
        "attribution": {"type": "string"},
        "bounds": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4},
        "center": {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3},
        "data": {"type": "array", "items": {"type": "string"}},
        "description": {"type": "string"},
        "fillzoom": {"type": "integer", "minimum": 0, "maximum": 30},
        "grids": {"type": "array", "items": {"type": "string"}},
        "legend": {"type": "string"},
        "maxzoom": {"type": "integer", "minimum": 0, "maximum": 30},
        "minzoom": {"type": "integer", "minimum": 0, "maximum": 30},
        "name": {"type": "string"},
        "scheme": {"type": "string", "enum": ["xyz", "tms"]},
        "template": {"type": "string"},
        "version": {"type": "string", "pattern": r"^\d+\.\d+\.\d+\w?[\w\d]*$"},
    },
}


@pytest.fixture(scope="module")
def region(prepared_region, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("server") / "region"
    shutil.copytree(prepared_region, out, ignore=shutil.ignore_patterns("cache", "models"))
    add_fake_model(out, "unet", "attention_unet", 0.3)
    add_fake_model(out, "lsm", "multiscale", 0.0)
    return out


def new_app(region: Path, tmp: Path, calls: dict | None = None, gate=None, **kw):
    kw.setdefault("allowed_hosts", TEST_HOSTS)
    kw.setdefault("report_device", False)
    # Tests of what tiles contain take every block they need; admission has tests of its own.
    kw.setdefault("max_queue_seconds", float("inf"))
    settings = ServerSettings(cache_dir=tmp, block_size=BS, loaders=make_loaders(calls if calls is not None else {}, gate), **kw)
    return create_app(region, settings)


@pytest.fixture(scope="module")
def server(region, tmp_path_factory):
    calls: dict = {}
    app = new_app(region, tmp_path_factory.mktemp("cache"), calls)
    with TestClient(app) as client:
        yield client, app, calls


def tile_url(client, layer: str, fmt: str = "png", zoom_offset: int = 0, tms: str = "WebMercatorQuad",
             **q) -> tuple[str, morecantile.Tile]:
    tj = client.get(f"/layers/{layer}/{tms}/tilejson.json", params={"format": fmt, **q}).json()
    lon, lat, _ = tj["center"]
    t = morecantile.tms.get(tms).tile(lon, lat, tj["maxzoom"] + zoom_offset)
    return tj["tiles"][0].replace("{z}", str(t.z)).replace("{x}", str(t.x)).replace("{y}", str(t.y)), t


def engine_of(app, layer_id: str, model: str | None = None):
    reg = app.state.registry
    layer = reg.get(layer_id)
    return reg.engine(layer, reg.model_info(layer, model))


# ---- discovery ----------------------------------------------------------------------------------
def test_health_layers_and_legends(server):
    client, app, _ = server
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["synthetic"] is True
    body = client.get("/layers").json()
    assert body["synthetic"] is True and "SYNTHETIC" in body["region"]
    ids = {lyr["id"] for lyr in body["layers"]}
    assert {"imagery", "imagery/false-colour", "factors/slope", "factors/landcover", "detection",
            "susceptibility", "susceptibility/classes", "inventory"} <= ids
    for lyr in body["layers"]:
        assert "SYNTHETIC" in lyr["title"]
        for key in ("tilejson", "wmts", "legend", "tiles"):
            assert lyr[key].startswith("http://testserver/")
        assert set(lyr) >= {"id", "title", "kind", "units", "tilejson", "wmts", "legend"}
        lg = client.get(lyr["legend"])
        assert lg.status_code == 200, lg.text
    slope = client.get("/layers/factors/slope/legend").json()
    assert slope["type"] == "continuous" and slope["units"] == "degrees"
    lc = client.get("/layers/factors/landcover/legend").json()
    assert lc["type"] == "categorical" and all(c["color"].startswith("#") for c in lc["classes"])
    det = next(lyr for lyr in body["layers"] if lyr["id"] == "detection")
    assert det["computed"] and det["model"] and det["model"] in det["tiles"] and "v=" in det["tiles"]
    assert det["model_name"] == "attention_unet" and det["has_skill"] is True
    assert det["skill"].startswith("F1 0.800") and det["skill"] in det["title"]
    assert all(lyr["available"] and lyr["problem"] is None for lyr in body["layers"])


def test_tilejson_matches_schema(server):
    client, _, _ = server
    for layer in ("imagery", "factors/slope", "detection", "susceptibility/classes", "inventory"):
        for fmt in ("png", "npy"):
            r = client.get(f"/layers/{layer}/WebMercatorQuad/tilejson.json", params={"format": fmt, "scale": 2})
            assert r.status_code == 200, r.text
            tj = r.json()
            jsonschema.validate(tj, TILEJSON_SCHEMA)
            w, s, e, n = tj["bounds"]
            assert w < e and s < n and tj["minzoom"] <= tj["maxzoom"]
            assert "SYNTHETIC" in tj["attribution"] and "SYNTHETIC" in tj["description"]
            assert tj["tiles"][0].startswith("http://testserver/") and f"@2x.{fmt}" in tj["tiles"][0]
    tj = client.get("/layers/detection/WebMercatorQuad/tilejson.json").json()
    assert "model=" in tj["tiles"][0] and "v=" in tj["tiles"][0]  # computed layers pin model and data
    assert "attention_unet" in tj["name"] and "F1" in tj["name"]


def test_openapi_and_docs(server):
    client, _, _ = server
    spec = client.get("/openapi.json").json()
    assert "/point" in spec["paths"] and "/layers" in spec["paths"]
    point_schema = spec["components"]["schemas"]["PointResponse"]["properties"]
    assert {"detection_probability", "susceptibility_probability", "susceptibility_class"} <= set(point_schema)
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text.lower()
    import re

    for ref in re.findall(r"""(?:url|src|href)\s*[:=]\s*['"]([^'"]+)['"]""", docs.text):
        assert not ref.startswith("http"), ref  # relative: nothing built from the Host header


def test_map_page_is_offline(server):
    client, _, _ = server
    page = client.get("/")
    assert page.status_code == 200 and "SYNTHETIC" in page.text
    import re

    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and not any(r.startswith("http") for r in refs), refs  # relative: no Host header echoed
    for r in refs:
        if r.endswith((".js", ".css")):
            assert client.get(r).status_code == 200, r
    assert "L.map" in client.get("/static/map.js").text
    assert client.get("/vendor/leaflet/images/marker-icon.png").status_code == 200


# ---- tiles --------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["imagery", "imagery/false-colour", "factors/slope", "factors/landcover",
                                   "inventory", "detection", "susceptibility", "susceptibility/classes"])
def test_every_layer_every_format(server, layer):
    client, _, _ = server
    for fmt in ("png", "webp", "tif", "npy"):
        url, _ = tile_url(client, layer, fmt)
        r = client.get(url)
        assert r.status_code == 200, (url, r.text)
        if fmt in ("png", "webp"):
            img = Image.open(io.BytesIO(r.content))
            assert img.format == fmt.upper() and img.size == (256, 256)
            assert np.asarray(img.convert("RGBA"))[..., 3].max() > 0  # something visible
        elif fmt == "npy":
            arr = np.load(io.BytesIO(r.content))
            assert arr.shape[-2:] == (256, 256) and np.isfinite(arr).any()
        else:
            with rasterio.MemoryFile(r.content) as mem, mem.open() as ds:
                assert ds.crs.to_epsg() == 3857 and ds.width == 256
                if layer in ("factors/slope", "detection", "susceptibility"):
                    assert ds.dtypes[0] == "float32"
    url, _ = tile_url(client, layer, "png", scale=2)
    assert "@2x" in url
    img = Image.open(io.BytesIO(client.get(url).content))
    assert img.size == (512, 512)


def test_outside_region_is_empty_transparent_tile(server):
    client, app, calls = server
    engine = engine_of(app, "detection")
    before = engine.model_calls
    for layer in ("imagery", "detection", "susceptibility"):
        for z, x, y in ((10, 0, 0), (1, 0, 0), (1, 0, 1)):
            r = client.get(f"/layers/{layer}/tiles/WebMercatorQuad/{z}/{x}/{y}.png")
            assert r.status_code == 200
            assert np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))[..., 3].max() == 0
    assert engine.model_calls == before  # nothing computed for tiles that miss the region


def test_cache_hit_etag_and_304(server):
    client, app, _ = server
    url, _ = tile_url(client, "factors/twi", "png", zoom_offset=-1)
    first = client.get(url)
    assert first.headers["x-cache"] == "MISS" and first.headers["x-slidemap-synthetic"] == "true"
    second = client.get(url)
    assert second.headers["x-cache"] == "HIT" and second.content == first.content
    assert second.headers["etag"] == first.headers["etag"]
    assert "max-age" in first.headers["cache-control"]
    r304 = client.get(url, headers={"If-None-Match": first.headers["etag"]})
    assert r304.status_code == 304 and r304.content == b""
    other = client.get(url, headers={"If-None-Match": '"something-else"'})
    assert other.status_code == 200
    files = list((app.state.cache.root).rglob("*.png"))
    assert files and not any(f.name.startswith(".") for f in files)  # atomic writes leave no temp files
    # A URL that pins the data (v= from TileJSON) is immutable; without it, or with a stale v=, it is not.
    durl, _ = tile_url(client, "detection")
    assert "immutable" in client.get(durl).headers["cache-control"]
    assert "immutable" not in client.get(durl.split("&v=")[0]).headers["cache-control"]
    stale = client.get(durl.split("&v=")[0] + "&v=0123456789abcdef")
    assert stale.status_code == 200 and "immutable" not in stale.headers["cache-control"]


def test_new_model_version_never_serves_old_tiles(prepared_region, tmp_path):
    # Self-contained: its own region copy, models and cache, so no other test's state matters.
    work = tmp_path / "r"
    shutil.copytree(prepared_region, work, ignore=shutil.ignore_patterns("cache", "models"))
    old_version = add_fake_model(work, "unet", "attention_unet", 0.3)
    calls: dict = {}
    app = new_app(work, tmp_path / "cache", calls)
    client = TestClient(app)
    url, _ = tile_url(client, "detection", "npy")
    plain = url.split("?")[0]  # no model, no v: the region's default model
    old = client.get(plain)
    assert old.headers["x-cache"] == "MISS" and old.headers["x-slidemap-data-version"].startswith(old_version)
    assert client.get(plain).headers["x-cache"] == "HIT"
    new_version = add_fake_model(work, "unet", "attention_unet", 0.6)
    assert new_version != old_version
    fresh = client.get(plain)
    assert fresh.headers["x-cache"] == "MISS"
    assert fresh.headers["x-slidemap-data-version"].startswith(new_version)
    assert not np.array_equal(np.load(io.BytesIO(old.content)), np.load(io.BytesIO(fresh.content)), equal_nan=True)
    # By name: the newest of that name; by version: exactly that one, still reachable.
    by_name = client.get(plain + "?model=attention_unet")
    assert by_name.headers["x-slidemap-data-version"].startswith(new_version)
    pinned = client.get(plain + f"?model={old_version}")
    assert np.array_equal(np.load(io.BytesIO(pinned.content)), np.load(io.BytesIO(old.content)), equal_nan=True)
    assert client.get(plain + f"?model={old_version[:7]}").headers["x-slidemap-data-version"].startswith(old_version)


def test_lru_eviction_keeps_the_limit(region, tmp_path):
    app = new_app(region, tmp_path, cache_size_mb=0.05)  # ~50 kB
    client = TestClient(app)
    url, t = tile_url(client, "factors/slope", "npy")  # 256 kB each: too big for the cache
    client.get(url)
    assert app.state.cache.total_bytes == 0
    for dx in range(4):
        u, _ = tile_url(client, "factors/altitude", "png")
        client.get(u.replace(f"/{t.x}/", f"/{t.x + dx}/"))
    assert 0 < app.state.cache.total_bytes <= 0.05 * 1024 * 1024


# ---- seams ----------------------------------------------------------------------------------------
def _reference_detection(region: Path) -> tuple[np.ndarray, Grid]:
    path = region / "build" / "imagery.tif"
    with rasterio.open(path) as src:
        names = list(src.descriptions)
        stack = src.read([names.index(b) + 1 for b in FakeDetector.bands]).astype(np.float32)
        grid = Grid(src.crs, src.transform, src.width, src.height)
    h = FakeDetector.halo
    det = FakeDetector({"version": "ref", "hyperparameters": {"shift": 0.3}}, [], None)
    full = det.predict(np.pad(stack, ((0, 0), (h, h), (h, h)), constant_values=np.nan))[h:-h, h:-h]
    return full, grid


def _pool2_reference(a: np.ndarray) -> np.ndarray:
    """2 x 2 NaN-mean, written independently of the engine's pyramid code."""
    import warnings

    h, w = a.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells stay NaN
        return np.nanmean(a.reshape(h // 2, 2, w // 2, 2), axis=(1, 3)).astype(np.float32)


def _reference_tile(ref: np.ndarray, grid: Grid, tms, t: morecantile.Tile) -> np.ndarray:
    """The tile as rio-tiler cuts it from a GeoTIFF of the reference (GDAL's warper, nearest)."""
    from rio_tiler.io import Reader

    with rasterio.MemoryFile() as mem:
        with mem.open(driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="float32",
                      crs=grid.crs, transform=grid.transform, nodata=float("nan")) as ds:
            ds.write(ref, 1)
        with Reader(mem.name, tms=tms, options={"vrt_options": {"tolerance": 1e-6}}) as src:
            img = src.tile(t.x, t.y, t.z, tilesize=256, reproject_method="nearest", resampling_method="nearest")
    return img.array.astype(np.float32).filled(np.nan)[0]


@pytest.mark.parametrize("zoom_offset", [0, -2])
def test_adjacent_computed_tiles_have_no_seams(server, region, zoom_offset):
    client, app, _ = server
    full, grid = _reference_detection(region)
    engine = engine_of(app, "detection")
    url, t = tile_url(client, "detection", "npy", zoom_offset=zoom_offset)
    bbox = WMQ.xy_bounds(t)
    nb = transform_bounds(WMQ.rasterio_crs, grid.crs, *bbox)
    level = engine.level_for_resolution((nb[2] - nb[0]) / 256)
    assert (level > 0) == (zoom_offset < 0)
    # The reference at that level: the whole-region result, NaN-padded and pooled like the pyramid.
    size = BS * 2 ** engine.max_level
    ref = np.full((size, size), np.nan, dtype=np.float32)
    ref[: grid.height, : grid.width] = full
    for _ in range(level):
        ref = _pool2_reference(ref)
    f = 2**level
    ref_grid = Grid(grid.crs, grid.transform * rasterio.Affine.scale(f, f), ref.shape[1], ref.shape[0])
    tiles = []
    for dx in (0, 1):
        u = url.replace(f"/{t.x}/{t.y}.", f"/{t.x + dx}/{t.y}.")
        got = np.load(io.BytesIO(client.get(u).content))[0]
        want = _reference_tile(ref, ref_grid, WMQ, morecantile.Tile(t.x + dx, t.y, t.z))
        assert np.isfinite(got).sum() > 1000
        np.testing.assert_allclose(got, want, atol=1e-5, equal_nan=True)
        tiles.append(got)
    # Where both tiles have data at the shared edge the values continue smoothly (no seam).
    edge = np.isfinite(tiles[0][:, -1]) & np.isfinite(tiles[1][:, 0])
    assert edge.sum() > 10
    jump = np.abs(tiles[0][edge, -1] - tiles[1][edge, 0]).mean()
    inner = np.abs(tiles[0][edge, -2] - tiles[0][edge, -1]).mean()
    assert jump <= 3 * inner + 1e-3


@pytest.mark.parametrize("tms_id", ["WorldCRS84Quad", "WGS1984Quad"])
def test_computed_tiles_in_other_tile_grids(server, region, tms_id):
    """Tile grids other than WebMercatorQuad: the same model cells, placed by that grid's CRS."""
    client, app, _ = server
    full, grid = _reference_detection(region)
    tms = morecantile.tms.get(tms_id)
    url, t = tile_url(client, "detection", "npy", tms=tms_id)
    r = client.get(url)
    assert r.status_code == 200, r.text
    got = np.load(io.BytesIO(r.content))[0]
    tj = client.get(f"/layers/detection/{tms_id}/tilejson.json").json()
    assert tj["maxzoom"] == t.z and f"/tiles/{tms_id}/" in tj["tiles"][0]
    # At the layer's finest zoom the tile reads native blocks (level 0): the whole-region reference.
    want = _reference_tile(full, grid, tms, t)
    assert np.isfinite(got).sum() > 1000
    np.testing.assert_allclose(got, want, atol=1e-5, equal_nan=True)


# ---- compute: single flight, queue, budget -----------------------------------------------------------
def _wait_for(condition, timeout: float = 20.0) -> None:
    """Poll ``condition`` (a state of the server, not a guess at timing) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_concurrent_identical_requests_run_the_model_once(region, tmp_path):
    calls: dict = {}
    gate = threading.Event()
    # Five inference threads: without single flight, five requests would each run the model on
    # the same blocks at once (every copy passes the "already stored?" check before the gate).
    app = new_app(region, tmp_path, calls, gate, inference_workers=5)
    with TestClient(app) as client:
        url, _ = tile_url(client, "detection", "png")
        out = []
        threads = [threading.Thread(target=lambda: out.append(client.get(url))) for _ in range(5)]
        for th in threads:
            th.start()
        ex = app.state.executor
        # Every request is waiting on the blocks (five waiters per block) before any block finishes.
        _wait_for(lambda: ex.pending > 0 and ex.waiting() == 5 * ex.pending)
        gate.set()
        for th in threads:
            th.join(30)
    assert len(out) == 5 and all(r.status_code == 200 for r in out)
    engine = engine_of(app, "detection")
    assert len(calls["unet"]) == engine.model_calls
    n_blocks = len(list((engine.store / "L0").glob("*.npy")))
    assert n_blocks >= 1 and len(calls["unet"]) == n_blocks  # one model run per block, however many requests


def test_full_queue_answers_503_with_retry_after(region, tmp_path):
    calls: dict = {}
    gate = threading.Event()
    # One block may be computed per request and one may wait: the first request fills the queue.
    app = new_app(region, tmp_path, calls, gate, max_pending_blocks=1, max_blocks_per_request=1, retry_after_s=3)
    first = []
    with TestClient(app) as client:
        url, t = tile_url(client, "detection", "png")
        th = threading.Thread(target=lambda: first.append(client.get(url)))
        th.start()
        _wait_for(lambda: app.state.executor.pending == 1)
        far = url.replace(f"/{t.x}/{t.y}.", f"/{t.x + 1}/{t.y + 1}.")
        t0 = time.monotonic()
        r = client.get(far)
        answered_in = time.monotonic() - t0
        gate.set()
        th.join(30)
    assert first[0].status_code == 200 and "x-slidemap-partial" in first[0].headers
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    assert "queue" in r.json()["detail"]
    assert answered_in < 5  # refused at once, not after waiting


def test_compute_timeout_is_503_with_retry_after(region, tmp_path):
    gate = threading.Event()
    app = new_app(region, tmp_path, {}, gate, compute_timeout_s=0.5)
    with TestClient(app) as client:
        url, _ = tile_url(client, "detection", "png")
        r = client.get(url)
        gate.set()
    assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
    assert "still computing" in r.json()["detail"]


def test_over_budget_partial_tile_or_422(region, tmp_path):
    app = new_app(region, tmp_path / "a", max_blocks_per_request=1)
    client = TestClient(app)
    url, _ = tile_url(client, "detection", "png")
    r = client.get(url)
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    assert "missing=" in r.headers["x-slidemap-partial"]
    assert client.get(url).headers["x-cache"] == "MISS"  # partial tiles are never cached
    strict = new_app(region, tmp_path / "b", max_blocks_per_request=1, over_budget="error")
    r = TestClient(strict).get(url)
    assert r.status_code == 422 and "budget" in r.json()["detail"] and "slidemap seed" in r.json()["detail"]


def test_point_returns_factors_and_model_outputs(server):
    client, _, _ = server
    tj = client.get("/layers/factors/slope/WebMercatorQuad/tilejson.json").json()
    lon, lat, _ = tj["center"]
    p = client.get("/point", params={"lon": lon, "lat": lat}).json()
    assert p["inside"] and p["synthetic"]
    assert p["factors"]["slope"] is not None and p["units"]["slope"] == "degrees"
    assert 0 <= p["detection_probability"] <= 1 and p["detection_model"]
    assert 0 <= p["susceptibility_probability"] <= 1 and 1 <= p["susceptibility_class"] <= 5
    assert p["susceptibility_class_name"]
    # categorical factors are named as the region's class tables name them
    landcover = client.get("/layers/factors/landcover/legend").json()
    names = {c["label"] for c in landcover["classes"]}
    assert p["factors"]["landcover"] is not None and p["factor_classes"]["landcover"] in names
    assert set(p["factor_classes"]) <= {"landcover", "soil", "lithology"}
    layers = {lyr["id"]: lyr for lyr in client.get("/layers").json()["layers"]}
    assert layers["factors/landcover"]["categorical"] and not layers["factors/slope"]["categorical"]
    out = client.get("/point", params={"lon": 0.0, "lat": 0.0}).json()
    assert out["inside"] is False and out["detection_probability"] is None


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path,status",
    [
        ("/layers/nope/tiles/WebMercatorQuad/1/0/0.png", 404),
        ("/layers/..%2F..%2Fetc%2Fpasswd/tiles/WebMercatorQuad/1/0/0.png", 404),
        ("/layers/factors/..%2F..%2Fbuild/legend", 404),
        # outside the schema (pattern, range, enum): 422; inside it but no such tile: 404
        ("/layers/imagery/tiles/WebMercatorQuad/1/0/0.gif", 422),
        ("/layers/imagery/tiles/WebMercatorQuad/1/0/0", 422),
        ("/layers/imagery/tiles/WebMercatorQuad/1/0/0.png%0A", 422),
        ("/layers/imagery/tiles/WebMercatorQuad/1/2/0.png", 404),
        ("/layers/imagery/tiles/WebMercatorQuad/1/0/5.png", 404),
        ("/layers/imagery/tiles/WebMercatorQuad/25/0/0.png", 404),
        ("/layers/imagery/tiles/WebMercatorQuad/99/0/0.png", 422),
        ("/layers/imagery/tiles/WebMercatorQuad/-1/0/0.png", 422),
        ("/layers/imagery/tiles/WebMercatorQuad/a/0/0.png", 422),
        ("/layers/imagery/tiles/NoSuchTMS/1/0/0.png", 422),
        ("/layers/imagery/tiles/WebMercatorQuad/1/0/0@64x.png", 422),
        ("/layers/imagery/tiles/WebMercatorQuad/1/0/0@0x.png", 422),
        ("/layers/factors/slope/tiles/WebMercatorQuad/1/0/0.png?rescale=abc", 422),
        ("/layers/factors/slope/tiles/WebMercatorQuad/1/0/0.png?colormap_name=nope", 422),
        ("/layers/detection/tiles/WebMercatorQuad/1/0/0.png?model=../../x", 422),
        ("/layers/detection/tiles/WebMercatorQuad/1/0/0.png?model=%2Ftmp%2Fx", 422),
        ("/layers/detection/tiles/WebMercatorQuad/1/0/0.png?model=abcdef123456", 404),
        ("/layers/detection/tiles/WebMercatorQuad/1/0/0.png?model=no_such_name", 404),
        ("/layers/detection/tiles/WebMercatorQuad/1/0/0.png?v=xyz", 422),
        ("/layers/factors/slope/tiles/WebMercatorQuad/1/0/0.png?rescale=1e400,2", 422),
        ("/layers/factors/slope/tiles/WebMercatorQuad/1/0/0.png?rescale=0,1&rescale=0,1&rescale=0,1&rescale=0,1&rescale=0,1", 422),
        ("/layers/imagery/WebMercatorQuad/tilejson.json?format=gif", 422),
        ("/layers/imagery/WebMercatorQuad/tilejson.json?scale=9", 422),
        ("/point?lon=500&lat=0", 422),
        ("/point?lon=abc&lat=0", 422),
        ("/point?lon=nan&lat=0", 422),
        ("/point?lon=0&lat=0&susceptibility_model=", 422),
        ("/point?lon=0&lat=0&susceptibility_model=abcdef123456", 404),
        ("/point", 422),
        ("/colorMaps/viridis?format=png&height=500000", 422),
        ("/colorMaps/viridis?format=png&width=-5", 422),
        ("/colorMaps/viridis?format=jpeg", 422),
        ("/colorMaps/nope", 422),
        ("/tileMatrixSets/nope", 422),
        ("/no/such/endpoint", 404),
    ],
)
def test_bad_inputs_are_4xx_json(server, path, status):
    client, _, _ = server
    r = client.get(path)
    assert r.status_code == status, (path, r.status_code, r.text)
    body = r.json()
    assert set(body) == {"detail", "status"} and body["status"] == status
    assert isinstance(body["detail"], str) and body["detail"] and "Traceback" not in body["detail"]


def test_inapplicable_parameters_are_ignored_and_said_so(server):
    client, _, _ = server
    url, _ = tile_url(client, "factors/landcover", "png")
    plain = client.get(url)
    for q, names in (("&colormap_name=viridis", "colormap_name"), ("&rescale=0,1", "rescale"),
                     ("&model=abcdef123456&rescale=0,1", "rescale, model")):
        r = client.get(url + q)
        assert r.status_code == 200 and r.headers["x-slidemap-ignored"] == names
        assert r.content == plain.content
    assert "x-slidemap-ignored" not in plain.headers
    rgb, _ = tile_url(client, "imagery", "png")
    assert client.get(rgb + "&colormap_name=viridis").headers["x-slidemap-ignored"] == "colormap_name"


def test_rescale_reversed_and_step(server):
    """max < min reverses the ramp; min == max draws a step; both on the same data values."""
    client, _, _ = server
    url, _ = tile_url(client, "factors/slope", "npy")
    values = np.load(io.BytesIO(client.get(url).content))[0]
    png = url.replace(".npy", ".png")

    def grey(q: str) -> np.ndarray:
        r = client.get(png + q + "&colormap_name=gray")
        assert r.status_code == 200, r.text
        return np.asarray(Image.open(io.BytesIO(r.content)).convert("L")).astype(int)

    lo, hi = np.nanpercentile(values, [10, 90])
    up, down = grey(f"&rescale={lo},{hi}"), grey(f"&rescale={hi},{lo}")
    ok = np.isfinite(values)
    # mirror images: up to 1 from each image's float-to-uint8 truncation and 1 from the grey LUT
    assert np.abs(up[ok] + down[ok] - 255).max() <= 3
    mid = float(np.nanmedian(values))
    step = grey(f"&rescale={mid},{mid}")
    assert set(np.unique(step[ok])) <= {0, 255}
    assert (step[ok] == 255).mean() == pytest.approx((values[ok] >= mid).mean(), abs=0.01)


def test_missing_model_is_409_json(prepared_region, tmp_path):
    work = tmp_path / "r"
    shutil.copytree(prepared_region, work, ignore=shutil.ignore_patterns("cache", "models"))
    client = TestClient(new_app(work, tmp_path / "c"))
    r = client.get("/layers/detection/tiles/WebMercatorQuad/14/0/0.png")
    assert r.status_code == 409 and "slidemap train unet" in r.json()["detail"]
    det = next(lyr for lyr in client.get("/layers").json()["layers"] if lyr["id"] == "detection")
    assert det["available"] is False and "slidemap train unet" in det["problem"] and det["tiles"] is None


def test_no_default_without_skill_and_models_route(prepared_region, tmp_path):
    """A model without skill is flagged and never the default; it is still servable by name."""
    work = tmp_path / "r"
    shutil.copytree(prepared_region, work, ignore=shutil.ignore_patterns("cache", "models"))
    weak = add_fake_model(work, "lsm", "random_forest", skill=False)
    client = TestClient(new_app(work, tmp_path / "c"))
    models = client.get("/models").json()["roles"]
    assert models["susceptibility"]["default"] is None and models["detection"]["models"] == []
    entry = models["susceptibility"]["models"][0]
    assert entry["version"] == weak and entry["has_skill"] is False and entry["default"] is False
    assert entry["skill"].startswith("NO SKILL")
    layers = {lyr["id"]: lyr for lyr in client.get("/layers").json()["layers"]}
    sus = layers["susceptibility"]
    assert sus["available"] is False and sus["has_skill"] is False and "NO SKILL" in sus["title"]
    assert "no susceptibility model has skill" in sus["problem"]
    assert client.get("/layers/susceptibility/tiles/WebMercatorQuad/14/0/0.png").status_code == 409
    tj = client.get("/layers/susceptibility/WebMercatorQuad/tilejson.json", params={"model": "random_forest"})
    assert tj.status_code == 200 and "NO SKILL" in tj.json()["name"] and f"model={weak}" in tj.json()["tiles"][0]
    # a version prefix is a name for the model from 6 hex digits on (resolve_model's rule); a shorter
    # one names no model: 404, as any unknown model (it was a 409 "cannot be used")
    by_prefix = client.get("/layers/susceptibility/WebMercatorQuad/tilejson.json", params={"model": weak[:6]})
    assert by_prefix.status_code == 200 and f"model={weak}" in by_prefix.json()["tiles"][0]
    short = client.get("/layers/susceptibility/WebMercatorQuad/tilejson.json", params={"model": weak[:5]})
    assert short.status_code == 404 and "GET /models" in short.json()["detail"]
    # A skilled model trained later becomes the default; the weak one stays selectable.
    strong = add_fake_model(work, "lsm", "multiscale")
    models = client.get("/models").json()["roles"]["susceptibility"]
    assert models["default"] == strong and [m["default"] for m in models["models"]] == [True, False]
    h = client.get("/health").json()
    assert h["models"]["susceptibility"]["default"]["version"] == strong


# ---- WMTS ----------------------------------------------------------------------------------------
NS = {"w": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1"}


def test_wmts_capabilities_parse_and_have_no_raw_commas(server):
    client, _, _ = server
    r = client.get("/WMTSCapabilities.xml")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/xml")
    root = ET.fromstring(r.content)
    layers = root.findall(".//w:Contents/w:Layer", NS)
    ids = {lyr.find("ows:Identifier", NS).text for lyr in layers}
    assert {"imagery", "factors/slope", "detection"} <= ids
    tms = root.find(".//w:Contents/w:TileMatrixSet", NS)
    assert tms.find("ows:SupportedCRS", NS).text == "urn:ogc:def:crs:EPSG::3857"  # the first set: WebMercatorQuad
    # every supported set that holds the region, each linked from the layers
    sets = [t.find("ows:Identifier", NS).text for t in root.findall(".//w:Contents/w:TileMatrixSet", NS)]
    assert sets[0] == "WebMercatorQuad" and "WorldCRS84Quad" in sets
    slope = next(lyr for lyr in layers if lyr.find("ows:Identifier", NS).text == "factors/slope")
    assert {e.text for e in slope.findall("w:TileMatrixSetLink/w:TileMatrixSet", NS)} >= {"WebMercatorQuad", "WorldCRS84Quad"}
    one = ET.fromstring(client.get("/WMTSCapabilities.xml", params={"tms": "WorldCRS84Quad"}).content)
    assert [t.find("ows:Identifier", NS).text for t in one.findall(".//w:Contents/w:TileMatrixSet", NS)] == ["WorldCRS84Quad"]
    single = client.get("/layers/factors/slope/WMTSCapabilities.xml", params={"rescale": "0,40", "colormap_name": "viridis"})
    root = ET.fromstring(single.content)
    template = root.find(".//w:ResourceURL", NS).get("template")
    assert "rescale=0%2C40" in template and "," not in template
    assert "{TileMatrix}" in template and "{TileCol}" in template and "{TileRow}" in template
    # The template fetches real tiles.
    lim = root.find(".//w:TileMatrixLimits", NS)
    tms_id = root.find(".//w:TileMatrixSetLink/w:TileMatrixSet", NS).text
    url = (template.replace("{TileMatrixSet}", tms_id).replace("{TileMatrix}", lim.find("w:TileMatrix", NS).text)
           .replace("{TileCol}", lim.find("w:MinTileCol", NS).text)
           .replace("{TileRow}", lim.find("w:MinTileRow", NS).text))
    assert client.get(url).status_code == 200


def test_tile_matrix_sets_that_do_not_hold_the_region_are_neither_listed_nor_served(server):
    """The region lies at 110 E, outside EuropeanETRS89_LAEAQuad's grid (morecantile clamps a point
    outside a set to its edge instead of raising): that set is in no listing and every route for it is a 404."""
    client, _, _ = server
    west = next(lyr for lyr in client.get("/layers").json()["layers"] if lyr["id"] == "factors/slope")["bounds"][0]
    assert west > 62  # east of the set's extent (-43..61 E)
    europe = "EuropeanETRS89_LAEAQuad"
    for url in (f"/layers/factors/slope/{europe}/tilejson.json", f"/layers/detection/{europe}/tilejson.json",
                f"/layers/factors/slope/tiles/{europe}/8/0/0.png", f"/layers/detection/tiles/{europe}/8/0/0.npy",
                f"/layers/factors/slope/WMTSCapabilities.xml?tms={europe}", f"/WMTSCapabilities.xml?tms={europe}",
                f"/collections/factors.slope/tiles/{europe}", f"/collections/factors.slope/tiles/{europe}/8/0/0"):
        r = client.get(url)
        assert r.status_code == 404 and set(r.json()) == {"detail", "status"}, (url, r.text)
        assert "does not cover the region" in r.json()["detail"] and "WebMercatorQuad" in r.json()["detail"], url
    root = ET.fromstring(client.get("/WMTSCapabilities.xml").content)
    sets = [t.find("ows:Identifier", NS).text for t in root.findall(".//w:Contents/w:TileMatrixSet", NS)]
    links = {e.text for e in root.findall(".//w:TileMatrixSetLink/w:TileMatrixSet", NS)}
    assert europe not in sets and europe not in links and "WebMercatorQuad" in sets
    tilesets = client.get("/collections/factors.slope/tiles").json()["tilesets"]
    offered = {t["links"][0]["href"].rsplit("/", 1)[1] for t in tilesets}
    assert europe not in offered and {"WebMercatorQuad", "WorldCRS84Quad"} <= offered


@pytest.mark.skipif(shutil.which("gdalinfo") is None, reason="gdalinfo not installed (apt-get install gdal-bin)")
def test_gdalinfo_opens_wmts_from_a_real_server(region, tmp_path):
    app = new_app(region, tmp_path)
    with served(app) as base:
        cap = f"{base}/layers/factors/slope/WMTSCapabilities.xml?rescale=0%2C40"
        out = subprocess.run(["gdalinfo", f"WMTS:{cap}"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "Driver: WMTS" in out.stdout and "EPSG" in out.stdout
        allcap = subprocess.run(["gdalinfo", f"WMTS:{base}/WMTSCapabilities.xml"], capture_output=True, text=True, timeout=60)
        assert allcap.returncode == 0, allcap.stderr
        assert "SUBDATASET_" in allcap.stdout and "factors/slope" in allcap.stdout


def test_inventory_overlay_includes_detected_polygons(region, tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    work = tmp_path / "r"
    shutil.copytree(region, work, ignore=shutil.ignore_patterns("cache"))
    grid = Grid.from_raster(work / "build" / "imagery.tif")
    left, bottom, right, top = grid.bounds
    cx, cy = (left + right) / 2, (bottom + top) / 2
    run = work / "reports" / "inventory" / "20261125T000000Z-test"
    run.mkdir(parents=True)
    gpd.GeoDataFrame(geometry=[box(cx - 300, cy - 300, cx + 300, cy + 300)], crs=grid.crs).to_file(
        run / "landslides_detected.gpkg", layer="landslides")
    client = TestClient(new_app(work, tmp_path / "c"))
    legend = client.get("/layers/inventory/legend").json()
    assert "detected landslide" in {c["label"] for c in legend["classes"]}
    url, _ = tile_url(client, "inventory", "npy")
    arr = np.load(io.BytesIO(client.get(url).content))
    assert np.isin(arr[np.isfinite(arr)], [2, 3]).any()


@pytest.mark.browser
@pytest.mark.skipif(not Path("/usr/bin/chromium").is_file(), reason="Debian's chromium is not installed")
def test_map_page_in_headless_chromium_loads_tiles_and_nothing_external(region, tmp_path):
    from playwright import sync_api as pw  # a test dependency: imported, never skipped
    app = new_app(region, tmp_path)
    with served(app) as base:
        with pw.sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
            page = browser.new_page()
            urls, errors = [], []
            page.on("request", lambda r: urls.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(f"{base}/", wait_until="networkidle")
            page.wait_for_function("document.querySelectorAll('.leaflet-tile-loaded').length > 0", timeout=15000)
            assert "SYNTHETIC" in page.inner_text("#banner")
            browser.close()
        assert not errors, errors
        assert [u for u in urls if not u.startswith(f"{base}/")] == []
        assert any("/tiles/WebMercatorQuad/" in u for u in urls)


def _amplified_copy(region: Path, kind: str, factor: float) -> str:
    """Re-save the newest trained ``kind`` artefact with its output layer's kernel scaled by ``factor``.

    A tiny model trained for a test is close to constant over the region, and a constant map agrees
    with itself however the blocks are placed; scaling the last layer's kernel spreads the
    logits, so a misplaced or mis-haloed block differs from the whole-region run by far more
    than the tolerance. The copy is an ordinary artefact (new version), loaded by the real loader.
    """
    import keras

    from slidemap.compute.models.store import list_models

    models = list_models(region, kind)
    # Susceptibility tiles come from a window model's fast form (the distilled dense network):
    # amplify that one and serve it directly.
    info = next((m for m in models if m.card.get("architecture") == "dense_fcn"), models[0])
    model = keras.saving.load_model(info.path / info.card["weights"], compile=False)
    # the neighbourhood path (what block stitching can get wrong); a network with a centre-linear path
    # has it in `deep_logit`, the per-cell linear part needs no amplifying
    names = {layer.name for layer in model.layers}
    last = model.get_layer("deep_logit") if "deep_logit" in names else [layer for layer in model.layers if layer.get_weights()][-1]
    weights = last.get_weights()
    weights[0] = weights[0] * factor
    last.set_weights(weights)
    drop = ("name", "kind", "version", "created", "created_ns", "sequence", "weights", "libraries", "fast_form")
    card = {k: v for k, v in info.card.items() if k not in drop}
    if kind == "lsm" and "class_breaks" not in card:  # a fast form's classes are its window model's
        card["class_breaks"] = next(m.card["class_breaks"] for m in models if m.card.get("class_breaks"))
    folder = save_artefact(region / "models", kind, info.name + "_amplified", card, lambda p: model.save(p))
    return read_card(folder)["version"]


@pytest.mark.slow
def test_real_tiny_models_blocks_match_whole_region_runs(prepared_region, tmp_path):
    """The real loaders (compute.detection / compute.susceptibility) behind the block engine."""
    import sys

    def cli(args: list[str]) -> int:
        # A subprocess each: the trainers set global Keras/TensorFlow state.
        return subprocess.run([sys.executable, "-m", "slidemap.cli", *args], capture_output=True).returncode

    work = tmp_path / "r"
    shutil.copytree(prepared_region, work, ignore=shutil.ignore_patterns("cache", "models", "reports"))
    assert cli(["train", "lsm", str(work), "--preset", "quick", "--models", "multiscale", "--quiet"]) == 0
    assert cli(["train", "unet", str(work), "--preset", "quick", "--splits", "random", "--search-iterations", "0",
                "--no-compare", "--no-baselines", "--epochs", "1", "--no-progress"]) == 0
    versions = {"susceptibility": _amplified_copy(work, "lsm", 8.0), "detection": _amplified_copy(work, "unet", 8.0)}
    # Blocks smaller than the region (100 x 100 analysis cells, 300 x 300 imagery cells), so the
    # comparison below really stitches blocks; no queue limit, so every block is computed.
    app = create_app(work, ServerSettings(cache_dir=tmp_path / "c", allowed_hosts=TEST_HOSTS, report_device=False,
                                          block_size=BS, max_queue_seconds=float("inf"), compute_timeout_s=600))
    client = TestClient(app)
    # Named explicitly: a model trained for one epoch may have no skill, and then it is nobody's default.
    for lid in ("detection", "susceptibility", "susceptibility/classes"):
        url, _ = tile_url(client, lid, "npy", model=versions[lid.split("/")[0]])  # by the real loaders
        r = client.get(url)
        assert r.status_code == 200, r.text
        arr = np.load(io.BytesIO(r.content))
        vals = arr[np.isfinite(arr)]
        assert vals.size and ((vals >= 0) & (vals <= (5 if "classes" in lid else 1))).all()
    tj = client.get("/layers/susceptibility/WebMercatorQuad/tilejson.json", params={"model": versions["susceptibility"]}).json()
    p = client.get("/point", params={"lon": tj["center"][0], "lat": tj["center"][1],
                                     "detection_model": versions["detection"],
                                     "susceptibility_model": versions["susceptibility"]}).json()
    assert p["detection_probability"] is not None and p["susceptibility_class"] in range(1, 6), p
    # Tolerances sized to the arithmetic: the dense susceptibility model (the multiscale 3D-CNN's fast
    # form) computes each cell from the
    # same inputs block by block or whole, so only float32 (or TF32 on a GPU: 10-bit mantissa)
    # rounding of the convolutions may differ. The U-Net tiles and blends its input internally, and
    # where tiles fall follows the input window, so cells near its tile borders see other context;
    # measured on this model: mean |block - whole| 0.003, max 0.19 (the kernel x8 magnifies it).
    for lid, tol_max, tol_mean in (("susceptibility", 5e-3, 5e-4), ("detection", 0.3, 0.01)):
        eng = engine_of(app, lid, versions[lid])
        assert eng.n_rows >= 2 and eng.n_cols >= 2
        done = eng.ensure([(r, c) for r in range(eng.n_rows) for c in range(eng.n_cols)])
        assert done.missing == []
        mosaic, _, complete = eng.mosaic(eng.grid.bounds, 0)
        assert complete
        mosaic = mosaic[: eng.grid.height, : eng.grid.width]
        with rasterio.open(eng.source) as src:
            stack = src.read(list(eng.runner.band_indexes)).astype(np.float32)
        h = eng.runner.halo
        pad = {"mode": "reflect"} if eng.runner.edge == "reflect" else {"constant_values": np.nan}
        whole = eng.runner.run(np.pad(stack, ((0, 0), (h, h), (h, h)), **pad))
        assert (np.isnan(mosaic) == np.isnan(whole)).all()
        # The output varies: blocks stitched one cell off would miss the mean tolerance several times over.
        assert np.nanmean(np.abs(whole[:, 1:] - whole[:, :-1])) > 3 * tol_mean, lid
        assert np.nanmax(np.abs(mosaic - whole)) <= tol_max, lid
        assert np.nanmean(np.abs(mosaic - whole)) <= tol_mean, lid


def test_unloadable_model_is_409_json(region, tmp_path):
    def broken(path):
        raise TypeError("Could not locate function 'focal_loss'")

    app = new_app(region, tmp_path)
    app.state.registry.loaders = {"unet": broken, "lsm": broken}
    client = TestClient(app)
    r = client.get("/layers/detection/tiles/WebMercatorQuad/14/0/0.png")
    assert r.status_code == 409 and "cannot load the unet model" in r.json()["detail"]
    h = client.get("/health").json()
    assert h["status"] == "degraded" and any("cannot load the unet model" in p for p in h["problems"])
    assert client.get("/layers/factors/slope/legend").status_code == 200  # the rest keeps working


def test_two_first_requests_share_one_block_engine(server):
    """Requests that arrive together for a model nobody has used yet must share one engine (and so
    its single flight): both build one while the model loads, and the first one stored wins."""
    _, app, _ = server
    reg = app.state.registry
    layer = reg.get("detection")
    info = reg.model_info(layer)
    reg._engines.clear()
    both_loading = threading.Barrier(2, timeout=20)
    load = reg._load_model

    def slow_load(i):
        both_loading.wait()  # neither thread stores its engine before both have missed the lookup
        return load(i)

    reg._load_model = slow_load
    try:
        got = []
        threads = [threading.Thread(target=lambda: got.append(reg.engine(layer, info))) for _ in range(2)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
    finally:
        reg._load_model = load
    assert len(got) == 2 and got[0] is got[1]
    assert reg.engine(layer, info) is got[0]


# ---- data out: bbox extracts ------------------------------------------------------------------
def _extract(client, layer: str, bbox: tuple[float, float, float, float], **q):
    r = client.get(f"/layers/{layer}/bbox/{','.join(f'{v:.6f}' for v in bbox)}.tif", params=q)
    return r


def _inner_bbox(client, layer: str, frac: float = 0.25) -> tuple[float, float, float, float]:
    w, s, e, n = next(lyr for lyr in client.get("/layers").json()["layers"] if lyr["id"] == layer)["bounds"]
    cx, cy, dx, dy = (w + e) / 2, (s + n) / 2, (e - w) * frac / 2, (n - s) * frac / 2
    return (cx - dx, cy - dy, cx + dx, cy + dy)


def test_bbox_extract_of_a_factor_is_its_data(server, region):
    client, _, _ = server
    r = _extract(client, "factors/slope", _inner_bbox(client, "factors/slope"))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("image/tiff") and r.headers["x-slidemap-synthetic"] == "true"
    with rasterio.MemoryFile(r.content) as mem, mem.open() as ext, rasterio.open(region / "build" / "factors.tif") as src:
        assert ext.crs == src.crs and ext.res == src.res and ext.descriptions == ("slope",)
        col, row = ~src.transform * (ext.transform.c, ext.transform.f)
        window = rasterio.windows.Window(round(col), round(row), ext.width, ext.height)
        band = list(src.descriptions).index("slope") + 1
        np.testing.assert_array_equal(ext.read(1), src.read(band, window=window))


def test_bbox_extract_of_a_computed_layer_matches_points_and_classes(server):
    client, _, _ = server
    bbox = _inner_bbox(client, "susceptibility", 0.1)
    prob = _extract(client, "susceptibility", bbox)
    classes = _extract(client, "susceptibility/classes", bbox)
    assert prob.status_code == 200 and classes.status_code == 200, prob.text + classes.text
    with rasterio.MemoryFile(prob.content) as m1, m1.open() as p, rasterio.MemoryFile(classes.content) as m2, m2.open() as c:
        values, codes = p.read(1), c.read(1)
        assert values.dtype == np.float32 and codes.dtype == np.uint8 and c.colormap(1)[5][:3] == (215, 48, 39)
        assert np.isfinite(values).all() and set(np.unique(codes)) <= {1, 2, 3, 4, 5}
        # higher probability never gets a lower class
        order = np.argsort(values.ravel())
        assert (np.diff(codes.ravel()[order].astype(int)) >= 0).all()
        # the value at a cell equals /point's there
        row, col = values.shape[0] // 2, values.shape[1] // 2
        x, y = p.xy(row, col)
        lon, lat = rasterio.warp.transform(p.crs, "EPSG:4326", [x], [y])
        point = client.get("/point", params={"lon": lon[0][0] if isinstance(lon[0], list) else lon[0],
                                             "lat": lat[0]}).json()
        assert point["susceptibility_probability"] == pytest.approx(float(values[row, col]), abs=1e-6)


@pytest.mark.parametrize("bbox, status", [
    ((10.0, 10.0, 10.1, 10.1), 400),      # not over the region
    ((10.1, 10.0, 10.0, 10.1), 400),      # west > east
    ((-179.0, -80.0, 179.0, 80.0), 422),  # more cells than an extract may hold (the limit lowered here)
])
def test_bad_bbox_extracts_are_clear_errors(server, bbox, status, monkeypatch):
    from slidemap.server import engine_reader

    client, _, _ = server
    monkeypatch.setattr(engine_reader, "MAX_CELLS", 100)  # the one bound of a part's cells
    r = _extract(client, "factors/slope", bbox)
    assert r.status_code == status and "bbox" in r.json()["detail"], r.text
    assert client.get("/layers/factors/slope/bbox/1,2,3.tif").status_code in (404, 422)


def test_hillshade_base_layer_from_the_dem(server, region):
    """A region's shaded relief (made by prepare from the DEM) is a base layer, drawn in greys."""
    client, _, _ = server
    layers = {lyr["id"]: lyr for lyr in client.get("/layers").json()["layers"]}
    assert layers["hillshade"]["kind"] == "basemap" and (region / "build" / "hillshade.tif").is_file()
    url, _ = tile_url(client, "hillshade")
    r = client.get(url)
    assert r.status_code == 200
    rgba = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGBA"))
    shown = rgba[rgba[..., 3] > 0]
    assert len(shown) and (shown[:, 0] == shown[:, 1]).all() and (shown[:, 1] == shown[:, 2]).all()
    assert shown[:, 0].std() > 5  # relief, not a flat grey


def test_inventories_as_geojson_for_web_maps(server, region):
    client, _, _ = server
    r = client.get("/inventory/known.geojson")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/geo+json")
    gj = r.json()
    assert gj["type"] == "FeatureCollection" and gj["synthetic"] is True and gj["features"]
    labels = {f["properties"]["label"] for f in gj["features"]}
    assert True in labels
    lon, lat = next(iter(_coords(gj["features"][0]["geometry"])))
    w, s, e, n = next(lyr for lyr in client.get("/layers").json()["layers"] if lyr["id"] == "factors/slope")["bounds"]
    assert w - 0.05 <= lon <= e + 0.05 and s - 0.05 <= lat <= n + 0.05  # WGS84, over the region
    assert client.get("/inventory/nothing.geojson").status_code in (404, 422)


def _coords(geometry):
    coords = geometry["coordinates"]
    while isinstance(coords[0], list):
        coords = coords[0]
    yield coords[0], coords[1]


# ---- OGC API - Tiles ---------------------------------------------------------------------------
def test_ogc_api_tiles_collections_tilesets_and_tiles(server):
    client, _, _ = server
    assert "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core" in client.get("/conformance").json()["conformsTo"]
    cols = {c["id"]: c for c in client.get("/collections").json()["collections"]}
    assert {"factors.slope", "susceptibility.classes", "imagery"} <= set(cols)
    assert len(cols["factors.slope"]["extent"]["spatial"]["bbox"][0]) == 4
    sets = client.get("/collections/factors.slope/tiles").json()["tilesets"]
    assert {s["links"][0]["href"].rsplit("/", 1)[1] for s in sets} >= {"WebMercatorQuad", "WorldCRS84Quad"}
    ts = client.get("/collections/factors.slope/tiles/WebMercatorQuad").json()
    template = next(link["href"] for link in ts["links"] if link["rel"] == "item")
    assert "{tileMatrix}/{tileRow}/{tileCol}" in template
    # the same tile as the XYZ route: OGC order is row (y) then column (x)
    url, t = tile_url(client, "factors/slope")
    xyz = client.get(url)
    ogc = client.get(f"/collections/factors.slope/tiles/WebMercatorQuad/{t.z}/{t.y}/{t.x}", params={"f": "png"})
    assert ogc.status_code == 200 and ogc.content == xyz.content and ogc.headers["etag"] == xyz.headers["etag"]
    assert client.get("/collections/nope/tiles").status_code == 404
    assert client.get("/collections/factors.slope/tiles/NoSuchTMS").status_code == 422


def test_feature_extract_masks_outside_the_polygon(server):
    client, _, _ = server
    w, s, e, n = _inner_bbox(client, "factors/slope", 0.3)
    triangle = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [w, n], [w, s]]]}
    r = client.post("/layers/factors/slope/feature.tif", json={"type": "Feature", "properties": {}, "geometry": triangle})
    assert r.status_code == 200, r.text
    box = _extract(client, "factors/slope", (w, s, e, n))
    with rasterio.MemoryFile(r.content) as m1, m1.open() as f, rasterio.MemoryFile(box.content) as m2, m2.open() as b:
        inside, whole = f.read(1), b.read(1)
        assert inside.shape == whole.shape
        kept = np.isfinite(inside)
        assert 0.3 < kept.mean() < 0.7  # about half the box: the triangle
        np.testing.assert_array_equal(inside[kept], whole[kept])
        h, w2 = kept.shape  # the north-east quarter is outside, the south-west quarter inside
        assert kept[: h // 4, -(w2 // 4):].mean() < 0.05 and kept[-(h // 4):, : w2 // 4].mean() > 0.6
    bare = client.post("/layers/factors/slope/feature.tif", json=triangle)
    assert bare.status_code == 200 and bare.content == r.content
    line = {"type": "LineString", "coordinates": [[w, s], [e, n]]}
    bad = client.post("/layers/factors/slope/feature.tif", json=line)
    assert bad.status_code == 400 and "Polygon" in bad.json()["detail"]


def test_feature_extract_bodies_are_bounded_and_checked(server):
    client, _, _ = server
    assert client.post("/layers/factors/slope/feature.tif", content=b"{" * 10).status_code == 400
    assert client.post("/layers/factors/slope/feature.tif", json={"type": "Feature"}).status_code == 400
    huge = b'{"type": "Polygon", "coordinates": [[' + b"[0.0, 0.0]," * 200_000 + b"[0.0, 0.0]]]}"
    r = client.post("/layers/factors/slope/feature.tif", content=huge)
    assert r.status_code == 422 and "larger than" in r.json()["detail"]


def _streamed_request(messages: list[dict]):
    """A POST whose ASGI receive hands out ``messages``, then stalls as a silent client does."""
    import asyncio

    from starlette.requests import Request

    async def receive():
        if messages:
            return messages.pop(0)
        await asyncio.sleep(3600)

    return Request({"type": "http", "method": "POST", "path": "/", "headers": []}, receive)


def test_a_body_that_stalls_or_whose_client_leaves_is_a_4xx_not_a_500():
    """Found by a fuzzer: a client that left mid-upload was logged as a 500 with a traceback, and one
    that sent half a body held its connection open for good."""
    import asyncio

    from slidemap.server import errors as server_errors
    from slidemap.server.factory import read_body

    part = {"type": "http.request", "body": b"{", "more_body": True}
    with pytest.raises(server_errors.StalledBody, match="stopped arriving"):
        asyncio.run(read_body(_streamed_request([dict(part)]), 100, "the body", stall_s=0.05))
    with pytest.raises(server_errors.ClientGone):
        asyncio.run(read_body(_streamed_request([dict(part), {"type": "http.disconnect"}]), 100, "the body"))
    with pytest.raises(server_errors.OverBudget):
        asyncio.run(read_body(_streamed_request([dict(part)] * 3), 2, "the body"))
    whole = [dict(part), {"type": "http.request", "body": b"}", "more_body": False}]
    assert asyncio.run(read_body(_streamed_request(whole), 100, "the body")) == b"{}"
    assert server_errors.http_status(server_errors.StalledBody("x")) == 408
    assert server_errors.http_status(server_errors.ClientGone("x")) == 400


def test_feature_extract_refuses_what_is_not_a_wgs84_polygon_with_a_400(server):
    """Found by a fuzzer: each of these was a 500 (shapely accepted them, then rasterio or PROJ failed)."""
    client, _, _ = server
    w, s, e, n = _inner_bbox(client, "factors/slope", 0.3)
    ring = [[w, s], [e, s], [w, n], [w, s]]
    polygon = {"type": "Polygon", "coordinates": [ring]}
    bad = {
        "lower-case type": {"type": "polygon", "coordinates": [ring]},
        "upper-case type": {"type": "POLYGON", "coordinates": [ring]},
        "lower-case Feature": {"type": "feature", "geometry": polygon},
        "a Feature in a Feature": {"type": "Feature", "geometry": {"type": "Feature", "geometry": polygon}},
        "latitude 1000": {"type": "Polygon", "coordinates": [[[w, s], [e, 1000], [w, n], [w, s]]]},
        "longitude 1e300": {"type": "Polygon", "coordinates": [[[w, s], [1e300, s], [w, -1e300], [w, s]]]},
    }
    details = {}
    for name, body in bad.items():
        r = client.post("/layers/factors/slope/feature.tif", json=body)
        assert r.status_code == 400 and set(r.json()) == {"detail", "status"}, (name, r.text)
        details[name] = r.json()["detail"]
    assert "latitudes" in details["latitude 1000"] and "longitudes" in details["longitude 1e300"]
    deep = client.post("/layers/factors/slope/feature.tif", content=b"[" * 100_000 + b"]" * 100_000)
    assert deep.status_code == 400 and "nested" in deep.json()["detail"]
    # Coordinates are JSON numbers (RFC 7946): lax parsing read true as 1 and "7.5" as 7.5.
    for name, position in {"booleans": [True, False], "numbers as text": [str(w), str(s)]}.items():
        body = {"type": "Polygon", "coordinates": [[position, *ring[1:]]]}
        r = client.post("/layers/factors/slope/feature.tif", json=body)
        assert r.status_code == 400 and "number" in r.json()["detail"], (name, r.text)
    open_ring = {"type": "Polygon", "coordinates": [ring[:3]]}
    assert client.post("/layers/factors/slope/feature.tif", json=open_ring).status_code == 400
    # GeoJSON's optional members are fine: a bbox, a foreign member, a third coordinate.
    fuller = {**polygon, "bbox": [w, s, e, n], "title": "area", "coordinates": [[[x, y, 100.0] for x, y in ring]]}
    r = client.post("/layers/factors/slope/feature.tif", json=fuller)
    assert r.status_code == 200, r.text
    assert r.content == client.post("/layers/factors/slope/feature.tif", json=polygon).content


def test_feature_extract_of_a_polygon_reaching_far_outside_the_layer(server):
    """Only vertices are reprojected: a polygon's edges from far away used to land anywhere in the
    layer's CRS (the whole world masked every cell). Its part over the layer is what counts."""
    client, _, _ = server
    world = {"type": "Polygon", "coordinates": [[[-180, -90], [180, -90], [180, 90], [-180, 90], [-180, -90]]]}
    r = client.post("/layers/factors/slope/feature.tif", json=world)
    assert r.status_code == 200, r.text
    box = _extract(client, "factors/slope", (-180, -90, 180, 90))  # the same window, unmasked
    with rasterio.MemoryFile(r.content) as m1, m1.open() as f, rasterio.MemoryFile(box.content) as m2, m2.open() as b:
        inside, whole = f.read(1), b.read(1)
    assert np.isfinite(whole).mean() > 0.9
    np.testing.assert_array_equal(inside, whole)


def test_one_reader_for_tiles_parts_and_points(server):
    """A computed layer read through rio-tiler's BaseReader over its block engine: the tile, the
    native part and the point agree with one another, and the reader answers rio-tiler's calls."""
    from rio_tiler.errors import PointOutsideBounds, TileOutsideBounds
    from rio_tiler.io import BaseReader

    client, app, _ = server
    service = app.state.service
    layer = service.registry.get("susceptibility")
    info = service.registry.model_info(layer)
    reader = service.reader(layer, info)
    assert isinstance(reader, BaseReader) and reader.info().dtype == "float32"
    west, south, east, north = reader.get_geographic_bounds(reader.crs.__class__.from_epsg(4326))
    box = (west + (east - west) * 0.4, south + (north - south) * 0.4, west + (east - west) * 0.45, south + (north - south) * 0.45)
    part = reader.part(box)
    assert part.crs == reader.crs and part.count == 1 and part.array.shape[1] > 2
    # the point at a part cell's centre is that cell's value
    r, c = part.height // 2, part.width // 2
    x, y = part.transform * (c + 0.5, r + 0.5)
    lon, lat = rasterio.warp.transform(part.crs, "EPSG:4326", [x], [y])
    value = reader.point(lon[0], lat[0])
    assert float(value.array.data[0]) == pytest.approx(float(part.array.data[0, r, c]), abs=1e-6)
    assert client.get("/point", params={"lon": lon[0], "lat": lat[0]}).json()["susceptibility_probability"] == \
        pytest.approx(float(part.array.data[0, r, c]), abs=1e-6)
    # a tile over the region, and the ones outside it and the point outside it raise rio-tiler's errors
    tms = reader.tms
    t = tms.tile((west + east) / 2, (south + north) / 2, 14)
    img = reader.tile(t.x, t.y, t.z)
    assert img.array.shape == (1, 256, 256) and (~img.array.mask).any() and "timing" in img.metadata
    with pytest.raises(TileOutsideBounds):
        reader.tile(0, 0, 3)
    with pytest.raises(PointOutsideBounds):
        reader.point(10.0, 10.0)
    stats = reader.statistics()
    assert 0.0 <= stats["b1"].min <= stats["b1"].max <= 1.0
    # a polygon: the cells of its box, those outside the triangle masked
    w, so, e, n = box
    tri = {"type": "Polygon", "coordinates": [[[w, so], [e, so], [w, n], [w, so]]]}
    cut = reader.feature(tri)
    assert cut.array.shape == part.array.shape and cut.array.mask.sum() > part.array.mask.sum()
    inside = (~cut.array.mask).sum() / (~part.array.mask).sum()
    assert 0.15 < inside < 0.85, inside  # part of the box is in the triangle (a small box: few cells)


def test_head_answers_like_get_without_a_body(server):
    """Tile clients and caches send HEAD: the GET's status and headers (ETag, Content-Length), no body."""
    client, _, _ = server
    url, _ = tile_url(client, "factors/slope")
    for path in ("/health", url, "/layers/nope/legend"):
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code and head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
    for path in (url, "/layers/nope/legend"):  # (/health's body changes from call to call)
        assert client.head(path).headers["content-length"] == str(len(client.get(path).content)), path
    assert client.head(url).headers["etag"] == client.get(url).headers["etag"]
