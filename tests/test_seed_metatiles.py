"""Seeding by metatiles: worker processes, metatile cuts, the pyramid, palette PNGs and WebP,
each held against the server's own tile endpoint (pixel-close) or against itself (identical)."""

from __future__ import annotations

import io
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import morecantile
import numpy as np
import pytest
from PIL import Image

from server_models import add_sklearn_lsm
from slidemap.server import seed as seed_mod
from slidemap.server.service import ServerSettings, build_service
from slidemap.server.tile_encode import Encoding, Pixels, encode
from slidemap.server.seed_plan import plan, read_zooms

WMQ = morecantile.tms.get("WebMercatorQuad")


@pytest.fixture(scope="module")
def region(prepared_region, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seedmeta") / "region"
    shutil.copytree(prepared_region, out, ignore=shutil.ignore_patterns("cache", "models"))
    add_sklearn_lsm(out)
    return out


def _archive(path: Path) -> dict[tuple[int, int, int], bytes]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles").fetchall()
    finally:
        conn.close()
    return {(z, x, (2**z - 1) - row): data for z, x, row, data in rows}


def _rgba(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGBA")).astype(int)


def _live(region: Path, tmp: Path):
    """The server's tile service with caching off: every tile rendered by the endpoint's own code."""
    return build_service(region, ServerSettings(cache_dir=tmp / "live", cache_size_mb=0, report_device=False))


def _compare(tiles: dict, live, layer: str, fmt: str = "png") -> tuple[float, float, int]:
    """Mean |difference| over pixels visible in both, share of pixels whose visibility differs, max."""
    diff_sum = count = alpha_bad = total = worst = 0
    for (z, x, y), data in tiles.items():
        a = _rgba(data)
        b = _rgba(live.tile(layer, "WebMercatorQuad", z, x, y, 1, fmt).content)
        both = (a[..., 3] > 0) & (b[..., 3] > 0)
        alpha_bad += int(((a[..., 3] > 0) != (b[..., 3] > 0)).sum())
        total += both.size
        if both.any():
            d = np.abs(a[..., :3] - b[..., :3])[both]
            diff_sum, count, worst = diff_sum + int(d.sum()), count + d.size, max(worst, int(d.max()))
    return diff_sum / max(count, 1), alpha_bad / max(total, 1), worst


def _zmax(region: Path, layer: str) -> int:
    from slidemap.server.tiles import zoom_range

    service = build_service(region, ServerSettings(report_device=False, cache_size_mb=0))
    return zoom_range(service.registry, service.registry.get(layer), WMQ)[1]


def test_plan_covers_every_tile_once():
    tiles = [(t.z, t.x, t.y) for t in WMQ.tiles(110.28, 29.15, 110.49, 29.33, list(range(9, 16)))]
    assert read_zooms((9, 15), 8, True) == [(15, 3), (11, 2)]
    assert read_zooms((11, 15), 4, False) == [(z, 0) for z in (15, 14, 13, 12, 11)]
    for n, pyramid in ((8, True), (4, True), (8, False), (1, True)):
        metas = plan(WMQ, tiles, (9, 15), n, pyramid)
        made = [t for m in metas for t in m.tiles]
        assert sorted(made) == sorted(tiles)  # every tile, once
        for m in metas:
            for z, x, y in m.tiles:  # inside its block, at a zoom the block makes
                k = m.z - z
                assert 0 <= k <= m.levels and m.x0 >> k <= x < (m.x0 + m.nx) >> k and m.y0 >> k <= y < (m.y0 + m.ny) >> k


def test_workers_give_the_same_tiles_as_one_process(region, tmp_path):
    z = _zmax(region, "imagery")
    zoom = f"{z - 3}-{z}"
    one, two = tmp_path / "one.mbtiles", tmp_path / "two.mbtiles"
    seed_mod.seed(region, ["imagery"], zoom=zoom, out_format="mbtiles", out=one, cache_dir=tmp_path / "c1",
                  workers=1, metatile=2, progress=False)
    report = seed_mod.seed(region, ["imagery"], zoom=zoom, out_format="mbtiles", out=two, cache_dir=tmp_path / "c2",
                           workers=2, metatile=2, progress=False)
    assert report.where == "2 processes" and report.layers[0].tile_tasks > 2
    a, b = _archive(one), _archive(two)
    assert len(a) == report.layers[0].tiles and a == b  # byte for byte


def test_metatile_cut_matches_the_servers_tile(region, tmp_path):
    """No pyramid: every zoom warped from the source in 8 x 8 blocks, against the endpoint's tiles."""
    z = _zmax(region, "imagery")
    out = tmp_path / "img.mbtiles"
    seed_mod.seed(region, ["imagery"], zoom=f"{z - 1}-{z}", out_format="mbtiles", out=out, cache_dir=tmp_path / "c",
                  workers=1, pyramid=False, progress=False)
    mean, alpha_bad, _ = _compare(_archive(out), _live(region, tmp_path), "imagery")
    assert mean < 0.5 and alpha_bad < 0.002, (mean, alpha_bad)


def test_metatile_cut_of_a_computed_layer_matches_the_servers_tile(region, tmp_path):
    z = _zmax(region, "susceptibility")
    out = tmp_path / "s.mbtiles"
    seed_mod.seed(region, ["susceptibility"], zoom=f"{z - 1}-{z}", out_format="mbtiles", out=out,
                  cache_dir=tmp_path / "c", workers=1, block_size=32, progress=False)
    live = build_service(region, ServerSettings(cache_dir=tmp_path / "c", cache_size_mb=0, report_device=False,
                                                block_size=32))  # same blocks, tiles rendered afresh
    mean, alpha_bad, _ = _compare(_archive(out), live, "susceptibility")
    assert mean < 0.5 and alpha_bad < 0.002, (mean, alpha_bad)


def test_coarser_zooms_from_finer_data_are_close_to_the_direct_render(region, tmp_path):
    z = _zmax(region, "imagery")
    out = tmp_path / "img.mbtiles"
    seed_mod.seed(region, ["imagery"], zoom=f"{z - 3}-{z}", out_format="mbtiles", out=out, cache_dir=tmp_path / "c",
                  workers=1, metatile=8, progress=False)
    tiles = _archive(out)
    derived = {t: d for t, d in tiles.items() if t[0] < z}
    assert derived
    # Rescale after averaging, not averaged colours: mean within a few grey levels; edges within a pixel.
    mean, alpha_bad, _ = _compare(derived, _live(region, tmp_path), "imagery")
    assert mean < 4 and alpha_bad < 0.02, (mean, alpha_bad)


def test_palette_png_decodes_to_the_same_rgba():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 6, (256, 256)).astype(np.uint8)
    colours = np.array([[0, 0, 0, 0], [10, 20, 30, 255], [200, 0, 0, 255], [0, 200, 0, 128], [1, 2, 3, 255],
                        [255, 255, 255, 255]], dtype=np.uint8)
    rgba = colours[codes]
    px = Pixels(np.moveaxis(rgba[..., :3], -1, 0).copy(), rgba[..., 3].copy(), codes)
    pal = encode(px, Encoding("png", palette=True))
    plain = encode(px, Encoding("png", palette=False))
    assert Image.open(io.BytesIO(pal)).mode == "P" and Image.open(io.BytesIO(plain)).mode == "RGBA"
    assert np.array_equal(_rgba(pal), _rgba(plain)) and len(pal) < len(plain)
    # A code drawn in two colours cannot be a palette: the tile stays RGBA, unchanged.
    px.data[0, 0, 0] ^= 1
    assert Image.open(io.BytesIO(encode(px, Encoding("png")))).mode == "RGBA"


def test_opaque_tiles_drop_alpha_and_every_compression_decodes_alike():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (3, 256, 256)).astype(np.uint8)
    opaque = Pixels(rgb, np.full((256, 256), 255, np.uint8))
    edge = Pixels(rgb, np.where(np.arange(256)[None, :] < 200, 255, 0).astype(np.uint8).repeat(256, 0))
    grey = Pixels(rgb[:1], np.full((256, 256), 255, np.uint8))
    for level in ("rle", 0, 4, 9):
        tiles = [encode(p, Encoding("png", level)) for p in (opaque, edge, grey)]
        assert [Image.open(io.BytesIO(t)).mode for t in tiles] == ["RGB", "RGBA", "L"]
        assert np.array_equal(_rgba(tiles[0])[..., :3], np.moveaxis(rgb, 0, -1)) and (_rgba(tiles[0])[..., 3] == 255).all()
        assert np.array_equal(_rgba(tiles[1])[..., 3], edge.alpha)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(tiles[2]))), rgb[0])


def test_class_layer_seeds_palette_pngs_like_the_servers_tiles(region, tmp_path):
    z = _zmax(region, "susceptibility/classes")
    out = tmp_path / "cls.mbtiles"
    seed_mod.seed(region, ["susceptibility/classes"], zoom=f"{z}", out_format="mbtiles", out=out,
                  cache_dir=tmp_path / "c", workers=1, block_size=32, progress=False)
    tiles = _archive(out)
    assert any(Image.open(io.BytesIO(d)).mode == "P" for d in tiles.values())
    live = build_service(region, ServerSettings(cache_dir=tmp_path / "c", cache_size_mb=0, report_device=False,
                                                block_size=32))
    mean, alpha_bad, _ = _compare(tiles, live, "susceptibility/classes")
    assert mean == 0 and alpha_bad < 0.002, (mean, alpha_bad)


def test_webp_archive_and_a_resumed_seed(region, tmp_path):
    z = _zmax(region, "factors/slope")
    out = tmp_path / "slope.mbtiles"
    first = seed_mod.seed(region, ["factors/slope"], zoom=f"{z - 1}-{z}", tile_format="webp", out_format="mbtiles",
                          out=out, cache_dir=tmp_path / "c", workers=1, progress=False)
    conn = sqlite3.connect(out)
    assert dict(conn.execute("SELECT name, value FROM metadata"))["format"] == "webp"
    conn.close()
    tiles = _archive(out)
    assert all(Image.open(io.BytesIO(d)).format == "WEBP" for d in tiles.values())
    # Lossy at the server's quality (Pillow's libwebp call, not GDAL's): close to the endpoint's WebP.
    mean, alpha_bad, _ = _compare(tiles, _live(region, tmp_path), "factors/slope", "webp")
    assert mean < 6 and alpha_bad < 0.01, (mean, alpha_bad)
    assert first.layers[0].rendered == len(tiles) and first.layers[0].reused == 0
    # A second seed over the same cache makes nothing and writes the same archive.
    again = seed_mod.seed(region, ["factors/slope"], zoom=f"{z - 1}-{z}", tile_format="webp", out_format="mbtiles",
                          out=out, cache_dir=tmp_path / "c", workers=1, progress=False)
    assert again.layers[0].rendered == 0 and again.layers[0].reused == len(tiles)
    assert _archive(out) == tiles and "already cached" in str(again)


def test_seed_options_are_checked(region, tmp_path):
    from slidemap.errors import InputError

    for kw, flag in (({"workers": 0}, "--workers"), ({"metatile": 3}, "--metatile"), ({"png_level": 12}, "--png-level"),
                     ({"png_level": "zip"}, "--png-level")):
        with pytest.raises(InputError, match=flag):
            seed_mod.seed(region, ["factors/slope"], zoom="12", cache_dir=tmp_path, **kw)
    done = subprocess.run([sys.executable, "-m", "slidemap.cli", "seed", str(region), "--layer", "factors/slope",
                           "--workers", "0"], capture_output=True, text=True, timeout=300)
    # The last line (TensorFlow, which the CLI starts for `seed`, may log before it).
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2 and last.startswith("slidemap: error: --workers") and "Traceback" not in done.stderr


def test_pool_forkserver_starts_before_the_rendering_imports(monkeypatch):
    """`slidemap seed` starts the workers' forkserver first, so its imports overlap the command's own."""
    from multiprocessing import forkserver

    from slidemap.server.seed_runner import prestart

    started = []
    monkeypatch.setattr(forkserver, "ensure_running", lambda: started.append(True))
    prestart(1, None)
    prestart(4, "local")  # a Dask cluster starts its own workers
    assert started == []
    prestart(2, None)
    assert started == [True]
