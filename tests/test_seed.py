"""Seeding: tree (the server's tile cache), MBTiles, PMTiles, and a Dask cluster."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from slidemap.errors import InputError
from slidemap.server import seed as seed_mod


@pytest.fixture(scope="module")
def region(prepared_region, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("seed") / "region"
    shutil.copytree(prepared_region, out, ignore=shutil.ignore_patterns("cache", "models"))
    return out


def test_seed_tree_fills_the_servers_cache(region, tmp_path):
    from slidemap.server.app import ServerSettings, create_app

    report = seed_mod.seed(region, ["factors/slope"], zoom="11-12", cache_dir=tmp_path)
    assert "factors/slope" in report and "SYNTHETIC" in report
    files = list((tmp_path / "tiles").rglob("*.png"))
    assert files
    client = TestClient(create_app(region, ServerSettings(cache_dir=tmp_path)))
    tj = client.get("/layers/factors/slope/WebMercatorQuad/tilejson.json").json()
    import morecantile

    t = morecantile.tms.get("WebMercatorQuad").tile(tj["center"][0], tj["center"][1], 12)
    r = client.get(tj["tiles"][0].format(z=t.z, x=t.x, y=t.y))
    assert r.status_code == 200 and r.headers["x-cache"] == "HIT"


def test_seed_mbtiles_and_pmtiles(region, tmp_path):
    out = tmp_path / "slope.mbtiles"
    seed_mod.seed(region, ["factors/slope"], zoom="10-11", out_format="mbtiles", out=out, cache_dir=tmp_path / "c")
    conn = sqlite3.connect(out)
    meta = dict(conn.execute("SELECT name, value FROM metadata"))
    n = conn.execute("SELECT count(*) FROM tiles").fetchone()[0]
    zooms = {z for (z,) in conn.execute("SELECT DISTINCT zoom_level FROM tiles")}
    conn.close()
    assert meta["format"] == "png" and "SYNTHETIC" in meta["description"] and n >= 2 and zooms == {10, 11}
    pm = tmp_path / "slope.pmtiles"
    seed_mod.seed(region, ["factors/slope"], zoom="10-11", out_format="pmtiles", out=pm, cache_dir=tmp_path / "c")
    from pmtiles.reader import MmapSource, Reader

    with open(pm, "rb") as fh:
        reader = Reader(MmapSource(fh))
        header = reader.header()
        assert header["min_zoom"] == 10 and header["max_zoom"] == 11
        assert "SYNTHETIC" in reader.metadata()["description"]
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_seed_computed_layer_on_a_dask_cluster(region, tmp_path):
    pytest.importorskip("dask.distributed")
    from test_server import add_fake_model, make_loaders  # the same fakes as the server tests

    work = tmp_path / "r"
    shutil.copytree(region, work)
    add_fake_model(work, "lsm", "multiscale_dense")
    # Fakes cannot be loaded by a fresh worker process, so this cluster runs its workers in-process
    # threads (dask.distributed scheduler and workers all the same); `--dask local` uses processes.
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    client = Client(cluster)
    calls: dict = {}

    seed_mod._SERVICES.clear()
    orig = seed_mod._settings_dict

    def settings_with_block(cache_dir):
        d = orig(cache_dir)
        d["block_size"] = 64
        return d

    class _R(seed_mod._Runner):
        def __init__(self, dask):
            self.client, self.cluster = client, None

        def close(self):
            pass

    import slidemap.server.app as app_mod

    real_build = app_mod.build_service

    def build(region_dir, settings=None):
        settings.loaders = make_loaders(calls)
        return real_build(region_dir, settings)

    mp = pytest.MonkeyPatch()
    mp.setattr(seed_mod, "_settings_dict", settings_with_block)
    mp.setattr(seed_mod, "_Runner", _R)
    mp.setattr(app_mod, "build_service", build)
    try:
        report = seed_mod.seed(work, ["susceptibility"], zoom="12-13", cache_dir=tmp_path / "c", dask="local")
    finally:
        mp.undo()
        client.close()
        cluster.close()
    assert "4 model blocks computed" in report  # 100 x 100 cells in 64-cell blocks
    assert len(calls["lsm"]) == 4  # each block once, although two workers shared the work
    assert list((tmp_path / "c" / "tiles").rglob("*.png"))


def test_seed_bad_arguments(region, tmp_path):
    with pytest.raises(InputError, match="--zoom"):
        seed_mod.seed(region, ["factors/slope"], zoom="12-8", cache_dir=tmp_path)
    with pytest.raises(InputError, match="--out"):
        seed_mod.seed(region, ["factors/slope"], out_format="mbtiles", cache_dir=tmp_path)
    with pytest.raises(InputError, match="--dask"):
        seed_mod.seed(region, ["factors/slope"], zoom="10", cache_dir=tmp_path, dask="http://x")
