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
