"""Reliability of the tile server, measured: fuzzing, load, injected faults and bad region inputs.

    .venv/bin/python -m benchmarks.reliability [--region REGION_DIR] [--size-km 8] [--quick]

writes ``RELIABILITY.md`` (all figures from this one run). Every server is a ``slidemap serve``
process on 127.0.0.1 started by this command; nothing else is contacted. Sections:

* **fuzz** - schemathesis (all checks; examples, coverage and fuzzing phases) over ``/openapi.json``:
  requests sent, answers by status, 5xx count, check failures;
* **load** - warm tiles at concurrency 64 for ``--warm-seconds``; cold computed tiles (the U-Net
  layer, empty caches) at concurrency 16 for ``--cold-seconds``, with the old queue settings (no
  wait limit, 300 s timeout) and with the defaults; throughput, p50/p95/p99, answers by kind,
  server CPU seconds and peak RSS;
* **faults** - each fault injected into a running server and what it answered;
* **inputs** - each bad region input and the one line ``slidemap prepare`` answered.

Without ``--region`` a SYNTHETIC demo region is generated and prepared; its detection model is
the shipped ``models/detector-demo-rgbn`` (a real U-Net) and its susceptibility model a logistic
regression fitted here (seconds; a real scikit-learn artefact). Needs ``schemathesis`` in the
environment for the fuzz section (``pip install schemathesis``); without it that section says so.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import morecantile
import numpy as np

from benchmarks.machine import cpu_description

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
SLIDEMAP = [PY, "-m", "slidemap.cli"]
WMQ = morecantile.tms.get("WebMercatorQuad")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONHASHSEED": "0"}


# ---- servers -------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    base: str
    log: Path

    def peak_rss_mb(self) -> float:
        """VmHWM: the most resident memory the process ever had."""
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return float("nan")

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return float("nan")


@contextlib.contextmanager
def serve(region: Path, cache: Path, *flags: str, log: Path) -> Iterator[Server]:
    port = free_port()
    with open(log, "w") as fh:
        proc = subprocess.Popen([*SLIDEMAP, "serve", str(region), "--port", str(port), "--cache-dir", str(cache),
                                 "--log-level", "warning", *flags], env=ENV, stdout=fh, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}; see {log}")
            try:
                if httpx.get(f"{server.base}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up after 180 s; see {log}")
            time.sleep(0.3)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def load_models(server: Server) -> float:
    """Load every model once (a tile far outside the region loads it and computes nothing)."""
    t0 = time.perf_counter()
    for layer in ("detection", "susceptibility"):
        httpx.get(f"{server.base}/layers/{layer}/tiles/WebMercatorQuad/10/0/0.png", timeout=300)
    return time.perf_counter() - t0


# ---- the region ------------------------------------------------------------------------------------
def make_region(work: Path, size_km: float) -> Path:
    region = work / "region"
    subprocess.run([*SLIDEMAP, "demo-region", str(region), "--size-km", str(size_km)], check=True, env=ENV,
                   stdout=subprocess.DEVNULL)
    subprocess.run([*SLIDEMAP, "prepare", str(region), "--quiet"], check=True, env=ENV, stdout=subprocess.DEVNULL)
    add_models(region)
    return region


def add_models(region: Path) -> None:
    """The shipped SYNTHETIC demo detector, and a logistic-regression susceptibility model."""
    import joblib
    import rasterio
    from sklearn.linear_model import LogisticRegression

    from slidemap.compute.terrain.factors import Encoding, load_normalisation
    from slidemap.compute.models.store import read_card, save_artefact

    shipped = REPO / "models" / "detector-demo-rgbn"
    card = read_card(shipped)
    target = region / "models" / "unet" / f"{card['name']}-{card['version']}"
    if not target.exists():
        shutil.copytree(shipped, target)
    build = region / "build"
    norm = load_normalisation(build)
    with rasterio.open(build / "factors.tif") as src:
        stack = src.read().astype(np.float32)
        names = list(src.descriptions)
    encoding = Encoding.build(norm.subset(names))
    x = encoding.encode(stack).reshape(len(encoding), -1).T
    slope = stack[names.index("slope")].ravel()
    ok = np.flatnonzero(np.isfinite(stack).all(axis=0).ravel())
    pick = np.random.default_rng(0).choice(ok, size=min(5000, ok.size), replace=False)
    model = LogisticRegression(max_iter=300).fit(x[pick], (slope[pick] > np.median(slope[pick])).astype(int))
    run_id = "reliability-benchmark"
    skill = {"metric": "roc_auc", "value": 0.9, "ci95": [0.85, 0.95], "chance": 0.5,
             "method": "stand-in for the benchmark (fitted to a slope threshold)", "has_skill": True, "rank": 1,
             "run_id": run_id}
    save_artefact(region / "models", "lsm", "logistic", {
        "synthetic": True, "factor_names": names, "normalisation": norm.subset(names).to_list(), "halo": 0,
        "encoding": encoding.to_dict(), "centre_channels": list(range(len(encoding))),
        "architecture": "centre-cell logistic_regression", "run_id": run_id, "skill": skill,
        "class_breaks": [0.2, 0.4, 0.6, 0.8, 1.0],
    }, lambda p: joblib.dump(model, p), weights_file="model.joblib")


def copy_region(region: Path, work: Path, name: str) -> Path:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(region, out, ignore=shutil.ignore_patterns("cache", "reports"))
    return out


def tile_urls(base: str, layer: str, zooms_back: int = 0, client: httpx.Client | None = None) -> list[str]:
    client = client or httpx.Client(timeout=60)
    tj = client.get(f"{base}/layers/{layer}/WebMercatorQuad/tilejson.json").json()
    template = tj["tiles"][0]
    w, s, e, n = tj["bounds"]
    out = []
    for z in range(tj["maxzoom"] - zooms_back, tj["maxzoom"] + 1):
        for t in WMQ.tiles(w, s, e, n, [z]):
            out.append(template.replace("{z}", str(t.z)).replace("{x}", str(t.x)).replace("{y}", str(t.y)))
    return out


# ---- fuzz ----------------------------------------------------------------------------------------
def fuzz(region: Path, work: Path, examples: int, seconds: int) -> dict:
    exe = Path(PY).with_name("schemathesis")
    if not exe.exists():
        return {"skipped": "schemathesis is not installed (pip install schemathesis)"}
    report = work / "fuzz-report"
    with serve(region, work / "cache-fuzz", log=work / "fuzz-server.log") as server:
        load_models(server)
        cmd = [str(exe), "run", f"{server.base}/openapi.json", "--checks", "all", "-n", str(examples),
               "--phases", "examples,coverage,fuzzing", "--seed", "1", "--workers", "1",
               "--request-timeout", "60", "--max-response-time", "60", "--max-time", str(seconds),
               "--report", "har,json", "--report-dir", str(report), "--no-color"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=ENV)
        elapsed = time.perf_counter() - t0
        rss = server.peak_rss_mb()
        alive = server.proc.poll() is None
    statuses: Counter = Counter()
    for har in report.glob("har-*.json"):
        for entry in json.loads(har.read_text())["log"]["entries"]:
            statuses[entry["response"]["status"]] += 1
    failures: Counter = Counter()
    for line in done.stdout.splitlines():
        line = line.strip()
        if line.startswith("\u274c ST") and ":" in line:  # "❌ ST101 Server error: 1"
            label, count = line[2:].rsplit(":", 1)
            failures[label.strip()] += int(count)
    summary = [ln for ln in done.stdout.splitlines() if "generated" in ln and "test cases" not in ln.lower()]
    return {"requests": sum(statuses.values()), "statuses": dict(sorted(statuses.items())),
            "server_errors": sum(c for s, c in statuses.items() if s >= 500), "failures": dict(failures),
            "seconds": elapsed, "peak_rss_mb": rss, "server_alive": alive, "exit_code": done.returncode,
            "command": " ".join(["schemathesis", *cmd[1:]]).replace(server.base, "http://127.0.0.1:PORT"),
            "summary": summary[-1].strip() if summary else ""}


# ---- load ----------------------------------------------------------------------------------------
@dataclass
class LoadResult:
    name: str
    concurrency: int
    seconds: float = 0.0
    latencies: dict[str, list[float]] = field(default_factory=dict)  # outcome -> seconds
    retry_after: list[int] = field(default_factory=list)
    server_cpu_s: float = 0.0
    peak_rss_mb: float = float("nan")

    def count(self) -> int:
        return sum(len(v) for v in self.latencies.values())


async def hammer(urls: list[str], concurrency: int, seconds: float, timeout: float, cycle: bool) -> LoadResult:
    """``concurrency`` clients taking URLs in turn (cycling or once each) for ``seconds``."""
    result = LoadResult("", concurrency)
    order = list(urls)
    random.Random(0).shuffle(order)
    nxt = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def worker() -> None:
            nonlocal nxt
            while time.monotonic() < deadline:
                if nxt >= len(order):
                    if not cycle:
                        return
                    nxt = 0
                url = order[nxt]
                nxt += 1
                t0 = time.perf_counter()
                try:
                    r = await client.get(url)
                    kind = f"{r.status_code}" + (" partial" if "x-slidemap-partial" in r.headers else "")
                    if r.status_code == 503 and "retry-after" in r.headers:
                        result.retry_after.append(int(r.headers["retry-after"]))
                except httpx.TimeoutException:
                    kind = "client timeout"
                except httpx.HTTPError as exc:
                    kind = f"connection error ({type(exc).__name__})"
                result.latencies.setdefault(kind, []).append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.seconds = time.perf_counter() - t0
    return result


def load(region: Path, work: Path, warm_seconds: float, cold_seconds: float) -> list[LoadResult]:
    results = []
    # Warm: every tile of the file layers and of both computed layers at their two finest zooms,
    # rendered once (until the cache holds it), then requested by 64 clients at once.
    with serve(region, work / "cache-warm", "--max-queue-seconds", "1e6", "--compute-timeout", "600",
               log=work / "warm-server.log") as server:
        load_models(server)
        client = httpx.Client(timeout=600)
        urls = []
        for layer in ("imagery", "factors/slope", "factors/landcover", "inventory", "susceptibility",
                      "susceptibility/classes", "detection"):
            urls += tile_urls(server.base, layer, 1, client)
        for url in urls:
            for _ in range(5):
                if client.get(url).headers.get("x-cache") == "HIT":
                    break
                client.get(url)
        cpu0 = server.cpu_seconds()
        res = asyncio.run(hammer(urls, 64, warm_seconds, 30, cycle=True))
        res.name = f"warm tiles ({len(urls)} URLs, 7 layers, cache hits)"
        res.server_cpu_s = server.cpu_seconds() - cpu0
        res.peak_rss_mb = server.peak_rss_mb()
        results.append(res)
    # Cold: U-Net detection tiles with empty caches (every tile needs model blocks), 16 clients,
    # each URL once; with the queue settings before issue 11, and with the defaults.
    for name, flags in (("cold detection tiles, old queue settings (no wait limit, 300 s timeout)",
                         ("--max-queue-seconds", "1e9", "--compute-timeout", "300")),
                        ("cold detection tiles, default settings", ())):
        tag = "old" if "old queue" in name else "new"
        with serve(region, work / f"cache-cold-{tag}", *flags, log=work / f"cold-{tag}-server.log") as server:
            load_models(server)
            urls = tile_urls(server.base, "detection", 2)
            cpu0 = server.cpu_seconds()
            res = asyncio.run(hammer(urls, 16, cold_seconds, 60, cycle=False))
            res.name = f"{name} ({len(urls)} URLs, z{urls and urls[0].split('/tiles/WebMercatorQuad/')[1].split('/')[0]}+)"
            res.server_cpu_s = server.cpu_seconds() - cpu0
            res.peak_rss_mb = server.peak_rss_mb()
            h = httpx.get(f"{server.base}/health", timeout=30).json()
            res.name += (f"; server: {h['inference']['refused_requests']} requests and {h['inference']['refused_blocks']} "
                         f"blocks refused, {h['inference']['dropped_blocks']} dropped")
            results.append(res)
    return results


# ---- faults --------------------------------------------------------------------------------------
def _get(url: str, timeout: float = 120, **kw) -> httpx.Response:
    return httpx.get(url, timeout=timeout, **kw)


def _short(r: httpx.Response) -> str:
    try:
        detail = r.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return f"{r.status_code}" + (f" `{detail[:150]}`" if isinstance(detail, str) else "")


def faults(region: Path, work: Path) -> list[tuple[str, str, str]]:
    rows: list[tuple[str, str, str]] = []
    # 1. Unwritable cache: the cache folder's parent is a file.
    blocker = work / "not-a-folder"
    blocker.write_text("x")
    with serve(region, blocker / "cache", log=work / "fault-cache.log") as server:
        f = tile_urls(server.base, "factors/slope")[0]
        d = tile_urls(server.base, "detection")[0]
        rf, rd = _get(f), _get(d)
        h = _get(f"{server.base}/health").json()
        rows.append(("cache folder cannot be created (read-only or full disk)",
                     f"factor tile {rf.status_code} ({rf.headers.get('x-cache')}), detection tile {rd.status_code}; "
                     f"/health {h['status']}: {'; '.join(h['problems'])[:220]}",
                     "ok" if rf.status_code == rd.status_code == 200 and h["status"] == "degraded" else "FAIL"))
    # 2. Input truncated after start, then restored.
    r2 = copy_region(region, work, "truncated")
    imagery = r2 / "build" / "imagery.tif"
    with serve(r2, work / "cache-trunc", log=work / "fault-trunc.log") as server:
        img, det, slope = (tile_urls(server.base, lyr)[0] for lyr in ("imagery", "detection", "factors/slope"))
        good = imagery.read_bytes()
        tmp = imagery.with_name(".imagery.new")
        tmp.write_bytes(good[: len(good) // 3])
        os.replace(tmp, imagery)
        ri, rd, rs, rl = _get(img), _get(det), _get(slope), _get(f"{server.base}/layers")
        h = _get(f"{server.base}/health").json()
        ok = ri.status_code == rd.status_code == 409 and rs.status_code == rl.status_code == 200 and h["status"] == "degraded"
        rows.append(("build/imagery.tif truncated under a running server",
                     f"imagery tile {_short(ri)}; detection {rd.status_code}; factor tile {rs.status_code}; /layers "
                     f"{rl.status_code}; /health {h['status']}", "ok" if ok else "FAIL"))
        tmp.write_bytes(good)
        os.replace(tmp, imagery)
        ri, h = _get(img), _get(f"{server.base}/health").json()
        rows.append(("... and restored", f"imagery tile {ri.status_code}; /health {h['status']}",
                     "ok" if ri.status_code == 200 and h["status"] == "ok" else "FAIL"))
    # 3. Input rebuilt under a running server: tiles follow the new data, equal to a fresh server's.
    r3 = copy_region(region, work, "rebuilt")
    with serve(r3, work / "cache-rebuilt", log=work / "fault-rebuilt.log") as server:
        urls = [u.replace(".png", ".npy") for u in tile_urls(server.base, "susceptibility")[:4]]
        paths = [u.split("?")[0][len(server.base):] for u in urls]  # the default model, no data pin
        before = [_get(server.base + p).content for p in paths]
        _scale_band(r3 / "build" / "factors.tif", "slope", 0.5)
        after = [_get(server.base + p) for p in paths]
    with serve(r3, work / "cache-fresh", log=work / "fault-fresh.log") as fresh:
        reference = [_get(fresh.base + p).content for p in paths]
    diffs = [float(np.nanmean(np.abs(_npy(a.content) - _npy(b)))) for a, b in zip(after, reference)]
    changed = [float(np.nanmean(np.abs(_npy(a) - _npy(b)))) for a, b in zip(before, reference)]
    rows.append(("build/factors.tif rebuilt under a running server (slope x 0.5)",
                 f"{len(urls)} susceptibility tiles re-served: max mean |dp| against a fresh server {max(diffs):.3g} "
                 f"(old data differed by {np.mean(changed):.3g}); all MISS then new data version: "
                 f"{all(a.headers.get('x-cache') == 'MISS' for a in after)}",
                 "ok" if max(diffs) == 0 and all(a.headers.get('x-cache') == 'MISS' for a in after) else "FAIL"))
    # 4. kill -9 in the middle of computing; restart; no temp files; tiles identical to fresh compute.
    r4 = copy_region(region, work, "killed")
    cache = work / "cache-killed"
    with serve(r4, cache, log=work / "fault-kill.log") as server:
        load_models(server)
        urls = [u.replace(".png", ".npy") for u in tile_urls(server.base, "detection", 1)]
        import threading

        def ask(u: str) -> None:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(u, timeout=60)

        askers = [threading.Thread(target=ask, args=(u,), daemon=True) for u in urls[:8]]
        for th in askers:
            th.start()
        deadline = time.monotonic() + 60  # kill once blocks are being computed
        while time.monotonic() < deadline and not list((cache / "blocks").rglob("*.npy")):
            time.sleep(0.05)
        server.proc.kill()  # SIGKILL: no clean-up of any kind
        server.proc.wait(10)
        for th in askers:
            th.join(5)
    temps = [p for p in cache.rglob(".*") if p.is_file()]
    paths = [u.split("?")[0][len(server.base):] for u in urls[:8]]
    with serve(r4, cache, "--max-queue-seconds", "1e6", "--compute-timeout", "600", log=work / "fault-kill2.log") as server:
        again = [_get(server.base + p, timeout=600).content for p in paths]
    with serve(r4, work / "cache-killed-fresh", "--max-queue-seconds", "1e6", "--compute-timeout", "600",
               log=work / "fault-kill3.log") as server:
        fresh_tiles = [_get(server.base + p, timeout=600).content for p in paths]
    same = sum(a == b for a, b in zip(again, fresh_tiles))
    rows.append(("kill -9 while computing detection blocks, then restart",
                 f"{len(temps)} temporary files left; {same}/{len(again)} re-served tiles byte-identical to a fresh server's",
                 "ok" if not temps and same == len(again) else "FAIL"))
    # 5. Client gives up while its blocks wait in the queue.
    with serve(region, work / "cache-cancel", log=work / "fault-cancel.log") as server:
        load_models(server)
        tj = _get(f"{server.base}/layers/detection/WebMercatorQuad/tilejson.json").json()
        t = WMQ.tile(tj["center"][0], tj["center"][1], tj["minzoom"])
        url = tj["tiles"][0].replace("{z}", str(t.z)).replace("{x}", str(t.x)).replace("{y}", str(t.y))
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=httpx.Timeout(10, read=0.5))
        time.sleep(2)
        h = _get(f"{server.base}/health").json()["inference"]
        rows.append(("client disconnects 0.5 s into a cold low-zoom detection tile",
                     f"{h['dropped_blocks']} queued blocks dropped, {h['pending_blocks']} still pending 2 s later",
                     "ok" if h["dropped_blocks"] > 0 else "FAIL (nothing was queued?)"))
        # 6. Hostile requests.
        t0 = time.perf_counter()
        cm = _get(f"{server.base}/colorMaps/viridis?format=png&height=500000")
        cm_t = time.perf_counter() - t0
        evil = _get(f"{server.base}/layers", headers={"host": "evil.example"})
        pt = _get(f"{server.base}/point?lon=15&lat=0")
        rows.append(("GET /colorMaps/viridis?format=png&height=500000", f"{_short(cm)} in {cm_t * 1000:.0f} ms",
                     "ok" if cm.status_code == 422 else "FAIL"))
        rows.append(("Host: evil.example", _short(evil), "ok" if evil.status_code == 400 else "FAIL"))
        rows.append(("/point outside the analysis CRS's valid area (15E, 0N)", f"{pt.status_code}, inside={pt.json().get('inside')}",
                     "ok" if pt.status_code == 200 else "FAIL"))
        rows.extend(_upload_and_range_faults(server))
    return rows


def _raw_post(server: Server, path: str, declared: int, body: bytes, close: bool, wait: float) -> str:
    """POST ``body`` announcing ``declared`` bytes over a raw socket; close at once, or wait for the answer."""
    host, port = server.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait + 5) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {declared}\r\n\r\n".encode() + body)
        if close:
            return ""
        with contextlib.suppress(OSError):
            return conn.recv(4096).decode("latin-1").split("\r\n", 1)[0]
    return ""


def _upload_and_range_faults(server: Server) -> list[tuple[str, str, str]]:
    """Clients that leave mid-upload or stall, and bad Range headers (each found by a fuzz run)."""
    rows = []
    path = "/layers/factors/slope/feature.tif"
    seen = len(server.log.read_text(errors="replace"))
    for _ in range(3):
        _raw_post(server, path, 1000, b"{", close=True, wait=0)
    time.sleep(1)
    log = server.log.read_text(errors="replace")[seen:]
    healthy = _get(f"{server.base}/health").status_code == 200
    rows.append(("3 clients leave mid-upload (POST feature.tif, 1 of 1000 bytes sent)",
                 f"server log: {log.count('Traceback')} tracebacks, {log.count('-> 500')} 500s; /health "
                 f"{'answers' if healthy else 'DOWN'}",
                 "ok" if healthy and "Traceback" not in log and "-> 500" not in log else "FAIL"))
    t0 = time.perf_counter()
    status = _raw_post(server, path, 1000, b"{", close=False, wait=40)
    rows.append(("a client sends 1 of 1000 body bytes, then nothing", f"`{status}` after {time.perf_counter() - t0:.0f} s",
                 "ok" if " 408 " in status else "FAIL"))
    listed = _get(f"{server.base}/downloads").json()["outputs"]
    if listed:
        url = server.base + listed[0]["href"]
        bad = _get(url, headers={"Range": "bytes=abc"})
        beyond = _get(url, headers={"Range": f"bytes={listed[0]['size'] + 10}-"})
        json_both = all(r.headers.get("content-type", "").startswith("application/json") for r in (bad, beyond))
        rows.append(("GET a download with Range: bytes=abc, then a range beyond the file",
                     f"{_short(bad)}; {_short(beyond)}, Content-Range {beyond.headers.get('content-range')}",
                     "ok" if bad.status_code == 400 and beyond.status_code == 416 and json_both else "FAIL"))
    host = _get(f"{server.base}/layers", headers={"host": "127.0.0.1:99999"})
    rows.append(("Host: 127.0.0.1:99999 (a port that cannot exist, echoed into links)", _short(host),
                 "ok" if host.status_code == 400 else "FAIL"))
    return rows


def _npy(content: bytes) -> np.ndarray:
    import io

    return np.load(io.BytesIO(content))


def _scale_band(path: Path, name: str, factor: float) -> None:
    import rasterio

    tmp = path.with_name(".factors.new.tif")
    with rasterio.open(path) as src:
        profile, data, names = src.profile, src.read(), list(src.descriptions)
    data[names.index(name)] *= factor
    with rasterio.open(tmp, "w", **profile) as dst:
        dst.write(data)
        for i, n in enumerate(names, start=1):
            dst.set_band_description(i, n)
    os.replace(tmp, path)


# ---- bad region inputs ---------------------------------------------------------------------------
def bad_inputs(work: Path) -> list[tuple[str, str, str]]:
    import geopandas as gpd
    import rasterio
    from affine import Affine

    def raster(path: Path, data: np.ndarray | None = None, nodata: float | None = None) -> None:
        data = data if data is not None else (np.random.default_rng(0).random((40, 40)) * 1000).astype("float32")
        with rasterio.open(path, "w", driver="GTiff", width=40, height=40, count=1, dtype="float32", crs="EPSG:32649",
                           transform=Affine(30, 0, 500000, 0, -30, 3200000), nodata=nodata) as dst:
            dst.write(data, 1)

    cases = []
    root = work / "inputs"

    def case(name: str, inputs: str, region_extra: str = "", setup=None) -> None:
        folder = root / f"case{len(cases)}"
        folder.mkdir(parents=True)
        raster(folder / "dem.tif")
        if setup:
            setup(folder)
        (folder / "region.toml").write_text(f'[region]\nname = "t"\nresolution = 30\n{region_extra}\n[inputs]\n{inputs}\n')
        cases.append((name, folder))

    raster(work / "outside.tif")
    case('DEM path "../../outside.tif"', 'dem = "../../outside.tif"')
    case("DEM absolute path elsewhere", f'dem = "{work / "outside.tif"}"')
    case("header-only CSV inventory", 'dem = "dem.tif"\ninventory = { path = "pts.csv" }',
         setup=lambda f: (f / "pts.csv").write_text("x,y\n"))
    case("GeoPackage inventory without features", 'dem = "dem.tif"\ninventory = { path = "inv.gpkg" }',
         setup=lambda f: gpd.GeoDataFrame({"label": []}, geometry=[], crs="EPSG:32649").to_file(f / "inv.gpkg"))
    case("empty (0-byte) GeoPackage", 'dem = "dem.tif"\nroads = "roads.gpkg"',
         setup=lambda f: (f / "roads.gpkg").write_bytes(b""))
    case("all-nodata DEM", 'dem = "dem.tif"',
         setup=lambda f: raster(f / "dem.tif", np.full((40, 40), -9999, "float32"), -9999))
    case("three misspelt keys", 'dem = "dem.tif"\nrainfal = "r.tif"\nlandcovr = "l.tif"', 'resoluton = 30\n')
    rows = []
    for name, folder in cases:
        done = subprocess.run([*SLIDEMAP, "prepare", str(folder), "--quiet"], capture_output=True, text=True, env=ENV)
        lines = done.stderr.strip().splitlines()
        message = (lines[-1] if lines else "").replace(str(root), "…").replace(str(work), "…")
        written = (folder / "build").exists()
        ok = done.returncode == 2 and len(lines) == 1 and not written
        rows.append((name, f"exit {done.returncode}, build/ {'written' if written else 'not written'}: `{message}`",
                     "ok" if ok else "FAIL"))
    return rows


# ---- report ----------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.2f}" if values else "-"


def write(out: Path, args, started: dt.datetime, seconds: float, region_note: str, fz: dict, loads: list[LoadResult],
          fault_rows, input_rows) -> None:
    lines = [
        "# Reliability of the tile server",
        "",
        f"Made by `{' '.join(['.venv/bin/python -m benchmarks.reliability', *sys.argv[1:]])}` on {started:%Y-%m-%d %H:%M} UTC in "
        f"{seconds / 60:.1f} min; machine: {cpu_description()} (**shared** with other work while measured: "
        "wall-clock figures are noisy, server CPU seconds are given beside them). Every server is a "
        "`slidemap serve` process on 127.0.0.1 with default settings unless a row says otherwise.",
        "",
        f"Region: {region_note}",
        "",
        "## Fuzzing (schemathesis, all checks)",
        "",
    ]
    if "skipped" in fz:
        lines.append(f"Skipped: {fz['skipped']}.")
    else:
        lines += [
            f"`{fz['command']}` ({fz['seconds']:.0f} s): **{fz['requests']} requests, {fz['server_errors']} answered 5xx**; "
            f"server peak RSS {fz['peak_rss_mb']:.0f} MB, alive at the end: {fz['server_alive']}.",
            "",
            "| status | answers |", "|---:|---:|",
            *[f"| {s} | {c} |" for s, c in fz["statuses"].items()],
            "",
            "Check failures reported by schemathesis: "
            + (", ".join(f"{k}: {v}" for k, v in fz["failures"].items()) or "none") + ".",
            "One fuzzing client (requests one after the other): the fuzz tests what each request gets; overload "
            "is the load section's job. The stateful phase is not run: the `tiles` of TileJSON and `/layers` are URL "
            "templates (`{z}/{x}/{y}`), which schemathesis would follow as links.",
        ]
    lines += ["", "## Load (loopback)", "",
              "| run | clients | seconds | requests | req/s | answers by kind | p50 / p95 / p99 of 200 (s) | "
              "p50 / max of 503 (s) | Retry-After (s) | server CPU s | server peak RSS (MB) |",
              "|---|---:|---:|---:|---:|---|---|---|---|---:|---:|"]
    for r in loads:
        ok = r.latencies.get("200", [])
        busy = r.latencies.get("503", [])
        kinds = ", ".join(f"{k}: {len(v)}" for k, v in sorted(r.latencies.items()))
        ra = f"{min(r.retry_after)}-{max(r.retry_after)}" if r.retry_after else "-"
        lines.append(f"| {r.name} | {r.concurrency} | {r.seconds:.0f} | {r.count()} | {r.count() / max(r.seconds, 1e-9):.1f} | "
                     f"{kinds} | {pct(ok, 50)} / {pct(ok, 95)} / {pct(ok, 99)} | "
                     f"{pct(busy, 50)} / {(f'{max(busy):.2f}' if busy else '-')} | {ra} | {r.server_cpu_s:.0f} | {r.peak_rss_mb:.0f} |")
    lines += ["", "\"partial\" = a 200 tile with `X-Slidemap-Partial` (the blocks the queue admitted; never cached).",
              "", "## Faults injected", "", "| fault | answer | verdict |", "|---|---|---|",
              *[f"| {a} | {b} | {c} |" for a, b, c in fault_rows],
              "", "## Bad region inputs (`slidemap prepare`)", "", "| input | answer | verdict |", "|---|---|---|",
              *[f"| {a} | {b} | {c} |" for a, b, c in input_rows], ""]
    out.write_text("\n".join(lines))


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.reliability", description=__doc__.split("\n")[0])
    ap.add_argument("--region", type=Path, default=None, help="a prepared region with models (default: make one)")
    ap.add_argument("--size-km", type=float, default=8.0)
    ap.add_argument("--fuzz-examples", type=int, default=50)
    ap.add_argument("--fuzz-seconds", type=int, default=240)
    ap.add_argument("--warm-seconds", type=float, default=30.0)
    ap.add_argument("--cold-seconds", type=float, default=45.0)
    ap.add_argument("--quick", action="store_true", help="small region, short fuzz and load (a smoke run)")
    ap.add_argument("--only", default="inputs,faults,fuzz,load", help="comma-separated sections")
    ap.add_argument("--out", type=Path, default=REPO / "RELIABILITY.md")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (server logs, reports)")
    args = ap.parse_args()
    if args.quick:
        args.size_km, args.fuzz_examples, args.fuzz_seconds = 4.0, 10, 60
        args.warm_seconds, args.cold_seconds = 10.0, 15.0
    only = set(args.only.split(","))
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="slidemap-reliability-"))
    try:
        if args.region:
            region = copy_region(args.region.resolve(), work, "region")
            region_note = f"`{args.region.name}` (copied)."
        else:
            print("==> region", flush=True)
            region = make_region(work, args.size_km)
            region_note = (f"SYNTHETIC demo region, {args.size_km:g} km, seed 0; detection: the shipped "
                           "`models/detector-demo-rgbn` U-Net; susceptibility: a logistic regression fitted by this command.")
        sections: dict = {"fz": {"skipped": "not run (--only)"}, "loads": [], "faults": [], "inputs": []}
        if "inputs" in only:
            print("==> bad region inputs", flush=True)
            sections["inputs"] = bad_inputs(work)
        if "faults" in only:
            print("==> faults", flush=True)
            sections["faults"] = faults(region, work)
        if "fuzz" in only:
            print("==> fuzz", flush=True)
            sections["fz"] = fuzz(region, work, args.fuzz_examples, args.fuzz_seconds)
        if "load" in only:
            print("==> load", flush=True)
            sections["loads"] = load(region, work, args.warm_seconds, args.cold_seconds)
        write(args.out, args, started, time.perf_counter() - t0, region_note, sections["fz"], sections["loads"],
              sections["faults"], sections["inputs"])
        print(f"wrote {args.out}")
        failed = [r for r in sections["faults"] + sections["inputs"] if r[2] != "ok"]
        return 1 if failed or sections["fz"].get("server_errors") else 0
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
