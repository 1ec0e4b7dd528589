"""/reports: the region's reports over HTTP, on a bare FastAPI app (the router factory alone)."""

from __future__ import annotations

import json
import os

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from slidemap.server import errors as server_errors
from slidemap.server.reports import router


@pytest.fixture()
def client(tmp_path):
    run = tmp_path / "reports" / "lsm" / "20261204T120000Z-ab12"
    run.mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({"synthetic": True, "created": "2026-12-04T12:00:00+00:00"}))
    (run / "report.md").write_text("# SYNTHETIC report\n")
    (run / "roc_pr_blocked.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (run / "weights.keras").write_bytes(b"not served")
    older = tmp_path / "reports" / "unet" / "20261201T000000Z-0000"
    older.mkdir(parents=True)
    (older / "report.json").write_text("{broken")
    (tmp_path / "secret.png").write_bytes(b"outside")
    os.symlink(tmp_path / "secret.png", run / "link.png")
    app = FastAPI()
    server_errors.install(app)
    app.include_router(router(tmp_path))
    return TestClient(app)


def test_list_newest_first_with_files(client):
    body = client.get("/reports").json()
    assert [(r["kind"], r["run_id"]) for r in body["reports"]] == [
        ("lsm", "20261204T120000Z-ab12"), ("unet", "20261201T000000Z-0000")]
    lsm, unet = body["reports"]
    assert lsm["synthetic"] is True and lsm["href"] == "/reports/lsm/20261204T120000Z-ab12"
    assert "roc_pr_blocked.png" in lsm["files"] and "report.md" in lsm["files"] and "weights.keras" not in lsm["files"]
    assert unet["synthetic"] is None and body["truncated"] is False  # a broken report is listed, unflagged


def test_report_and_its_files(client):
    r = client.get("/reports/lsm/20261204T120000Z-ab12")
    assert r.status_code == 200 and r.json()["synthetic"] is True
    png = client.get("/reports/lsm/20261204T120000Z-ab12/roc_pr_blocked.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    md = client.get("/reports/lsm/20261204T120000Z-ab12/report.md")
    assert md.status_code == 200 and md.text.startswith("# SYNTHETIC")


@pytest.mark.parametrize("url, status", [
    ("/reports/lsm/nope", 404),
    ("/reports/lsm/20261204T120000Z-ab12/weights.keras", 422),  # not a served kind of file
    ("/reports/lsm/20261204T120000Z-ab12/missing.png", 404),
    ("/reports/lsm/20261204T120000Z-ab12/link.png", 404),  # a link out of the folder
    ("/reports/lsm/20261204T120000Z-ab12/..%2Fsecret.png", 404),  # no such route
    ("/reports/LSM!/x", 422),
])
def test_bad_paths_are_json_4xx(client, url, status):
    r = client.get(url)
    assert r.status_code == status and set(r.json()) == {"detail", "status"}, (url, r.text)
    assert "/tmp" not in r.text


# ---- /downloads: the region's outputs, and nothing else under the folder -----------------------
@pytest.fixture()
def downloads(tmp_path):
    from slidemap.server.downloads import router as downloads_router

    for rel, data in {"maps/susceptibility_multiscale-abc.tif": b"II*\x00", "maps/susceptibility_multiscale-abc.qml": b"<q/>",
                      "build/inventory.gpkg": b"SQLite", "build/factors.tif": b"input, not an output",
                      "cache/tiles/x.png": b"cache", "region.toml": b"[region]"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    os.symlink(tmp_path / "region.toml", tmp_path / "maps" / "linked.tif")
    app = FastAPI()
    server_errors.install(app)
    app.include_router(downloads_router(tmp_path))
    return TestClient(app)


def test_downloads_list_only_outputs(downloads):
    outputs = downloads.get("/downloads").json()["outputs"]
    assert {o["path"] for o in outputs} == {"maps/susceptibility_multiscale-abc.tif",
                                            "maps/susceptibility_multiscale-abc.qml", "build/inventory.gpkg"}
    tif = next(o for o in outputs if o["path"].endswith(".tif"))
    assert tif["group"] == "Maps" and tif["size"] == 4 and tif["href"] == "/downloads/maps/susceptibility_multiscale-abc.tif"
    r = downloads.get(tif["href"])
    assert r.status_code == 200 and r.content == b"II*\x00" and r.headers["content-type"].startswith("image/tiff")
    assert "attachment" in r.headers["content-disposition"]


@pytest.mark.parametrize("url", ["/downloads/build/factors.tif", "/downloads/region.toml", "/downloads/cache/tiles/x.png",
                                 "/downloads/maps/linked.tif", "/downloads/maps/../region.toml",
                                 "/downloads/maps/%2E%2E/region.toml", "/downloads/..%2Fregion.toml"])
def test_downloads_send_nothing_else(downloads, url):
    r = downloads.get(url)
    assert r.status_code in (404, 422) and set(r.json()) == {"detail", "status"}, (url, r.text)
    assert "/tmp" not in r.text


def test_downloads_answer_ranges_and_refuse_bad_ones_in_json(downloads):
    """Found by a fuzzer: Starlette answered a bad Range header in plain text; now the server's JSON."""
    url = "/downloads/maps/susceptibility_multiscale-abc.tif"
    part = downloads.get(url, headers={"Range": "bytes=1-2"})
    assert part.status_code == 206 and part.content == b"I*" and part.headers["content-range"] == "bytes 1-2/4"
    for bad in ("bytes=3-1", "bytes=abc", "items=0-5"):
        r = downloads.get(url, headers={"Range": bad})
        assert r.status_code == 400 and set(r.json()) == {"detail", "status"} and "Range header" in r.json()["detail"], bad
    r = downloads.get(url, headers={"Range": "bytes=99-"})
    assert r.status_code == 416 and r.json()["status"] == 416 and r.headers["content-range"] == "bytes */4"
