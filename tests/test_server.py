"""Tile server: every endpoint and format, TileJSON schema, WMTS (+ gdalinfo), cache, seams, queue.

Runs on the session's prepared 3 km SYNTHETIC demo region with fake models that satisfy the
model interfaces of ``docs/ARCHITECTURE.md`` (real spatial context, so halos matter), saved as
artefacts in the region's registry so versions, hashes and ``?model=`` work as with real ones.
"""

from __future__ import annotations

import contextlib

import io
import shutil
import socket
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
from scipy.ndimage import uniform_filter

from slidemap.compute.blocks import _pool2
from slidemap.compute.grid import Grid
from slidemap.server.app import ServerSettings, create_app
from slidemap.server.tiles import TileService
from slidemap.compute.models.store import read_card, save_artefact

WMQ = morecantile.tms.get("WebMercatorQuad")
BS = 64

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


# ---- fake models (the interfaces of compute.detection / compute.susceptibility) ----------------
def _nan_mean(x: np.ndarray, size: int) -> np.ndarray:
    out = uniform_filter(np.nan_to_num(x, nan=0.0), size=size, mode="constant")
    bad = uniform_filter(np.isnan(x).astype(float), size=size, mode="constant") > 0
    out[bad] = np.nan
    return out


class FakeDetector:
    bands = ["B2", "B3", "B4", "B8"]
    halo = 4

    def __init__(self, card, calls, gate):
        self.version = card["version"]
        self.shift = float(card["hyperparameters"]["shift"])
        self.calls, self.gate = calls, gate

    def predict(self, image: np.ndarray) -> np.ndarray:
        self.calls.append(image.shape)
        if self.gate is not None:
            self.gate.wait(20)
        ndvi = (image[3] - image[2]) / (image[3] + image[2] + 1e-6)
        smooth = _nan_mean(ndvi, 2 * self.halo + 1)
        return (1 / (1 + np.exp(-10 * (smooth - self.shift)))).astype(np.float32)


class FakeSusceptibility:
    factor_names = ["slope", "altitude"]
    halo = 2

    def __init__(self, card, calls):
        self.version = card["version"]
        self.calls = calls

    def predict_block(self, stack: np.ndarray) -> np.ndarray:
        self.calls.append(stack.shape)
        h = self.halo
        out = np.clip(_nan_mean(stack[0], 2 * h + 1) / 45.0, 0, 1)
        return out[h:-h, h:-h].astype(np.float32)


def add_fake_model(region: Path, kind: str, name: str, shift: float = 0.3) -> str:
    def write(path: Path) -> None:
        path.write_bytes(f"fake {kind} {name} {shift}".encode())

    card = {"synthetic": True, "hyperparameters": {"shift": shift}, "halo": 4, "inputs": {}}
    folder = save_artefact(region / "models", kind, name, card, write)
    time.sleep(0.01)  # distinct `created` order
    return read_card(folder)["version"]


def make_loaders(calls: dict, gate: threading.Event | None = None) -> dict:
    return {
        "unet": lambda path: FakeDetector(read_card(path), calls.setdefault("unet", []), gate),
        "lsm": lambda path: FakeSusceptibility(read_card(path), calls.setdefault("lsm", [])),
    }


@pytest.fixture(scope="module")
def region(prepared_region, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("server") / "region"
    shutil.copytree(prepared_region, out, ignore=shutil.ignore_patterns("cache", "models"))
    add_fake_model(out, "unet", "attention_unet", 0.3)
    add_fake_model(out, "lsm", "multiscale_dense", 0.0)
    return out


def new_app(region: Path, tmp: Path, calls: dict | None = None, gate=None, **kw):
    settings = ServerSettings(cache_dir=tmp, block_size=BS, loaders=make_loaders(calls if calls is not None else {}, gate), **kw)
    return create_app(region, settings)


@pytest.fixture(scope="module")
def server(region, tmp_path_factory):
    calls: dict = {}
    app = new_app(region, tmp_path_factory.mktemp("cache"), calls)
    with TestClient(app) as client:
        yield client, app, calls


def tile_url(client, layer: str, fmt: str = "png", zoom_offset: int = 0, **q) -> tuple[str, morecantile.Tile]:
    tj = client.get(f"/layers/{layer}/WebMercatorQuad/tilejson.json", params={"format": fmt, **q}).json()
    lon, lat, _ = tj["center"]
    t = WMQ.tile(lon, lat, tj["maxzoom"] + zoom_offset)
    return tj["tiles"][0].replace("{z}", str(t.z)).replace("{x}", str(t.x)).replace("{y}", str(t.y)), t


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
    assert det["computed"] and det["model"] and det["model"] in det["tiles"]


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
    assert "model=" in tj["tiles"][0]  # computed layers pin the model version


def test_openapi_and_docs(server):
    client, _, _ = server
    spec = client.get("/openapi.json").json()
    assert "/point" in spec["paths"] and "/layers" in spec["paths"]
    point_schema = spec["components"]["schemas"]["PointResponse"]["properties"]
    assert {"detection_probability", "susceptibility_probability", "susceptibility_class"} <= set(point_schema)
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "cdn" not in docs.text.lower()


def test_map_page_is_offline(server):
    client, _, _ = server
    page = client.get("/")
    assert page.status_code == 200 and "SYNTHETIC" in page.text
    import re

    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(r.startswith("http://testserver/") or not r.startswith("http") for r in refs), refs
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
    engine = app.state.registry.engine(app.state.registry.get("detection"))
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
    # A pinned model version is immutable.
    durl, _ = tile_url(client, "detection")
    assert "immutable" in client.get(durl).headers["cache-control"]


def test_new_model_version_never_serves_old_tiles(region, tmp_path):
    work = tmp_path / "r"
    shutil.copytree(region, work, ignore=shutil.ignore_patterns("cache"))
    calls: dict = {}
    app = new_app(work, tmp_path / "cache", calls)
    client = TestClient(app)
    url, _ = tile_url(client, "detection", "npy")
    old = client.get(url.split("?")[0])
    assert old.headers["x-cache"] == "MISS"
    assert client.get(url.split("?")[0]).headers["x-cache"] == "HIT"
    new_version = add_fake_model(work, "unet", "attention_unet", 0.6)
    fresh = client.get(url.split("?")[0])
    assert fresh.headers["x-cache"] == "MISS"
    assert fresh.headers["x-slidemap-data-version"].startswith(new_version)
    assert not np.array_equal(np.load(io.BytesIO(old.content)), np.load(io.BytesIO(fresh.content)), equal_nan=True)
    # The old version stays reachable by name.
    pinned = client.get(url)
    assert np.array_equal(np.load(io.BytesIO(pinned.content)), np.load(io.BytesIO(old.content)), equal_nan=True)


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


@pytest.mark.parametrize("zoom_offset", [0, -2])
def test_adjacent_computed_tiles_have_no_seams(server, region, zoom_offset):
    client, app, _ = server
    full, grid = _reference_detection(region)
    engine = app.state.registry.engine(app.state.registry.get("detection"))
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
        ref = _pool2(ref)
    ref_grid = engine.level_grid(level)
    ref_grid = Grid(ref_grid.crs, ref_grid.transform, ref.shape[1], ref.shape[0])
    tiles = []
    for dx in (0, 1):
        u = url.replace(f"/{t.x}/{t.y}.", f"/{t.x + dx}/{t.y}.")
        got = np.load(io.BytesIO(client.get(u).content))[0]
        want = TileService._warp(ref, ref_grid, WMQ, t.x + dx, t.y, t.z, 256).array.filled(np.nan)[0]
        assert np.isfinite(got).sum() > 1000
        np.testing.assert_allclose(got, want, atol=1e-5, equal_nan=True)
        tiles.append(got)
    # Where both tiles have data at the shared edge the values continue smoothly (no seam).
    edge = np.isfinite(tiles[0][:, -1]) & np.isfinite(tiles[1][:, 0])
    if edge.sum() > 10:
        jump = np.abs(tiles[0][edge, -1] - tiles[1][edge, 0]).mean()
        inner = np.abs(tiles[0][edge, -2] - tiles[0][edge, -1]).mean()
        assert jump <= 3 * inner + 1e-3


# ---- compute: single flight, queue, budget -----------------------------------------------------------
def test_concurrent_identical_requests_run_the_model_once(region, tmp_path):
    calls: dict = {}
    gate = threading.Event()
    app = new_app(region, tmp_path, calls, gate)
    with TestClient(app) as client:
        url, _ = tile_url(client, "detection", "png")
        out = []
        threads = [threading.Thread(target=lambda: out.append(client.get(url))) for _ in range(5)]
        for th in threads:
            th.start()
        deadline = time.time() + 20
        while app.state.executor.pending == 0 and time.time() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        gate.set()
        for th in threads:
            th.join(30)
    assert len(out) == 5 and all(r.status_code == 200 for r in out)
    engine = app.state.registry.engine(app.state.registry.get("detection"))
    assert len(calls["unet"]) == engine.model_calls
    n_blocks = len(list((engine.store / "L0").glob("*.npy")))
    assert len(calls["unet"]) == n_blocks  # one model run per block, however many requests


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
        deadline = time.time() + 20
        while app.state.executor.pending == 0 and time.time() < deadline:
            time.sleep(0.02)
        far = url.replace(f"/{t.x}/{t.y}.", f"/{t.x + 1}/{t.y + 1}.")
        assert app.state.executor.pending == 1
        r = client.get(far)
        gate.set()
        th.join(30)
    assert first[0].status_code == 200 and "x-slidemap-partial" in first[0].headers
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    assert "queue" in r.json()["detail"]


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
    out = client.get("/point", params={"lon": 0.0, "lat": 0.0}).json()
    assert out["inside"] is False and out["detection_probability"] is None


# ---- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path,status",
    [
        ("/layers/nope/tiles/WebMercatorQuad/1/0/0.png", 404),
        ("/layers/..%2F..%2Fetc%2Fpasswd/tiles/WebMercatorQuad/1/0/0.png", 404),
        ("/layers/factors/..%2F..%2Fbuild/legend", 404),
        ("/layers/imagery/tiles/WebMercatorQuad/1/0/0.gif", 400),
        ("/layers/imagery/tiles/WebMercatorQuad/1/0/0", 400),
        ("/layers/imagery/tiles/WebMercatorQuad/1/2/0.png", 400),
        ("/layers/imagery/tiles/WebMercatorQuad/1/0/5.png", 400),
        ("/layers/imagery/tiles/WebMercatorQuad/99/0/0.png", 422),
        ("/layers/imagery/tiles/WebMercatorQuad/-1/0/0.png", 422),
        ("/layers/imagery/tiles/WebMercatorQuad/a/0/0.png", 422),
        ("/layers/imagery/tiles/NoSuchTMS/1/0/0.png", 404),
        ("/layers/imagery/tiles/WebMercatorQuad/1/0/0@64x.png", 400),
        ("/layers/imagery/tiles/WebMercatorQuad/1/0/0@0x.png", 400),
        ("/layers/factors/slope/tiles/WebMercatorQuad/1/0/0.png?rescale=abc", 400),
        ("/layers/factors/slope/tiles/WebMercatorQuad/1/0/0.png?rescale=1,0", 400),
        ("/layers/factors/slope/tiles/WebMercatorQuad/1/0/0.png?colormap_name=nope", 400),
        ("/layers/factors/landcover/tiles/WebMercatorQuad/1/0/0.png?colormap_name=viridis", 400),
        ("/layers/detection/tiles/WebMercatorQuad/1/0/0.png?model=../../x", 422),
        ("/layers/detection/tiles/WebMercatorQuad/1/0/0.png?model=abcdef123456", 404),
        ("/layers/imagery/tiles/WebMercatorQuad/1/0/0.png?model=abcdef123456", 400),
        ("/layers/imagery/WebMercatorQuad/tilejson.json?format=gif", 422),
        ("/point?lon=500&lat=0", 422),
        ("/point?lon=abc&lat=0", 422),
        ("/point", 422),
        ("/no/such/endpoint", 404),
    ],
)
def test_bad_inputs_are_4xx_json(server, path, status):
    client, _, _ = server
    r = client.get(path)
    assert r.status_code == status, (path, r.status_code, r.text)
    body = r.json()
    assert isinstance(body["detail"], str) and body["detail"] and "Traceback" not in body["detail"]


def test_missing_model_is_409_json(prepared_region, tmp_path):
    work = tmp_path / "r"
    shutil.copytree(prepared_region, work, ignore=shutil.ignore_patterns("cache", "models"))
    client = TestClient(new_app(work, tmp_path / "c"))
    r = client.get("/layers/detection/tiles/WebMercatorQuad/14/0/0.png")
    assert r.status_code == 409 and "slidemap train unet" in r.json()["detail"]


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
    assert tms.find("ows:SupportedCRS", NS).text == "urn:ogc:def:crs:EPSG::3857"
    single = client.get("/layers/factors/slope/WMTSCapabilities.xml", params={"rescale": "0,40", "colormap_name": "viridis"})
    root = ET.fromstring(single.content)
    template = root.find(".//w:ResourceURL", NS).get("template")
    assert "rescale=0%2C40" in template and "," not in template
    assert "{TileMatrix}" in template and "{TileCol}" in template and "{TileRow}" in template
    # The template fetches real tiles.
    lim = root.find(".//w:TileMatrixLimits", NS)
    url = (template.replace("{TileMatrix}", lim.find("w:TileMatrix", NS).text)
           .replace("{TileCol}", lim.find("w:MinTileCol", NS).text)
           .replace("{TileRow}", lim.find("w:MinTileRow", NS).text))
    assert client.get(url).status_code == 200


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(app):
    """Run ``app`` under a real uvicorn server on a free loopback port; yield its base URL."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


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
    pw = pytest.importorskip("playwright.sync_api")
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


@pytest.mark.slow
def test_real_tiny_models_blocks_match_whole_region_runs(prepared_region, tmp_path):
    """The real loaders (compute.detection / compute.susceptibility) behind the block engine."""
    import sys

    def cli(args: list[str]) -> int:
        # A subprocess each: the trainers set global Keras/TensorFlow state.
        return subprocess.run([sys.executable, "-m", "slidemap.cli", *args], capture_output=True).returncode

    work = tmp_path / "r"
    shutil.copytree(prepared_region, work, ignore=shutil.ignore_patterns("cache", "models", "reports"))
    assert cli(["train", "lsm", str(work), "--preset", "quick", "--models", "multiscale_dense", "--quiet"]) == 0
    assert cli(["train", "unet", str(work), "--preset", "quick", "--splits", "random", "--search-iterations", "0",
                "--no-compare", "--no-baselines", "--epochs", "1", "--no-progress"]) == 0
    app = create_app(work, ServerSettings(cache_dir=tmp_path / "c"))  # default loaders, no fakes
    client = TestClient(app)
    for lid in ("detection", "susceptibility", "susceptibility/classes"):
        url, _ = tile_url(client, lid, "npy")
        arr = np.load(io.BytesIO(client.get(url).content))
        vals = arr[np.isfinite(arr)]
        assert vals.size and ((vals >= 0) & (vals <= (5 if "classes" in lid else 1))).all()
    tj = client.get("/layers/susceptibility/WebMercatorQuad/tilejson.json").json()
    p = client.get("/point", params={"lon": tj["center"][0], "lat": tj["center"][1]}).json()
    assert p["detection_probability"] is not None and p["susceptibility_class"] in range(1, 6)
    reg = app.state.registry
    for lid, tol in (("susceptibility", 0.0), ("detection", 0.05)):
        eng = reg.engine(reg.get(lid))
        eng.ensure([(r, c) for r in range(eng.n_rows) for c in range(eng.n_cols)])
        mosaic = eng.mosaic(eng.grid.bounds, 0)[0][: eng.grid.height, : eng.grid.width]
        with rasterio.open(eng.source) as src:
            stack = src.read(list(eng.runner.band_indexes)).astype(np.float32)
        h = eng.runner.halo
        whole = eng.runner.run(np.pad(stack, ((0, 0), (h, h), (h, h)), constant_values=np.nan))
        assert (np.isnan(mosaic) == np.isnan(whole)).all()
        # The susceptibility model is exact block by block; the U-Net blends overlapping tiles whose
        # placement depends on the input window, so it agrees within the blending's own tolerance.
        assert np.nanmax(np.abs(mosaic - whole)) <= tol + 1e-6
        assert np.nanmean(np.abs(mosaic - whole)) <= 1e-3


def test_unloadable_model_is_409_json(region, tmp_path):
    def broken(path):
        raise TypeError("Could not locate function 'focal_loss'")

    app = new_app(region, tmp_path)
    app.state.registry.loaders = {"unet": broken, "lsm": broken}
    r = TestClient(app).get("/layers/detection/tiles/WebMercatorQuad/14/0/0.png")
    assert r.status_code == 409 and "cannot load the unet model" in r.json()["detail"]
