"""The tile server's routes as a factory (titiler's shape): mounted on a bare FastAPI app, without
create_app's middleware, static files or docs; the render query declared once for every route."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from slidemap.server import errors as server_errors
from slidemap.server.factory import TileServerFactory
from slidemap.server.service import ServerSettings, build_service


@pytest.fixture(scope="module")
def factory(prepared_region, tmp_path_factory):
    service = build_service(prepared_region, ServerSettings(cache_dir=tmp_path_factory.mktemp("cache")))
    return TileServerFactory(service=service)


@pytest.fixture(scope="module")
def client(factory):
    app = FastAPI()
    server_errors.install(app, factory.scrub)
    app.include_router(factory.router)
    with TestClient(app) as c:
        yield c


def test_a_bare_app_serves_layers_tiles_and_points(client):
    layers = client.get("/layers").json()["layers"]
    slope = next(layer for layer in layers if layer["id"] == "factors/slope")
    tile_url = slope["tiles"].replace("http://testserver", "")
    lon, lat = [(a + b) / 2 for a, b in zip(slope["bounds"][:2], slope["bounds"][2:], strict=True)]
    z = slope["maxzoom"]
    import morecantile

    t = morecantile.tms.get("WebMercatorQuad").tile(lon, lat, z)
    r = client.get(tile_url.format(z=t.z, x=t.x, y=t.y))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png" and r.headers["etag"]
    assert client.get("/point", params={"lon": lon, "lat": lat}).json()["inside"] is True
    assert client.get("/").status_code == 404  # no templates given: the factory has no map page


def test_the_render_query_is_one_dependency_everywhere(client):
    """TileJSON, tiles and WMTS take the same ?model=&rescale=&colormap_name= and refuse the same way."""
    good = {"rescale": "0,40", "colormap_name": "viridis"}
    tj = client.get("/layers/factors/slope/WebMercatorQuad/tilejson.json", params=good)
    assert tj.status_code == 200 and "rescale=0%2C40" in tj.json()["tiles"][0] and "colormap_name=viridis" in tj.json()["tiles"][0]
    wmts = client.get("/layers/factors/slope/WMTSCapabilities.xml", params=good)
    assert wmts.status_code == 200 and "colormap_name=viridis" in wmts.text
    for url in ("/layers/factors/slope/WebMercatorQuad/tilejson.json", "/layers/factors/slope/WMTSCapabilities.xml",
                "/layers/factors/slope/tiles/WebMercatorQuad/10/0/0.png"):
        for bad in ({"rescale": "zero,forty"}, {"colormap_name": "no-such-map"}, {"model": "../etc"}):
            r = client.get(url, params=bad)
            assert r.status_code == 422 and set(r.json()) == {"detail", "status"}, (url, bad, r.text)


def test_the_schema_declares_the_render_query_once_per_route(client):
    paths = client.app.openapi()["paths"]
    tile = paths["/layers/{layer_id}/tiles/{tms_id}/{z}/{x}/{y_fmt}"]["get"]
    names = [p["name"] for p in tile["parameters"]]
    assert {"model", "rescale", "colormap_name", "v"} <= set(names) and len(names) == len(set(names))
