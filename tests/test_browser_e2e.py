"""End to end in a real headless Chromium (Debian's package, driven by Playwright; no browser download).

Starts a tile server (the real ``slidemap serve`` app on a prepared demo region, with stand-in models)
and ``slidemap dashboard`` on free loopback ports, loads the page, waits for map tiles from our server
in the map (the server's own map page, in the dashboard's iframe), checks that no request left
loopback, switches a layer, clicks the map for ``/point`` values and saves a screenshot in the session's
output folder (a temporary folder; ``SLIDEMAP_TEST_OUTPUT=DIR`` keeps it).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest

from slidemap.compute.models.store import read_card, save_artefact

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason="Debian's chromium is not installed at /usr/bin/chromium "
                       "(apt-get install chromium); the browser test needs it"),
]
from playwright import sync_api  # noqa: E402  (a test dependency: imported, never skipped)
from server_models import skill_block  # noqa: E402
from test_dashboard import free_port, lsm_report, write_report  # noqa: E402


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode}: {log.read_text() if log else ''}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s")


def stop(proc: subprocess.Popen) -> None:
    """Stop the process group started for this test (start_new_session=True), forcefully if need be."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue


class StandInDetector:
    """The detector interface of docs/ARCHITECTURE.md: a smoothed NDVI as 'probability'."""

    bands = ["B2", "B3", "B4", "B8"]
    halo = 2

    def __init__(self, path: Path) -> None:
        self.version = read_card(path)["version"]

    def predict(self, image: np.ndarray) -> np.ndarray:
        ndvi = (image[3] - image[2]) / (image[3] + image[2] + 1e-6)
        return (1 / (1 + np.exp(-8 * (0.4 - ndvi)))).astype(np.float32)


class StandInSusceptibility:
    """The susceptibility interface: slope / 45 degrees, clipped to 0..1, on the inner block."""

    factor_names = ["slope"]
    halo = 1

    def __init__(self, path: Path) -> None:
        self.version = read_card(path)["version"]

    def predict_block(self, stack: np.ndarray) -> np.ndarray:
        h = self.halo
        return np.clip(stack[0, h:-h, h:-h] / 45.0, 0, 1).astype(np.float32)


class ThreadedApp:
    """A FastAPI app served by uvicorn in a thread on a free loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.url = f"http://127.0.0.1:{free_port()}"
        port = int(self.url.rsplit(":", 1)[1])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ThreadedApp:
        self.thread.start()
        wait_http(f"{self.url}/health", timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture()
def tile_server(request, tmp_path):
    """(kind, server URL, region folder): the real app on the prepared demo region."""
    region = tmp_path / "region"
    from slidemap.server.app import ServerSettings, create_app

    shutil.copytree(request.getfixturevalue("prepared_region"), region,
                    ignore=shutil.ignore_patterns("cache", "models"))
    # Stand-in models behind the real block engine (training a real one would take minutes here):
    # saved as artefacts, so versions, ?model= and the version selector work as with real ones.
    # Each carries a skill block (as a trained card does): only a model with skill is a region's default.
    for kind, name, metric in (("unet", "attention_unet", "f1"), ("lsm", "multiscale", "roc_auc")):
        card = {"synthetic": True, "inputs": {}, "run_id": f"stand-in-{kind}",
                "skill": {**skill_block(metric=metric), "run_id": f"stand-in-{kind}"}}
        if kind == "lsm":
            card["class_breaks"] = [0.1, 0.2, 0.35, 0.5, 1.0]
        save_artefact(region / "models", kind, name, card,
                      lambda p, kind=kind: p.write_bytes(f"stand-in {kind}".encode()))
    write_report(region / "reports" / "lsm" / "run1", lsm_report(), png="roc_pr_blocked.png")
    # CORS stays off (the default): the map is the server's own page, so /point is same-origin.
    settings = ServerSettings(cache_dir=tmp_path / "cache", block_size=64,
                              loaders={"unet": StandInDetector, "lsm": StandInSusceptibility})
    with ThreadedApp(create_app(region, settings)) as server:
        yield "real", server.url, region


@pytest.fixture()
def dashboard(request, tile_server, tmp_path):
    _, server_url, region = tile_server
    port = free_port()
    env = dict(os.environ, STREAMLIT_BROWSER_GATHER_USAGE_STATS="false")
    log = tmp_path / "dashboard.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "slidemap.cli", "dashboard", str(region), "--server", server_url,
             "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/_stcore/health", proc=proc, log=log)
        assert f"http://127.0.0.1:{port}/" in log.read_text()  # the command prints the URL
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop(proc)


def map_frame(page, timeout: float = 45.0):
    """The iframe that holds the Leaflet map (the tile server's map page)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for frame in page.frames:
            try:
                if frame.evaluate("() => !!window.slidemapStatus"):
                    return frame
            except sync_api.Error:
                continue
        page.wait_for_timeout(250)
    raise TimeoutError("the map iframe did not appear")


def wait_until(page, condition, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        page.wait_for_timeout(200)


def test_dashboard_in_headless_chromium(dashboard, tile_server, output_dir):
    kind, server_url, _ = tile_server
    requests: list[str] = []
    responses: list[tuple[str, int]] = []
    shot = output_dir / ("dashboard.png" if kind == "real" else "dashboard-stub.png")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1500, "height": 1300})
            # Every request of the page and of its iframes goes through the context.
            context.on("request", lambda r: requests.append(r.url))
            context.on("response", lambda r: responses.append((r.url, r.status)))
            page = context.new_page()
            page.goto(dashboard, wait_until="domcontentloaded")
            frame = map_frame(page)
            frame.wait_for_function("() => window.slidemapLayers.length > 0", timeout=30000)  # after /layers
            layers = {lyr["id"]: lyr for lyr in frame.evaluate("() => window.slidemapLayers")}
            prefixes = {lid: lyr["tiles"].split("{z}")[0] for lid, lyr in layers.items()}

            def tiles_of(layer: str) -> list[str]:
                return [u for u, status in responses if status == 200 and u.startswith(prefixes[layer])]

            visible = frame.evaluate("() => Object.keys(window.slidemapStatus.layers)")
            # the base shown first: the imagery where there is some, else the DEM's hillshade
            base = next((lid for lid, lyr in layers.items() if lyr["base"] and lyr["kind"] != "basemap"),
                        next(lid for lid, lyr in layers.items() if lyr["base"]))
            wait_until(page, lambda: tiles_of(base), 40)
            assert tiles_of(base), f"no {base} tile loaded from the tile server"
            # The network response can arrive before Leaflet's tileload event counts it.
            wait_until(page, lambda: frame.evaluate("() => window.slidemapStatus.loaded") > 0, 20)
            assert frame.evaluate("() => window.slidemapStatus.loaded") > 0
            assert frame.evaluate("() => window.slidemapStatus.errors") == 0
            # the server has a susceptibility model (a stand-in): its class tiles and legend show
            assert "susceptibility/classes" in layers, sorted(layers)
            wait_until(page, lambda: tiles_of("susceptibility/classes"), 40)
            assert tiles_of("susceptibility/classes")
            frame.wait_for_function("() => document.getElementById('legend').innerText.indexOf('very high') >= 0",
                                    timeout=20000)
            # the evidence beside the map: the default model's blocked score and the models drawn (Altair)
            page.get_by_text("Evidence").first.wait_for(timeout=20000)
            if kind == "real":
                page.get_by_text("Susceptibility models", exact=False).first.wait_for(timeout=20000)
                wait_until(page, lambda: page.locator(".vega-embed").count() >= 1, 20)
                assert page.locator(".vega-embed").count() >= 1, "no model chart beside the map"

            # Switch a layer: tick the slope factor in the Leaflet layer control; its tiles must arrive.
            slope = next(lid for lid in layers if "slope" in lid)
            frame.locator(".leaflet-control-layers").hover()  # the list is collapsed to a button until then
            frame.locator(".leaflet-control-layers-overlays label", has_text=layers[slope]["title"]).first.click()
            page.mouse.move(2, 2)  # away from the frame: the list folds again
            wait_until(page, lambda: tiles_of(slope), 40)
            assert tiles_of(slope), f"switching to {slope} loaded no tile of it ({visible})"

            # Click the map: the server's /point values for that spot appear in a popup.
            # The map is fitted to the region; the legends sit bottom left, the layer button top right.
            box = frame.locator("#map").bounding_box()
            frame.locator("#map").click(position={"x": box["width"] * 0.7, "y": box["height"] * 0.35})
            frame.wait_for_function("() => window.slidemapPoint !== null && window.slidemapPoint !== undefined",
                                    timeout=20000)
            point = frame.evaluate("() => window.slidemapPoint")
            wait_until(page, lambda: any(u.startswith(f"{server_url}/point?") and st == 200 for u, st in responses), 20)
            assert any(u.startswith(f"{server_url}/point?") and st == 200 for u, st in responses)
            # the map is the server's own page: /point is same-origin, the page reads the answer itself
            assert point.get("ok") is True, point
            frame.locator(".leaflet-popup-content").wait_for(timeout=20000)
            assert "slope" in frame.locator(".leaflet-popup-content").inner_text()

            page.wait_for_timeout(800)
            page.locator("h2").first.scroll_into_view_if_needed()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()

    outside = [u for u in requests if urlsplit(u).scheme in ("http", "https", "ws", "wss")
               and urlsplit(u).hostname not in LOCAL_HOSTS]
    assert not outside, f"requests left loopback: {outside[:5]}"
    assert any(u.startswith(server_url) for u in requests)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


@pytest.mark.parametrize("tile_server", ["real"], indirect=True)
def test_server_map_page_in_headless_chromium(tile_server):
    """The tile server's own map page: a legend for every visible layer, class names in the popup."""
    _, server_url, _ = tile_server
    requests: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.on("request", lambda r: requests.append(r.url))
            page = context.new_page()
            page.goto(f"{server_url}/", wait_until="domcontentloaded")
            legend = page.locator("#legend")
            legend.wait_for(state="visible", timeout=30000)  # the base and the susceptibility classes are on
            page.wait_for_function("() => document.querySelectorAll('#legend b').length === 2", timeout=20000)
            titles = {lyr["id"]: lyr["title"] for lyr in
                      page.evaluate("() => fetch('layers').then(r => r.json())")["layers"]}
            # the inventory as vectors: its polygons drawn as SVG paths when switched on
            known = page.locator(".leaflet-control-layers-overlays label", has_text="Known landslides")
            known.wait_for(timeout=20000)
            known.first.click()
            page.wait_for_function("() => document.querySelectorAll('.leaflet-overlay-pane path').length > 0",
                                   timeout=20000)
            known.first.click()
            for layer_id in ("factors/slope", "factors/landcover"):
                page.locator(".leaflet-control-layers-overlays label", has_text=titles[layer_id]).first.click()
            page.wait_for_function("() => document.querySelectorAll('#legend b').length === 4", timeout=20000)
            text = legend.inner_text()
            assert titles["factors/slope"] in text and titles["factors/landcover"] in text
            # the layer switched on last is drawn on top, and its legend comes first
            assert text.index(titles["factors/landcover"]) < text.index(titles["factors/slope"])
            page.locator(".leaflet-control-layers-overlays label", has_text=titles["factors/slope"]).first.click()
            page.wait_for_function("() => document.querySelectorAll('#legend b').length === 3", timeout=20000)
            box = page.locator("#map").bounding_box()
            page.locator("#map").click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.55})
            popup = page.locator(".leaflet-popup-content")
            popup.wait_for(state="visible", timeout=20000)
            page.wait_for_function("() => document.querySelector('.leaflet-popup-content').innerText.includes('landcover:')",
                                   timeout=20000)
            line = next(ln for ln in popup.inner_text().splitlines() if ln.startswith("landcover:"))
            value = line.split(":", 1)[1].strip()
            assert value and not value[0].isdigit(), line  # a class name, not "1.000 class"
            # a pinned model (as the dashboard pins its sidebar choice): the layer's TileJSON for it,
            # and /point asks for the same model
            page.goto(f"{server_url}/map?lsm=multiscale", wait_until="domcontentloaded")
            page.wait_for_function("() => window.slidemapStatus && window.slidemapStatus.loaded > 0", timeout=30000)
            assert any("susceptibility/classes/WebMercatorQuad/tilejson.json?model=multiscale" in u for u in requests)
            page.locator("#map").click(position={"x": box["width"] * 0.5, "y": box["height"] * 0.5})
            page.wait_for_function("() => window.slidemapPoint", timeout=20000)
            assert any("/point?" in u and "susceptibility_model=multiscale" in u for u in requests)
        finally:
            browser.close()
    outside = [u for u in requests if urlsplit(u).scheme in ("http", "https", "ws", "wss")
               and urlsplit(u).hostname not in LOCAL_HOSTS]
    assert not outside, f"requests left loopback: {outside[:5]}"
