"""Dashboard pages under streamlit.testing.v1.AppTest: map with a tile server up, down and failing;
report pages with saved reports (schema-shaped fixtures here, real tiny training runs when present);
paper page; model version selector; the `slidemap dashboard` command's checks."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from PIL import Image
from streamlit.testing.v1 import AppTest

import slidemap.dashboard
from slidemap.dashboard import map as map_page
from slidemap.dashboard import paper, reports
from slidemap.errors import SlidemapError
from slidemap.server import downloads as server_downloads
from slidemap.server import reports as server_reports

APP = str(Path(slidemap.dashboard.__file__).parent / "app.py")
METHOD_MD = Path(__file__).resolve().parents[1].parent / "shared" / "method.md"
BOUNDS = [91.80, 22.30, 91.84, 22.34]


# --------------------------------------------------------------------------------------------
# A small tile server stub: the /layers, TileJSON, tile, /point and /health contract of issue 5.


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_stub_app(state: dict[str, Any]) -> FastAPI:
    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"])
    colours = {"imagery": (90, 120, 80), "factors/slope": (200, 180, 40), "susceptibility/classes": (200, 40, 40),
               "detection": (40, 40, 220)}

    def base(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    @app.get("/health")
    def health():
        if state["mode"] == "error":
            return JSONResponse({"detail": "stub failure"}, status_code=500)
        return {"status": "ok"}

    @app.get("/layers")
    def layers(request: Request):
        state["requests"].append(str(request.url))
        if state["mode"] == "error":
            return JSONResponse({"detail": "block engine crashed (stub)"}, status_code=500)
        if state["mode"] == "notfound":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        b = base(request)
        out = []
        for lid, title, kind, units in (
            ("imagery", "Imagery (true colour)", "imagery", None),
            ("factors/slope", "Slope", "factor", "degrees"),
            ("susceptibility/classes", "Susceptibility classes", "susceptibility", "class"),
            ("detection", "Landslide probability (U-Net)", "detection", "probability"),
        ):
            out.append({"id": lid, "title": title, "kind": kind, "units": units,
                        "tilejson": f"{b}/layers/{lid}/tilejson.json", "wmts": f"{b}/layers/{lid}/WMTSCapabilities.xml",
                        "legend": f"{b}/layers/{lid}/legend" if kind == "susceptibility" else None})
        return out

    @app.get("/layers/{lid:path}/tilejson.json")
    def tilejson(lid: str, request: Request):
        state["requests"].append(str(request.url))
        if state["mode"] == "tilejson404" and lid == "detection":
            return JSONResponse({"detail": "no detector trained"}, status_code=404)
        query = f"?{request.url.query}" if request.url.query else ""
        return {"tilejson": "3.0.0", "tiles": [f"{base(request)}/tiles/{lid}/{{z}}/{{x}}/{{y}}.png{query}"],
                "bounds": BOUNDS, "minzoom": 8, "maxzoom": 16}

    @app.get("/layers/{lid:path}/legend")
    def legend(lid: str):
        return [{"label": n, "color": c} for n, c in zip(
            ("very low", "low", "moderate", "high", "very high"),
            ("#1a9641", "#a6d96a", "#ffffbf", "#fdae61", "#d7191c"), strict=True)]

    @app.get("/tiles/{lid:path}/{z}/{x}/{y}.png")
    def tile(lid: str, z: int, x: int, y: int, request: Request):
        state["tiles"].append(str(request.url))
        buf = io.BytesIO()
        Image.new("RGBA", (256, 256), colours.get(lid, (0, 0, 0)) + (255,)).save(buf, "PNG")
        return Response(buf.getvalue(), media_type="image/png")

    @app.get("/models")
    def models():
        def entry(name, version, score, lo, hi, default, metric="roc_auc"):
            return {"name": name, "version": version, "score": score, "ci95": [lo, hi], "default": default,
                    "has_skill": lo > 0.5 if metric == "roc_auc" else lo > 0.05, "metric": metric,
                    "skill": f"{score:.3f}"}
        return {"region": "stub", "synthetic": True, "roles": {
            "susceptibility": {"default": "aaa111", "models": [
                entry("multiscale", "aaa111", 0.874, 0.835, 0.908, True), entry("logreg", "bbb222", 0.813, 0.77, 0.85, False),
                entry("multiscale", "old000", 0.70, 0.6, 0.8, False)]},
            "detection": {"default": "ccc333", "models": [entry("attention-unet", "ccc333", 0.775, 0.724, 0.813, True, "f1")]},
        }}

    # the region's reports and outputs, answered by the real server's functions over state["region"]
    def region_dir() -> Path:
        if state.get("region") is None:
            raise HTTPException(404, "Not Found")
        return state["region"]

    @app.get("/reports")
    def reports_list():
        return server_reports.list_reports(region_dir() / "reports").model_dump()

    @app.get("/reports/{kind}/{run_id}")
    def report_json(kind: str, run_id: str):
        try:
            return FileResponse(server_reports.report_folder(region_dir() / "reports", kind, run_id) / "report.json")
        except SlidemapError as exc:
            raise HTTPException(404, str(exc)) from exc

    @app.get("/reports/{kind}/{run_id}/{name}")
    def report_file(kind: str, run_id: str, name: str):
        state["requests"].append(f"/reports/{kind}/{run_id}/{name}")
        try:
            return FileResponse(server_reports.report_file_path(region_dir() / "reports", kind, run_id, name))
        except SlidemapError as exc:
            raise HTTPException(404, str(exc)) from exc

    @app.get("/downloads")
    def downloads_list():
        return {"outputs": [o.model_dump() for o in server_downloads.region_outputs(region_dir())]}

    @app.get("/point")
    def point(lon: float, lat: float, request: Request):
        state["requests"].append(str(request.url))
        if state["mode"] == "pointerror":
            return JSONResponse({"detail": "lon/lat outside the region"}, status_code=400)
        return {"lon": lon, "lat": lat, "factors": {"slope": 23.5, "altitude": 412.0},
                "susceptibility": {"probability": 0.625, "class": 4}, "detection": None}

    return app


class StubServer:
    def __init__(self) -> None:
        import uvicorn

        self.state: dict[str, Any] = {"mode": "ok", "requests": [], "tiles": []}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(make_stub_app(self.state), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> StubServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("stub tile server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(5)


@pytest.fixture(scope="module")
def stub():
    with StubServer() as server:
        yield server


@pytest.fixture()
def server(stub, tmp_path):
    # the stub serves the reports and outputs of the `region` fixture's folder (the same tmp_path)
    stub.state.update(mode="ok", requests=[], tiles=[], region=tmp_path / "region")
    return stub


# --------------------------------------------------------------------------------------------
# Saved reports shaped as issues 3 and 4 define them (and as training/lsm_report.py writes them).


def _m(acc: float, auc: float, seg: bool) -> dict[str, float]:
    m = {"accuracy": acc, "precision": acc - 0.05, "recall": acc - 0.2, "f1": acc - 0.15, "pr_auc": auc - 0.1,
         "threshold": 0.5}
    if seg:
        m["miou"] = acc - 0.25
    else:
        m.update(roc_auc=auc, precision_macro=acc - 0.1, recall_macro=acc - 0.1, f1_macro=acc - 0.12)
    return m


def unet_report(synthetic: bool = True) -> dict[str, Any]:
    hpo = [{"iteration": i + 1, "optimizer": "adam" if i % 2 else "sgd", "learning_rate": 1e-3, "alpha": 0.25 + i / 10,
            "gamma": 2.0, "score": 0.6 + i / 20} for i in range(3)]
    return {"kind": "unet", "synthetic": synthetic, "data": {"region": "demo"}, "created": "2026-11-25T10:00:00+00:00",
            "model_versions": {"final": "aaaaaaaaaaaa"}, "hpo": hpo, "best": hpo[-1],
            "models": {"focal_50": {"random": _m(0.93, 0.9, True), "blocked": _m(0.88, 0.85, True)},
                       "bce_50": {"random": _m(0.90, 0.8, True)}}}


def lsm_report(synthetic: bool = True, version: str = "bbbbbbbbbbbb") -> dict[str, Any]:
    models = {name: {"random": _m(0.8 + i / 100, 0.85 + i / 100, False), "blocked": _m(0.7 + i / 100, 0.75 + i / 100, False)}
              for i, name in enumerate(("small", "medium", "large", "multiscale", "gbdt_lr", "logreg", "random_forest"))}
    mcnemar = {split: {other: {"chi2": 3.5 + j, "p": 0.06 / (j + 1), "table": [[50, 7], [3, 10]]}
                       for j, other in enumerate(("small", "medium", "large", "gbdt_lr"))}
               for split in ("random", "blocked")}
    classes = {"method": "Jenks natural breaks (mapclassify.FisherJenks)", "model": "multiscale",
               "breaks": [0.1, 0.3, 0.5, 0.7, 1.0], "names": ["very low", "low", "moderate", "high", "very high"],
               "area_share": [0.4, 0.25, 0.15, 0.12, 0.08], "area_km2": [6.4, 4.0, 2.4, 1.92, 1.28],
               "landslide_share": [0.02, 0.05, 0.13, 0.3, 0.5]}
    return {"kind": "lsm", "synthetic": synthetic, "data": {"region": "demo" if synthetic else "ecuador"},
            "created": "2026-11-25T11:00:00+00:00", "model_versions": {"multiscale": version}, "models": models,
            "mcnemar": mcnemar, "classes": classes}


def write_report(folder: Path, data: dict[str, Any] | str, png: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(data if isinstance(data, str) else json.dumps(data))
    if png:
        Image.new("RGB", (40, 30), (10, 120, 200)).save(folder / png)
    return folder


@pytest.fixture()
def region(tmp_path: Path) -> Path:
    region = tmp_path / "region"
    write_report(region / "reports" / "unet" / "run1", unet_report(), png="training_curves.png")
    write_report(region / "reports" / "lsm" / "run1", lsm_report(), png="roc_pr_blocked.png")
    write_report(region / "reports" / "inventory" / "run1",
                 {"kind": "inventory", "synthetic": True, "areas_kept": 17, "removed_by_exclusion": 3,
                  "object_recall": 0.71, "object_precision": 0.64})
    return region


@pytest.fixture()
def real_reports(tmp_path: Path) -> Path:
    real = tmp_path / "reports_real"
    write_report(real / "lsm" / "ecuador", lsm_report(synthetic=False, version="cccccccccccc"))
    return real


def run_app(monkeypatch, region: Path | None, server: str, extra: list[Path] = (), page: str | None = None) -> AppTest:
    monkeypatch.setenv("SLIDEMAP_REGION", str(region) if region else "")
    monkeypatch.setenv("SLIDEMAP_SERVER", server)
    monkeypatch.setenv("SLIDEMAP_REPORTS", ":".join(str(p) for p in extra))
    at = AppTest.from_file(APP, default_timeout=30).run()
    if page:
        at.sidebar.radio(key="page").set_value(page).run()
    assert not at.exception, [e.value for e in at.exception]
    assert not [e for e in at.error if "unexpected error" in e.value]
    return at


def texts(elements) -> list[str]:
    return [e.value for e in elements]


def iframe_src(at: AppTest) -> str:
    """The URL of the one map on the page (the tile server's own map page)."""
    frames = [n for n in at.main.get("iframe")]
    assert len(frames) == 1, "the map page should hold exactly one map"
    return frames[0].proto.src


def dataframes(at: AppTest):
    return [d.value for d in at.dataframe]


# --------------------------------------------------------------------------------------------
# Map page


def test_map_page_server_up(monkeypatch, server, region):
    at = run_app(monkeypatch, region, server.url)
    assert not at.error
    assert any("Tile server up" in s for s in texts(at.sidebar.success))
    # the one map: the tile server's own page (its tiles and /point come from its own origin)
    assert iframe_src(at) == f"{server.url}/map"
    layer_ids = list(dataframes(at)[0]["id"])
    assert "susceptibility/classes" in layer_ids and "imagery" in layer_ids
    # the layer list beside the map
    assert list(dataframes(at)[0]["layer"]) == ["Imagery (true colour)", "Slope", "Susceptibility classes",
                                                 "Landslide probability (U-Net)"]


def test_map_point_form_asks_server(monkeypatch, server, region):
    at = run_app(monkeypatch, region, server.url)
    at.number_input(key="point_lon").set_value(91.81)
    at.number_input(key="point_lat").set_value(22.32)
    at.button[0].click().run()
    assert not at.exception
    table = at.table[0].value
    values = dict(zip(table["value"], table["at this point"], strict=True))
    assert values["factors.slope"] == "23.5"
    assert values["susceptibility.class"] == "4"
    assert values["detection"] == "no data"
    assert any("lon=91.81" in u and "lat=22.32" in u for u in server.state["requests"])


def test_map_point_error_is_a_message(monkeypatch, server, region):
    at = run_app(monkeypatch, region, server.url)
    server.state["mode"] = "pointerror"
    at.button[0].click().run()
    assert not at.exception
    assert any("400" in e and "outside the region" in e for e in texts(at.error))


def test_map_server_down(monkeypatch, region):
    at = run_app(monkeypatch, region, f"http://127.0.0.1:{free_port()}")
    errors = " ".join(texts(at.error))
    assert "not reachable" in errors and "slidemap serve" in errors
    assert any("Tile server down" in e for e in texts(at.sidebar.error))
    assert not at.main.get("iframe")


@pytest.mark.parametrize("mode, status", [("error", "500"), ("notfound", "404")])
def test_map_server_errors(monkeypatch, server, region, mode, status):
    server.state["mode"] = mode
    at = run_app(monkeypatch, region, server.url)
    assert any(status in e and "could not list its layers" in e for e in texts(at.error))
    assert not at.main.get("iframe")


def test_map_one_layer_failing_keeps_the_others(monkeypatch, server, region):
    server.state["mode"] = "tilejson404"
    at = run_app(monkeypatch, region, server.url)
    assert any("`detection`: no detector trained (404)" in i for i in texts(at.info))
    assert iframe_src(at) == f"{server.url}/map"
    assert "detection" not in list(dataframes(at)[0]["id"]) and "imagery" in list(dataframes(at)[0]["id"])


def test_version_selector_passes_model_to_layers(monkeypatch, server, region):
    """The versions come from the server's /models (the region's disk is not read for them)."""
    at = run_app(monkeypatch, region, server.url)
    box = at.sidebar.selectbox(key="version_lsm")
    assert box.options[0] == "server default" and len(box.options) == 4  # the stub lists three lsm versions
    version = box.options[1].split()[1]
    assert version == "aaa111"
    box.set_value(version).run()
    assert not at.exception
    assert iframe_src(at) == f"{server.url}/map?lsm={version}"  # the map page pins the chosen version
    assert any(f"susceptibility/classes/tilejson.json?model={version}" in u for u in server.state["requests"])
    # reports follow the chosen version: the fixture's lsm report is of another version
    at.sidebar.radio(key="page").set_value(reports.PAGE_TITLES["lsm"]).run()
    assert any("No report of the chosen model versions" in i for i in texts(at.info))


# --------------------------------------------------------------------------------------------
# Report pages


def test_unet_page(monkeypatch, server, region):
    at = run_app(monkeypatch, region, server.url, page=reports.PAGE_TITLES["unet"])
    frames = dataframes(at)
    hpo = next(f for f in frames if "optimizer" in f.columns)
    assert list(hpo["iteration"]) == [1, 2, 3]
    random_split = next(f for f in frames if "miou" in f.columns and "focal_50" in list(f["model"]))
    assert set(random_split["model"]) == {"focal_50", "bce_50"}
    assert any("bce_50: no blocked split" in c for c in texts(at.caption))
    assert at.get("arrow_vega_lite_chart") or at.get("vega_lite_chart")  # score per iteration
    assert any("SYNTHETIC" in w for w in texts(at.warning))
    assert any("training_curves.png [SYNTHETIC]" in c for img in at.get("image") for c in img.captions)


def test_lsm_page_real_apart_from_synthetic(monkeypatch, server, region, real_reports):
    at = run_app(monkeypatch, region, server.url, [real_reports], page=reports.PAGE_TITLES["lsm"])
    tabs = at.tabs
    assert [t.label for t in tabs] == ["REAL data (1)", "SYNTHETIC data (1)"]
    assert any("REAL data" in s for s in texts(tabs[0].success))
    assert any("SYNTHETIC" in w for w in texts(tabs[1].warning))
    frames = dataframes(at)
    models = [f for f in frames if "roc_auc" in f.columns]
    assert len(models) == 4  # random and blocked, for each of the two reports
    mcnemar = [f for f in frames if "chi2" in f.columns]
    assert len(mcnemar) == 4 and list(mcnemar[0]["versus"]) == ["small", "medium", "large", "gbdt_lr"]
    classes = next(f for f in frames if "area_share" in f.columns)
    assert list(classes["names"]) == ["very low", "low", "moderate", "high", "very high"]
    assert any("multiscale_dense" in c for c in texts(at.caption))  # models not in the report are named


def test_inventory_page(monkeypatch, server, region):
    at = run_app(monkeypatch, region, server.url, page=reports.PAGE_TITLES["inventory"])
    summary = dataframes(at)[0]
    assert dict(zip(summary["quantity"], summary["value"], strict=True))["areas_kept"] == "17"
    assert ("areas kept [SYNTHETIC]", "17") in [(m.label, m.value) for m in at.metric]


@pytest.mark.parametrize("page", list(reports.PAGE_TITLES.values()) + ["Paper comparison"])
def test_pages_without_reports(monkeypatch, tmp_path, page):
    empty = tmp_path / "empty"
    empty.mkdir()
    at = run_app(monkeypatch, empty, f"http://127.0.0.1:{free_port()}", page=page)
    assert any("No " in i and "report" in i for i in texts(at.info))
    assert not at.main.error


def test_broken_and_partial_reports_are_messages(monkeypatch, server, tmp_path):
    region = tmp_path / "r"
    write_report(region / "reports" / "lsm" / "broken", "{not json")
    write_report(region / "reports" / "lsm" / "partial", {"kind": "lsm", "models": {"logreg": {"blocked": {"roc_auc": 0.7}}},
                                                        "extra_key": [1, 2]})
    server.state["region"] = region
    at = run_app(monkeypatch, None, server.url, page=reports.PAGE_TITLES["lsm"])
    assert any("not JSON" in w for w in texts(at.warning))
    infos = " ".join(texts(at.info))
    assert "no `mcnemar` table" in infos and "no `classes`" in infos and "UNMARKED" in infos
    assert "No random-split results" in infos


def test_missing_region_folder(monkeypatch, server, tmp_path):
    at = run_app(monkeypatch, tmp_path / "nope", server.url, page=reports.PAGE_TITLES["unet"])
    assert any("no such region folder" in e for e in texts(at.error))


# --------------------------------------------------------------------------------------------
# Paper page


def test_paper_page(monkeypatch, server, region, real_reports):
    at = run_app(monkeypatch, region, server.url, [real_reports], page="Paper comparison")
    frames = dataframes(at)
    assert list(frames[0]["miou"]) == [r["miou"] for r in paper.TABLE4]
    ours6 = [f for f in frames if "paper AUC" in f.columns]
    assert len(ours6) == 2  # the real and the synthetic report
    real6 = ours6[0]
    assert real6["ours blocked ROC-AUC"].iloc[3] == pytest.approx(lsm_report()["models"]["multiscale"]["blocked"]["roc_auc"])
    ours7 = [f for f in frames if "paper chi2" in f.columns]
    assert list(ours7[0]["ours blocked chi2"]) == [3.5, 4.5, 5.5, 6.5]
    labels = " ".join(texts(at.markdown))
    assert "Ours [REAL]" in labels and "Ours [SYNTHETIC]" in labels


@pytest.mark.skipif(not METHOD_MD.is_file(), reason=f"{METHOD_MD} absent (shared folder not beside the repo)")
def test_paper_tables_match_method_md():
    text = METHOD_MD.read_text()
    for row in paper.TABLE4:
        numbers = [row[k] for k in ("accuracy", "precision", "recall", "f1", "miou")]
        assert f"| {row['model']} | {row['loss, epochs']} | " + " | ".join(f"{v:.3f}" for v in numbers) + " |" in text
    for row in paper.TABLE6:
        numbers = [f"{row[k]:.2f}" for k in ("accuracy", "precision", "recall", "f1")] + [f"{row['auc']:.4f}"]
        assert f"| {row['model']} | " + " | ".join(numbers) + " |" in text
    chi2 = ", ".join(f"{row['chi2']:.3f}" for row in paper.TABLE7)
    assert f"chi2 = {chi2}" in text


# --------------------------------------------------------------------------------------------
# Pure helpers and the command


def test_with_query_keeps_template_and_replaces_model():
    url = map_page.with_query("http://h/t/{z}/{x}/{y}.png?rescale=0,3000&model=old", {"model": "new"})
    assert url == "http://h/t/{z}/{x}/{y}.png?rescale=0,3000&model=new"
    assert map_page.with_query("http://h/t/{z}/{x}/{y}.png", {}) == "http://h/t/{z}/{x}/{y}.png"


def test_dashboard_command_checks_and_builds(tmp_path, capsys):
    from slidemap.cli import main
    from slidemap.commands import dashboard as cmd

    assert main(["dashboard", str(tmp_path / "missing")]) == 2
    assert "no such region folder" in capsys.readouterr().err
    assert main(["dashboard", str(tmp_path), "--server", "localhost:8000"]) == 2
    assert "give a URL" in capsys.readouterr().err
    command = cmd.streamlit_command(cmd.app_path(), "127.0.0.1", 8765)
    assert cmd.app_path().is_file()
    joined = " ".join(command)
    assert "--browser.gatherUsageStats false" in joined and "--server.address 127.0.0.1" in joined
    assert "--server.headless true" in joined
    env = cmd.dashboard_env(tmp_path, "http://127.0.0.1:9000/", [tmp_path])
    assert env["SLIDEMAP_SERVER"] == "http://127.0.0.1:9000" and env["SLIDEMAP_REGION"] == str(tmp_path.resolve())


# --------------------------------------------------------------------------------------------
# The real tile server and reports written by the training code's own writers


@pytest.fixture()
def real_server(prepared_region, tmp_path):
    import uvicorn

    from slidemap.server.app import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(prepared_region, _server_settings(tmp_path)),
                                           host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def _server_settings(tmp_path: Path):
    """Keep the server's tile cache out of the shared prepared region."""
    from slidemap.server.app import ServerSettings

    return ServerSettings(cache_dir=tmp_path / "cache")


def test_map_page_with_the_real_server(monkeypatch, real_server, prepared_region):
    at = run_app(monkeypatch, prepared_region, real_server)
    assert not at.main.error and not at.main.warning
    assert iframe_src(at) == f"{real_server}/map"
    page = httpx.get(f"{real_server}/map")  # the server's map page, its Leaflet served by itself
    assert page.status_code == 200 and "vendor/leaflet/leaflet.js" in page.text and "static/map.js" in page.text
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=[\"']?(https?:|//)", page.text)
    layer_ids = list(dataframes(at)[0]["id"])
    assert "imagery" in layer_ids and "factors/slope" in layer_ids
    # the point form: the real /point at the region's centre gives the prepared factor stack's value there
    at.button[0].click().run()
    assert not at.exception and not at.main.error
    values = dict(zip(at.table[0].value["value"], at.table[0].value["at this point"], strict=True))
    assert values["inside"] == "True"
    lon, lat = at.number_input(key="point_lon").value, at.number_input(key="point_lat").value
    assert float(values["factors.slope"]) == pytest.approx(factor_at(prepared_region, "slope", lon, lat), rel=1e-5)


def factor_at(region: Path, name: str, lon: float, lat: float) -> float:
    """A factor's value at a WGS84 point, read straight from build/factors.tif (the reference)."""
    import rasterio
    from rasterio.warp import transform

    with rasterio.open(region / "build" / "factors.tif") as src:
        band = list(src.descriptions).index(name) + 1
        xs, ys = transform("EPSG:4326", src.crs, [lon], [lat])
        return float(next(src.sample([(xs[0], ys[0])], indexes=band))[0])


def test_reports_written_by_the_training_writers(monkeypatch, tmp_path):
    import numpy as np

    from slidemap.training import lsm_report, unet_report

    region = tmp_path / "region"
    unet_report.write_report(unet_report_for_writer(), region / "reports" / "unet" / "r1")
    report = lsm_report_for_writer()
    curve = {"fpr": np.linspace(0, 1, 5), "tpr": np.linspace(0, 1, 5) ** 0.5,
             "recall": np.linspace(1, 0, 5), "precision": np.linspace(0.5, 1, 5)}
    rate = {"success": {"area": [0, 0.5, 1], "landslides": [0, 0.8, 1], "auc": 0.7},
            "prediction": {"area": [0, 0.5, 1], "landslides": [0, 0.7, 1], "auc": 0.65}}
    lsm_report.write_report(report, {s: {m: curve for m in report["models"]} for s in ("random", "blocked")},
                            {s: {m: rate for m in report["models"]} for s in ("random", "blocked")},
                            region / "reports" / "lsm" / "r1")
    at = run_app(monkeypatch, region, f"http://127.0.0.1:{free_port()}", page=reports.PAGE_TITLES["lsm"])
    assert not at.main.error
    captions = [c for img in at.get("image") for c in img.captions]
    assert {"roc_pr_blocked.png [SYNTHETIC]", "rates_random.png [SYNTHETIC]"} <= set(captions)
    assert len([f for f in dataframes(at) if "roc_auc" in f.columns]) == 2
    at.sidebar.radio(key="page").set_value(reports.PAGE_TITLES["unet"]).run()
    assert not at.exception and not at.main.error
    assert any("optimizer" in f.columns for f in dataframes(at))


def unet_report_for_writer() -> dict[str, Any]:
    report = unet_report()
    report.update(data={"path": "demo", "chips": 12, "chip": 128, "bands": ["B2", "B3", "B4", "B8"]},
                  config={"preset": "quick"}, splits={"random": {"train": 9, "test": 3}})
    return report


def lsm_report_for_writer() -> dict[str, Any]:
    report = lsm_report()
    report["models"] = {k: report["models"][k] for k in ("multiscale", "logreg")}
    report["mcnemar"] = {s: {"logreg": report["mcnemar"][s]["small"]} for s in ("random", "blocked")}
    report.update(run_id="r1", preset="quick", threshold_rule="Youden's J on inner validation predictions",
                  ranking_rule="blocked-test ROC-AUC", default_model="multiscale",
                  ranking=[{"rank": i + 1, "model": m, "value": 0.8 - i / 10, "ci95": [0.7 - i / 10, 0.9 - i / 10],
                            "has_skill": True, "method": "cluster bootstrap"} for i, m in enumerate(("multiscale", "logreg"))],
                  data={"region": "demo", "factor_names": ["slope"], "channels": ["slope"], "window_channels": ["slope"],
                        "samples": 40, "positives": 20, "per_polygon_cap": 10, "sources": {"inventory": 20},
                        "negatives": "terrain", "negatives_rule": "sampled",
                        "splits": {"random": {"train": 32, "test": 8}, "blocked": {"train": 30, "test": 10}}})
    for per_split in report["models"].values():
        for m in per_split.values():
            m.update(success_rate_auc=0.7, prediction_rate_auc=0.65)
    report["classes"].update(estimated_from="a sample of 1500 cells")
    return report


REPO_REAL_REPORTS = Path(__file__).resolve().parents[1] / "reports" / "real"


def committed_real_reports() -> list[reports.Report]:
    return reports.find_reports(None, [REPO_REAL_REPORTS])


def test_committed_real_reports_are_found_by_content():
    """Every JSON document in reports/real is a report, whatever its file name, and each is found once."""
    found = committed_real_reports()
    files = sorted(p.resolve() for p in REPO_REAL_REPORTS.rglob("*.json"))
    assert files, "the repository ships real-data reports in reports/real"
    assert sorted(r.source.resolve() for r in found) == files
    assert not [r.error for r in found if r.error]
    by_id = {r.run_id: r for r in found}
    assert by_id["ecuador_lsm"].page == "lsm" and by_id["ecuador_lsm"].label == "REAL"
    # a named report's figures are its own PNGs, not every PNG of the folder
    assert {p.name for p in by_id["ecuador_lsm"].images()} == {p.name for p in REPO_REAL_REPORTS.glob("ecuador_lsm*.png")}
    assert {p.name for p in by_id["l4s"].images()} == set(by_id["l4s"].data["figures"])
    assert by_id["chittagong_l4s-rgb"].page == "unet" and by_id["chittagong_l4s-rgb"].images() == []


def test_report_discovery_by_content(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "run_a.json").write_text(json.dumps(lsm_report(synthetic=False)))
    (folder / "run_a_roc.png").write_bytes(b"png")
    (folder / "other.png").write_bytes(b"png")
    (folder / "factors.json").write_text(json.dumps({"factors": [], "grid": {}}))  # not a report
    (folder / "card.json").write_text(json.dumps({"kind": "lsm", "version": "abc", "weights": "m.keras",
                                                  "created": "2026-11-25T00:00:00Z"}))  # a model card
    (folder / "notes.json").write_text("{broken")  # an unreadable file that is not called report.json
    write_report(folder / "nested" / "run_b", "{broken")  # a broken report.json is shown as broken
    found = {r.run_id: r for r in reports.find_reports(None, [folder, folder])}  # the folder twice: each file once
    assert set(found) == {"run_a", "run_b"}
    assert found["run_a"].kind == "lsm" and [p.name for p in found["run_a"].images()] == ["run_a_roc.png"]
    assert "not valid JSON" in found["run_b"].error


def _shown_numbers(at: AppTest) -> list[float]:
    numbers = []
    for frame in dataframes(at):
        for value in frame.to_numpy().ravel():
            try:
                numbers.append(float(value))
            except (TypeError, ValueError):
                continue
    return numbers


def _headline(report: reports.Report) -> float:
    """One number a page must show for ``report``: a model's blocked-split F1, or the evaluation's F1."""
    models = report.data.get("models")
    if isinstance(models, dict) and models:
        per_split = next(iter(models.values()))
        split = per_split.get("blocked") or next(iter(per_split.values()))
        return float(split["f1"])
    return float(report.data["metrics"]["f1"])


@pytest.mark.parametrize("page", list(reports.PAGE_TITLES))
def test_committed_real_reports_render(monkeypatch, tmp_path, page):
    """Each committed report of the page appears under its title, with its own numbers and figures."""
    mine = [r for r in committed_real_reports() if r.page == page]
    at = run_app(monkeypatch, tmp_path, f"http://127.0.0.1:{free_port()}", [REPO_REAL_REPORTS],
                 page=reports.PAGE_TITLES[page])
    assert not at.main.error
    assert not [w for w in texts(at.warning) if "Skipped a report" in w]
    if not mine:
        assert any(f"No {page} report" in i for i in texts(at.info))
        return
    titles = [e.label for e in at.expander]
    numbers = _shown_numbers(at)
    captions = {c for img in at.get("image") for c in img.captions}
    for report in mine:
        assert report.title in titles
        assert any(n == pytest.approx(_headline(report), rel=1e-5) for n in numbers), report.run_id  # shown to 6 digits
        assert {f"{p.name} [{report.label}]" for p in report.images()} <= captions
    real = [r for r in mine if r.label == "REAL"]
    assert [t.label for t in at.tabs][0] == f"REAL data ({len(real)})"


def test_committed_real_reports_in_the_paper_comparison(monkeypatch, tmp_path):
    ecuador = next(r for r in committed_real_reports() if r.run_id == "ecuador_lsm")
    at = run_app(monkeypatch, tmp_path, f"http://127.0.0.1:{free_port()}", [REPO_REAL_REPORTS], page="Paper comparison")
    assert not at.main.error
    assert "Ours [REAL]** ecuador_lsm" in " ".join(texts(at.markdown))
    assert at.get("vega_lite_chart"), "the paper's AUC beside ours, drawn"
    table6 = next(f for f in dataframes(at) if "paper AUC" in f.columns)
    ours = dict(zip(table6["model"], table6["ours blocked ROC-AUC"], strict=True))
    multiscale = next(row["model"] for row in paper.TABLE6 if row["ours"] == "multiscale")
    assert ours[multiscale] == pytest.approx(ecuador.data["models"]["multiscale"]["blocked"]["roc_auc"])


def test_downloads_page_offers_every_output(monkeypatch, server, tmp_path):
    """Maps with their styles, inventories and reports, one button each; caches are not outputs."""
    region = tmp_path / "region"
    files = {
        "maps/susceptibility_multiscale-abc.tif": b"II*\x00cog",
        "maps/susceptibility_multiscale-abc.qml": b"<qgis/>",
        "maps/susceptibility_multiscale-abc_classes.json": b"{}",
        "build/inventory.gpkg": b"SQLite format 3\x00",
        "reports/inventory/20261203-000000-aaaaaa/landslides_detected.gpkg": b"SQLite format 3\x00",
        "reports/lsm/run1/report.json": b"{}",
        "maps/seeded.pmtiles": b"PMTiles",
        "cache/blocks/x.mbtiles": b"not an output",
    }
    for rel, data in files.items():
        (region / rel).parent.mkdir(parents=True, exist_ok=True)
        (region / rel).write_bytes(data)
    server.state["region"] = region
    at = run_app(monkeypatch, None, server.url, page="Downloads")
    links = {b.proto.label: b.proto.url for b in at.get("link_button")}
    for rel in files:
        name = Path(rel).name
        url = next((u for label, u in links.items() if label.split(" (")[0].endswith(name)), None)
        assert (url is not None) == (not rel.startswith("cache/")), (rel, links)
        assert url is None or url == f"{server.url}/downloads/{rel}"


def test_downloads_page_without_the_server_says_so(monkeypatch, tmp_path):
    at = run_app(monkeypatch, None, f"http://127.0.0.1:{free_port()}", page="Downloads")
    assert any("come from the tile server" in w for w in texts(at.warning))


def test_reports_come_from_the_server_without_the_region_folder(monkeypatch, server, region):
    """No region folder on the dashboard's machine: the report pages, figures included, come over HTTP."""
    at = run_app(monkeypatch, None, server.url, page=reports.PAGE_TITLES["unet"])
    assert not at.main.error
    assert any("/reports/unet/run1/training_curves.png" in u for u in server.state["requests"])
    assert any("training_curves.png [SYNTHETIC]" in c for img in at.get("image") for c in img.captions)
    shown = " ".join(texts(at.caption))
    assert f"from: {server.url}/reports/unet/run1" in shown


def test_reports_fall_back_to_the_region_folder_when_the_server_is_down(monkeypatch, region):
    at = run_app(monkeypatch, region, f"http://127.0.0.1:{free_port()}", page=reports.PAGE_TITLES["unet"])
    shown = " ".join(texts(at.caption))
    assert "did not list the region's reports" in shown and f"from: {region}" in shown


def test_map_page_has_the_evidence_beside_it(monkeypatch, server, region):
    """The models' blocked scores with intervals (newest version of each name, the default marked)
    and the default susceptibility report's classes, beside the map."""
    from slidemap.dashboard import evidence

    write_report(region / "reports" / "lsm" / "ev1", {**lsm_report(), "model_versions": ["aaa111"]})
    at = run_app(monkeypatch, region, server.url)
    assert "Evidence" in [h.value for h in at.subheader]
    shown = " ".join(texts(at.markdown))
    assert "default `multiscale` 0.874 [0.835, 0.908]" in shown and "default `attention-unet` 0.775" in shown
    charts = at.get("vega_lite_chart")
    assert len(charts) >= 2
    rows = evidence.model_rows(evidence.fetch_models(server.url), "susceptibility")
    assert [r["model"] for r in rows] == ["multiscale", "logreg"] and rows[0]["default"]  # newest version only


def test_mcnemar_tables_read_as_people_read_them():
    rows = reports.mcnemar_rows({"logreg": {"chi2": 12.3456, "p": 7e-9, "table": [[372, 25], [40, 43]],
                                            "method": "chi-squared, continuity-corrected"},
                                 "rf": {"chi2": None, "p": 0.0421, "table": [[10, 3], [5, 2]]}})
    assert rows[0] == {"versus": "logreg", "chi2": 12.346, "p": "7.0e-09", "both right": 372,
                       "only multiscale right": 25, "only other right": 40, "both wrong": 43,
                       "test": "chi-squared, continuity-corrected"}
    assert rows[1]["p"] == "0.042" and rows[1]["chi2"] is None
    assert reports.p_value(1e-12) == "< 1e-10" and reports.p_value(None) == "n/a"


def test_report_schema_reads_and_refuses():
    """The schema the trainers validate against and the dashboard parses with (slidemap.report_schema)."""
    from pydantic import ValidationError

    from slidemap.report_schema import LsmReport, UnetReport, parse_report, validate_report

    typed, problem = parse_report(lsm_report())
    assert problem is None and isinstance(typed, LsmReport) and typed.classes.breaks[-1] == 1.0
    assert typed.models["logreg"]["blocked"].roc_auc == pytest.approx(0.80)
    assert isinstance(parse_report(unet_report())[0], UnetReport)
    assert parse_report({"kind": "lsm", "model_versions": ["a1", "b2"]})[0].model_versions == {"a1": "a1", "b2": "b2"}
    bad = {**lsm_report(), "models": {"logreg": {"blocked": {"roc_auc": "high"}}}}
    typed, problem = parse_report(bad)
    assert typed is None and "models.logreg.blocked" in problem
    with pytest.raises(ValidationError):
        validate_report(bad)
    validate_report({"kind": "inventory", "anything": 1})  # kinds without a schema pass


def test_an_off_schema_report_is_shown_with_a_warning(monkeypatch, server, tmp_path):
    region = tmp_path / "region"
    write_report(region / "reports" / "lsm" / "odd", {**lsm_report(), "models": {"logreg": {"blocked": {"roc_auc": "high"}}}})
    at = run_app(monkeypatch, None, server.url, page=reports.PAGE_TITLES["lsm"])
    assert any("does not follow the LsmReport schema" in w for w in texts(at.warning))
    assert not at.exception
