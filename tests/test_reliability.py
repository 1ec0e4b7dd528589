"""Reliability and security of the tile server (issue 11), the fast parts: bounded sizes, stale
tiles after an input changes, faults that degrade (unwritable cache, unreadable input, odd
points), client cancellation, overload answered with 503 at once, Host header and public URLs,
no server paths in answers, CORS, and an OpenAPI schema that tells the truth.

The fuzzing and load parts run in ``python -m benchmarks.reliability`` (RELIABILITY.md).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import shutil
import threading
import time
from pathlib import Path

import httpx
import jsonschema
import morecantile
import numpy as np
import pytest
import rasterio
from fastapi.testclient import TestClient
from PIL import Image

from server_models import add_fake_model, make_loaders, served
from slidemap.server.app import ServerSettings, create_app

WMQ = morecantile.tms.get("WebMercatorQuad")
BS = 64
HOSTS = ("testserver", "127.0.0.1")


@pytest.fixture(scope="module")
def base_region(prepared_region, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reliability") / "region"
    shutil.copytree(prepared_region, out, ignore=shutil.ignore_patterns("cache", "models"))
    add_fake_model(out, "unet", "attention_unet", 0.3)
    add_fake_model(out, "lsm", "multiscale", 0.0)
    return out


@pytest.fixture
def region(base_region, tmp_path) -> Path:
    """A private copy: these tests change, truncate and delete inputs."""
    out = tmp_path / "region"
    shutil.copytree(base_region, out)
    return out


def make_app(region: Path, cache: Path, calls: dict | None = None, gate=None, **kw):
    kw.setdefault("allowed_hosts", HOSTS)
    kw.setdefault("report_device", False)
    kw.setdefault("max_queue_seconds", float("inf"))  # the overload tests set the default limit themselves
    return create_app(region, ServerSettings(cache_dir=cache, block_size=BS,
                                             loaders=make_loaders(calls if calls is not None else {}, gate), **kw))


def centre_tile(client: TestClient, layer: str, fmt: str = "npy") -> tuple[str, morecantile.Tile]:
    tj = client.get(f"/layers/{layer}/WebMercatorQuad/tilejson.json", params={"format": fmt}).json()
    t = WMQ.tile(tj["center"][0], tj["center"][1], tj["maxzoom"])
    return f"/layers/{layer}/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.{fmt}", t


def replace_atomically(path: Path, data: bytes) -> None:
    """Rewrite a file the way `prepare` does: a new file renamed into place."""
    tmp = path.with_name("." + path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def rewrite_factor(path: Path, name: str, scale: float) -> None:
    """Re-prepare factors.tif with one band scaled (a changed input, same grid and bands)."""
    tmp = path.with_name(".factors.new.tif")
    with rasterio.open(path) as src:
        profile = src.profile
        data = src.read()
        names = list(src.descriptions)
    data[names.index(name)] *= scale
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for i, n in enumerate(names, start=1):
            dst.set_band_description(i, n)
    os.replace(tmp, path)


# ---- bounded cost ------------------------------------------------------------------------------
def test_colormap_legends_are_bounded(region, tmp_path):
    client = TestClient(make_app(region, tmp_path / "c"))
    t0 = time.perf_counter()
    for q in ("height=500000", "width=500000", "width=-5", "height=0"):
        r = client.get(f"/colorMaps/viridis?format=png&{q}")
        assert r.status_code == 422 and r.json()["status"] == 422, q
    assert time.perf_counter() - t0 < 2  # refused before any work
    r = client.get("/colorMaps/viridis?format=png&width=1024&height=1024&orientation=vertical")
    img = Image.open(io.BytesIO(r.content))
    assert r.status_code == 200 and img.size == (1024, 1024)
    lut = client.get("/colorMaps/viridis").json()
    assert len(lut) == 256 and lut["0"][:3] == [68, 1, 84]
    listed = client.get("/colorMaps").json()["colorMaps"]
    assert {"id": "viridis", "href": "http://testserver/colorMaps/viridis"} in listed
    tms = client.get("/tileMatrixSets").json()["tileMatrixSets"]
    assert any(t["id"] == "WebMercatorQuad" for t in tms)
    assert client.get("/tileMatrixSets/WebMercatorQuad").json()["id"] == "WebMercatorQuad"


def test_every_parameter_is_bounded_in_the_schema(region, tmp_path):
    """Sizes and counts bounded on every endpoint: every number has a range, every string a
    pattern, enum or length, every list a length limit."""
    spec = TestClient(make_app(region, tmp_path / "c")).get("/openapi.json").json()
    unbounded = []
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            for p in op.get("parameters", []):
                schema = p["schema"]
                options = schema.get("anyOf", [schema])
                for o in options:
                    if o.get("type") == "null":
                        continue
                    t = o.get("type")
                    ok = (
                        (t in ("integer", "number") and "maximum" in o and "minimum" in o)
                        or (t == "string" and ("pattern" in o or "enum" in o or "maxLength" in o))
                        or (t == "array" and "maxItems" in o and "pattern" in o.get("items", {}))
                        or ("enum" in o) or ("const" in o)
                    )
                    if not ok:
                        unbounded.append((method, path, p["name"], o))
    assert unbounded == []


def test_long_urls_are_refused(region, tmp_path):
    client = TestClient(make_app(region, tmp_path / "c"))
    r = client.get("/layers?x=" + "a" * 5000)
    assert r.status_code == 414 and r.json()["status"] == 414


# ---- stale tiles ---------------------------------------------------------------------------------
def test_rebuilt_input_never_serves_stale_tiles(region, tmp_path):
    cache = tmp_path / "c"
    client = TestClient(make_app(region, cache))
    slope_url, _ = centre_tile(client, "factors/slope")
    sus_url, _ = centre_tile(client, "susceptibility")
    tj = client.get("/layers/susceptibility/WebMercatorQuad/tilejson.json").json()
    pinned_before = tj["tiles"][0]
    before = {u: client.get(u) for u in (slope_url, sus_url)}
    assert all(r.headers["x-cache"] == "MISS" for r in before.values())
    assert all(client.get(u).headers["x-cache"] == "HIT" for u in before)
    rewrite_factor(region / "build" / "factors.tif", "slope", 0.5)  # `prepare` ran again under the server
    for u, old in before.items():
        new = client.get(u)
        assert new.status_code == 200 and new.headers["x-cache"] == "MISS", u
        assert new.headers["x-slidemap-data-version"] != old.headers["x-slidemap-data-version"]
        # What a fresh server computes from the new inputs, with an empty cache.
        fresh = TestClient(make_app(region, tmp_path / f"fresh{len(u)}")).get(u)
        np.testing.assert_array_equal(np.load(io.BytesIO(new.content)), np.load(io.BytesIO(fresh.content)))
        assert not np.array_equal(np.load(io.BytesIO(new.content)), np.load(io.BytesIO(old.content)), equal_nan=True)
    # TileJSON hands out a new data tag; the old tag is no longer immutable.
    tj_new = client.get("/layers/susceptibility/WebMercatorQuad/tilejson.json").json()
    assert tj_new["tiles"][0] != pinned_before
    z, x, y = WMQ.tile(tj["center"][0], tj["center"][1], tj["maxzoom"])[2], *WMQ.tile(tj["center"][0], tj["center"][1], tj["maxzoom"])[:2]
    old_pinned = pinned_before.replace("{z}", str(z)).replace("{x}", str(x)).replace("{y}", str(y))
    assert "immutable" not in client.get(old_pinned).headers["cache-control"]
    # A restarted server on the same cache serves the new data (from cache), never the old.
    again = TestClient(make_app(region, cache))
    r = again.get(sus_url)
    assert r.headers["x-cache"] == "HIT"
    assert r.headers["x-slidemap-data-version"] == client.get(sus_url).headers["x-slidemap-data-version"]


def test_changed_model_card_changes_the_class_tiles(region, tmp_path):
    """Class breaks live in the card, which is not part of the version hash: the key covers them."""
    from slidemap.compute.models.store import list_models, update_card

    client = TestClient(make_app(region, tmp_path / "c"))
    url, _ = centre_tile(client, "susceptibility/classes")
    first = client.get(url)
    info = list_models(region, "lsm")[0]
    update_card(info.path, {"class_breaks": [0.01, 0.02, 0.03, 0.04, 1.0]})
    second = client.get(url)
    assert second.headers["x-cache"] == "MISS"
    assert second.headers["x-slidemap-data-version"] != first.headers["x-slidemap-data-version"]


# ---- faults degrade ------------------------------------------------------------------------------
def test_unwritable_cache_serves_tiles_uncached(region, tmp_path):
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("not a folder")  # works as root too, unlike chmod
    client = TestClient(make_app(region, blocker / "cache"))
    for layer in ("factors/slope", "imagery", "inventory", "detection", "susceptibility/classes"):
        url, _ = centre_tile(client, layer, "png")
        r = client.get(url)
        assert r.status_code == 200, (layer, r.text)
        assert r.headers["x-cache"].startswith("MISS")
    h = client.get("/health").json()
    assert h["status"] == "degraded"
    assert any("tile cache not writable" in p for p in h["problems"])
    assert any("block store not writable" in p for p in h["problems"])
    assert str(tmp_path) not in str(h)


def test_full_disk_is_logged_once_and_tiles_still_served(region, tmp_path, monkeypatch, caplog):
    import slidemap.server.cache as cache_mod

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache_mod, "write_bytes_atomic", full)
    client = TestClient(make_app(region, tmp_path / "c"))
    caplog.set_level(logging.WARNING, logger="slidemap.server.cache")
    url, t = centre_tile(client, "factors/slope", "png")
    for dx in range(3):
        r = client.get(url.replace(f"/{t.x}/", f"/{t.x + dx}/"))
        assert r.status_code == 200
    warnings = [r for r in caplog.records if "not writable" in r.getMessage()]
    assert len(warnings) == 1
    assert "No space left" in client.get("/health").json()["problems"][0]


def test_unreadable_input_gives_409_on_its_layers_only(region, tmp_path):
    client = TestClient(make_app(region, tmp_path / "c"))
    imagery = region / "build" / "imagery.tif"
    good = imagery.read_bytes()
    slope_url, _ = centre_tile(client, "factors/slope", "png")
    img_url, _ = centre_tile(client, "imagery", "png")
    det_url, _ = centre_tile(client, "detection", "png")
    assert client.get("/health").json()["status"] == "ok"
    replace_atomically(imagery, good[: len(good) // 3])  # truncated after start
    for url in (img_url, det_url):
        r = client.get(url)
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert "build/imagery.tif" in detail and "re-run `slidemap prepare`" in detail
        assert str(region) not in detail
    assert client.get(slope_url).status_code == 200  # the rest keeps working
    layers = {lyr["id"]: lyr for lyr in client.get("/layers").json()["layers"]}
    assert layers["imagery"]["available"] is False and "build/imagery.tif" in layers["imagery"]["problem"]
    assert layers["factors/slope"]["available"] is True and layers["susceptibility"]["available"] is True
    h = client.get("/health").json()
    assert h["status"] == "degraded" and any("build/imagery.tif" in p for p in h["problems"])
    assert h["available_layers"] < h["layers"]
    wmts = client.get("/WMTSCapabilities.xml")
    assert wmts.status_code == 200 and "factors/slope" in wmts.text and ">imagery<" not in wmts.text
    tj = client.get("/layers/factors/slope/WebMercatorQuad/tilejson.json").json()
    p = client.get("/point", params={"lon": tj["center"][0], "lat": tj["center"][1]}).json()
    assert p["factors"]["slope"] is not None and p["detection_probability"] is None
    assert "build/imagery.tif" in p["notes"]["detection"]
    # Deleted entirely: "missing"; restored: everything back, health ok.
    imagery.unlink()
    r = client.get(img_url)
    assert r.status_code == 409 and "build/imagery.tif is missing" in r.json()["detail"]
    replace_atomically(imagery, good)
    assert client.get(img_url).status_code == 200
    assert client.get("/health").json()["status"] == "ok"


def test_unreadable_input_at_start_still_serves_the_rest(region, tmp_path):
    factors = region / "build" / "factors.tif"
    replace_atomically(factors, factors.read_bytes()[:5000])
    client = TestClient(make_app(region, tmp_path / "c"))
    h = client.get("/health").json()
    assert h["status"] == "degraded" and any("build/factors.tif" in p for p in h["problems"])
    layers = {lyr["id"]: lyr for lyr in client.get("/layers").json()["layers"]}
    assert "factors/slope" in layers and layers["factors/slope"]["available"] is False  # named from factors.json
    assert layers["imagery"]["available"] is True
    assert client.get("/layers/factors/slope/tiles/WebMercatorQuad/12/0/0.png").status_code == 409
    url, _ = centre_tile(client, "imagery", "png")
    assert client.get(url).status_code == 200


@pytest.mark.parametrize("lon,lat", [(-179.9, -89.9), (180, 90), (-180, 0), (0, 0), (15, 0), (110.3, 89.99), (-70, 0)])
def test_point_anywhere_on_earth_is_an_answer(region, tmp_path, lon, lat):
    client = TestClient(make_app(region, tmp_path / "c"))
    r = client.get("/point", params={"lon": lon, "lat": lat})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["inside"] is False and body["detection_probability"] is None


# ---- overload and cancellation -------------------------------------------------------------------
def test_overload_answers_503_at_once_not_after_a_timeout(region, tmp_path):
    """Cold computed tiles at concurrency 16 against default queue limits while the model is stuck:
    every answer is 200 or 503 + Retry-After, and the 503s come within a second or two."""
    gate = threading.Event()
    defaults = ServerSettings()
    app = make_app(region, tmp_path / "c", {}, gate, max_queue_seconds=defaults.max_queue_seconds)
    assert defaults.max_queue_seconds == 8.0 and app.state.executor.prior_block_s == 2.0
    results: list[tuple[int, float, str | None]] = []
    with TestClient(app) as client:
        tj = client.get("/layers/detection/WebMercatorQuad/tilejson.json").json()
        z = tj["maxzoom"]
        w, s, e, n = tj["bounds"]
        tiles = list(WMQ.tiles(w, s, e, n, [z]))[:16]
        assert len(tiles) >= 4

        def get(t):
            t0 = time.perf_counter()
            r = client.get(f"/layers/detection/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png")
            results.append((r.status_code, time.perf_counter() - t0, r.headers.get("retry-after")))

        threads = [threading.Thread(target=get, args=(t,)) for t in tiles for _ in range(2)]
        for th in threads:
            th.start()
        deadline = time.monotonic() + 20
        while sum(1 for r in results if r[0] == 503) < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        gate.set()
        for th in threads:
            th.join(60)
    statuses = {code for code, _, _ in results}
    assert statuses <= {200, 503} and 503 in statuses
    refused = [(dt, ra) for code, dt, ra in results if code == 503]
    assert all(ra is not None and int(ra) >= 1 for _, ra in refused)
    assert max(dt for dt, _ in refused) < 5


def test_client_that_leaves_drops_its_queued_blocks(region, tmp_path):
    calls: dict = {}
    gate = threading.Event()
    app = make_app(region, tmp_path / "c", calls, gate, max_queue_seconds=1000)
    ex = app.state.executor
    with served(app) as base:
        tj = httpx.get(f"{base}/layers/detection/WebMercatorQuad/tilejson.json").json()
        t = WMQ.tile(tj["center"][0], tj["center"][1], tj["maxzoom"] - 1)  # several blocks
        url = f"{base}/layers/detection/tiles/WebMercatorQuad/{t.z}/{t.x}/{t.y}.png"
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(url, timeout=httpx.Timeout(10, read=1.0))  # gives up while the model is stuck
        deadline = time.monotonic() + 10
        while ex.dropped == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        queued = ex.dropped
        gate.set()
        deadline = time.monotonic() + 10
        while ex.pending and time.monotonic() < deadline:
            time.sleep(0.02)
    assert queued >= 1 and len(calls["unet"]) == 1  # only the block already running was computed


# ---- URLs, hosts, paths, CORS --------------------------------------------------------------------
def test_host_header_is_checked_and_public_url_used(region, tmp_path):
    client = TestClient(make_app(region, tmp_path / "c", allowed_hosts=("127.0.0.1", "localhost", "::1")))
    evil = client.get("/layers", headers={"host": "evil.example"})
    assert evil.status_code == 400 and "Host header" in evil.json()["detail"]
    # a port that cannot exist would go into every TileJSON and WMTS link (found by a fuzzer)
    for bad in ("evil.example:80", "127.0.0.1.evil.example", "127.0.0.1/../x", "a@127.0.0.1", "",
                "127.0.0.1:99999", "127.0.0.1:0", "[::1]:70000", "[::1]x"):
        assert client.get("/health", headers={"host": bad}).status_code == 400, bad
    ok = client.get("/layers", headers={"host": "127.0.0.1:8000"})
    assert ok.status_code == 200
    assert all(lyr["tilejson"].startswith("http://127.0.0.1:8000/") for lyr in ok.json()["layers"])
    assert client.get("/health", headers={"host": "[::1]:8000"}).status_code == 200
    public = TestClient(make_app(region, tmp_path / "d", public_url="https://maps.example.org/slidemap/",
                                 allowed_hosts=("127.0.0.1",)))
    r = public.get("/layers", headers={"host": "127.0.0.1:8000"})
    for lyr in r.json()["layers"]:
        assert lyr["tilejson"].startswith("https://maps.example.org/slidemap/layers/")
    tj = public.get("/layers/factors/slope/WebMercatorQuad/tilejson.json", headers={"host": "127.0.0.1"}).json()
    assert tj["tiles"][0].startswith("https://maps.example.org/slidemap/layers/factors/slope/tiles/")
    wmts = public.get("/WMTSCapabilities.xml", headers={"host": "maps.example.org"})
    assert wmts.status_code == 200 and "127.0.0.1" not in wmts.text  # the public host is allowed too
    assert public.get("/health", headers={"host": "evil.example"}).status_code == 400


def test_no_server_path_in_any_answer(region, tmp_path):
    cache = tmp_path / "cache"
    work = tmp_path / "empty"
    shutil.copytree(region, work, ignore=shutil.ignore_patterns("models", "cache"))
    clients = [TestClient(make_app(region, cache)), TestClient(make_app(work, tmp_path / "c2"))]
    urls = ["/health", "/layers", "/models", "/WMTSCapabilities.xml", "/layers/factors/slope/legend",
            "/layers/detection/legend", "/layers/susceptibility/classes/legend",
            "/layers/detection/WebMercatorQuad/tilejson.json", "/layers/nope/legend",
            "/layers/detection/tiles/WebMercatorQuad/14/0/0.png?model=abcdef123456",
            "/layers/detection/tiles/WebMercatorQuad/14/0/0.png", "/point?lon=110.3&lat=29.3",
            "/point?lon=0&lat=0&detection_model=abcdef", "/openapi.json", "/", "/docs", "/no/such/path"]
    secrets = [str(tmp_path), str(Path.home()), os.path.realpath(tmp_path)]
    for client in clients:
        for u in urls:
            r = client.get(u)
            assert r.status_code < 500, (u, r.text)
            assert not any(s in r.text for s in secrets), (u, r.text[:500])


def test_cors_is_off_by_default_and_configurable(region, tmp_path):
    plain = TestClient(make_app(region, tmp_path / "c"))
    r = plain.get("/health", headers={"Origin": "http://127.0.0.1:8501"})
    assert "access-control-allow-origin" not in r.headers
    cors = TestClient(make_app(region, tmp_path / "d", cors_origins=("http://127.0.0.1:8501",)))
    r = cors.get("/health", headers={"Origin": "http://127.0.0.1:8501"})
    assert r.headers["access-control-allow-origin"] == "http://127.0.0.1:8501"
    assert "access-control-allow-origin" not in cors.get("/health", headers={"Origin": "http://evil.example"}).headers


def test_health_reports_the_device(region, tmp_path, monkeypatch):
    from slidemap.compute.models import runtime as inference

    monkeypatch.setattr(inference, "device_summary", lambda: {"device": "CPU", "gpus": [], "tensorflow": "test"})
    app = make_app(region, tmp_path / "c", report_device=True)
    with TestClient(app) as client:
        deadline = time.monotonic() + 10
        while client.get("/health").json()["device"]["device"] != "CPU" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json()["device"] == {"device": "CPU", "gpus": [], "tensorflow": "test"}


# ---- the schema tells the truth ------------------------------------------------------------------
def test_schema_documents_the_error_bodies_and_statuses_it_answers(region, tmp_path):
    client = TestClient(make_app(region, tmp_path / "c"))
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ErrorBody" in schemas
    error_schema = schemas["ErrorBody"]
    tile_op = spec["paths"]["/layers/{layer_id}/tiles/{tms_id}/{z}/{x}/{y_fmt}"]["get"]
    y_fmt = next(p for p in tile_op["parameters"] if p["name"] == "y_fmt")["schema"]
    assert y_fmt["pattern"].startswith("^[0-9]")
    layer_id = next(p for p in tile_op["parameters"] if p["name"] == "layer_id")["schema"]
    assert "factors/slope" in layer_id["enum"]
    for path, ops in spec["paths"].items():
        for op in ops.values():
            for code, resp in op["responses"].items():
                if code.isdigit() and int(code) >= 400:
                    assert resp["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}
    # Each error answered is documented for its operation, and has the documented body.
    cases = [
        ("/layers/{layer_id}/tiles/{tms_id}/{z}/{x}/{y_fmt}", "/layers/nope/tiles/WebMercatorQuad/1/0/0.png", 404),
        ("/layers/{layer_id}/tiles/{tms_id}/{z}/{x}/{y_fmt}", "/layers/imagery/tiles/WebMercatorQuad/1/0/0.gif", 422),
        ("/layers/{layer_id}/tiles/{tms_id}/{z}/{x}/{y_fmt}", "/layers/imagery/tiles/WebMercatorQuad/1/5/0.png", 404),
        ("/layers/{layer_id}/tiles/{tms_id}/{z}/{x}/{y_fmt}",
         "/layers/factors/slope/tiles/WebMercatorQuad/1/0/0.png?rescale=2,1&host=evil.example", 400),
        ("/layers/{layer_id}/{tms_id}/tilejson.json", "/layers/detection/WebMercatorQuad/tilejson.json?model=zz", 404),
        ("/point", "/point?lon=1000&lat=0", 422),
        ("/colorMaps/{colorMapId}", "/colorMaps/viridis?format=png&height=99999", 422),
        # The request policy's answers, possible on every route (a fuzzer found 414 undocumented).
        ("/point", "/point?lon=1&lat=0&x=" + "9" * 10_000, 414),
        ("/layers", "/layers?&host=evil.example", 400),
    ]
    for op_path, url, status in cases:
        url, _, host = url.partition("&host=")
        r = client.get(url, headers={"host": host} if host else {})
        assert r.status_code == status, (url, r.text)
        assert str(status) in spec["paths"][op_path]["get"]["responses"], (op_path, status)
        jsonschema.validate(r.json(), error_schema)
