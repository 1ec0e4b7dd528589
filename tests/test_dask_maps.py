"""`detect --dask` and `map susceptibility --dask`: the same arrays as the in-process runs.

One in-process Dask cluster (``processes=False``) serves the module: tasks run in this process, so
monkeypatched sizes reach them and nothing is spawned.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import rasterio
from affine import Affine

from slidemap.compute.maps import detection
from slidemap.compute.maps import susceptibility as sus
from slidemap.compute.models.store import save_artefact
from slidemap.errors import InputError
from slidemap.training.unet import build_unet
from server_models import add_sklearn_lsm


@pytest.fixture(scope="module")
def client():
    from dask.distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None)
    c = Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory):
    keras.utils.set_random_seed(5)
    model = build_unet(4, base_width=2)
    bands = ["B2", "B3", "B4", "B8"]
    card = {"synthetic": True, "bands": bands, "inputs": bands, "units": "reflectance", "tile_multiple": 16,
            "halo": 16, "threshold": 0.5,
            "normalisation": {"method": "standardise", "bands": bands, "mean": [0.1] * 4, "std": [0.05] * 4}}
    return save_artefact(tmp_path_factory.mktemp("models"), "unet", "tiny", card, lambda p: model.save(p))


def _image(path, shape=(4, 150, 170)):
    rng = np.random.default_rng(2)
    data = (0.1 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    data[:, 10:14, 20:30] = np.nan  # no data travels through chunks too
    with rasterio.open(path, "w", driver="GTiff", width=shape[2], height=shape[1], count=shape[0], dtype="float32",
                       crs="EPSG:32649", transform=Affine(10, 0, 500000, 0, -10, 3000000), nodata=np.nan) as dst:
        dst.write(data)
        for i, b in enumerate(["B2", "B3", "B4", "B8"], start=1):
            dst.set_band_description(i, b)
    return path


def test_detect_on_dask_equals_in_process(tiny_detector, tmp_path, client, monkeypatch):
    monkeypatch.setattr(detection, "CHUNK_TILES", 1)  # one chunk per tile: 3 x 3 chunks here
    src = _image(tmp_path / "in.tif", (4, 500, 560))
    here = detection.detect_file(tiny_detector, src, tmp_path / "here.tif", scale=1.0, progress=False, mask=True)
    there = detection.detect_file(tiny_detector, src, tmp_path / "there.tif", scale=1.0, progress=False, mask=True,
                                  dask=client)
    det = detection.load_detector(tiny_detector)
    assert len(det.chunks(500, 560)) == 9
    with rasterio.open(tmp_path / "here.tif") as a, rasterio.open(tmp_path / "there.tif") as b:
        pa, pb = a.read(1), b.read(1)
    assert np.isnan(pa).any()
    np.testing.assert_array_equal(pa, pb)  # identical, NaN where NaN
    with rasterio.open(tmp_path / "here_mask.tif") as a, rasterio.open(tmp_path / "there_mask.tif") as b:
        np.testing.assert_array_equal(a.read(1), b.read(1))
    assert here["pixels_above_threshold"] == there["pixels_above_threshold"]


class _HaloModel:
    """A susceptibility model with a halo (a NaN-aware local mean of slope), as the window path has."""

    name, halo, mode = "halo-mean", 3, "dense"

    def predict_block(self, stack):
        from server_models import nan_mean

        h = self.halo
        return np.clip(nan_mean(stack[0], 2 * h + 1) / 45.0, 0, 1)[h:-h, h:-h].astype(np.float32)


def test_map_susceptibility_on_dask_equals_in_process(region_copy, tmp_path, client, monkeypatch):
    add_sklearn_lsm(region_copy)
    here = sus.map_region(region_copy, out=tmp_path / "here.tif", block=32, progress=False)
    there = sus.map_region(region_copy, out=tmp_path / "there.tif", block=32, progress=False, dask=client)
    for name in ("here.tif", "here_classes.tif"):
        with rasterio.open(tmp_path / name) as a, rasterio.open(tmp_path / name.replace("here", "there")) as b:
            np.testing.assert_array_equal(a.read(1), b.read(1))
    assert here["classes"]["area_share"] == there["classes"]["area_share"]
    # A model with a halo: every block reads its context across block and raster edges alike.
    with rasterio.open(region_copy / "build" / "factors.tif") as src:
        stack = src.read([1]).astype(np.float32)
    model = _HaloModel()
    whole = sus.predict_region(model, stack, block=32, progress=False)
    monkeypatch.setattr(sus, "_loaded", type("C", (), {"get_or_load": staticmethod(lambda key, load: model)})())
    grid = type("G", (), {"shape": stack.shape[1:]})()
    blocks = sus._map_on_dask(client, tmp_path, "auto", region_copy / "build" / "factors.tif", [1], grid, 32, False)
    np.testing.assert_array_equal(whole, blocks)


def test_bad_dask_address_is_a_one_line_error(tiny_detector, tmp_path, capsys):
    from slidemap.cli import main

    src = _image(tmp_path / "in.tif")
    code = main(["detect", str(tiny_detector), str(src), str(tmp_path / "o.tif"), "--dask", "localhost:8786"])
    err = capsys.readouterr().err
    assert code == 2 and "--dask 'localhost:8786'" in err and "tcp://" in err and "Traceback" not in err
    with pytest.raises(InputError):
        detection.detect_file(tiny_detector, src, tmp_path / "o.tif", progress=False, dask="nowhere")


def test_blocks_fitted_to_the_grid_give_the_same_map(region_copy):
    """Blocks sized to the grid (little NaN padding, one shape) map exactly what square blocks map."""
    assert sus.fitted_block(667, 667, 512) == (336, 336)  # two blocks a side, not two of 512
    assert sus.fitted_block(667, 1000, 512) == (336, 512)
    assert sus.fitted_block(100, 40, 512) == (112, 48)  # one block, rounded up to 16
    assert sus.fitted_block(5, 5, 128) == (16, 16)
    with rasterio.open(region_copy / "build" / "factors.tif") as src:
        stack = src.read([1]).astype(np.float32)
    model = _HaloModel()
    square = sus.predict_region(model, stack, block=32, progress=False)
    fitted = sus.predict_region(model, stack, block=sus.fitted_block(*stack.shape[1:], 48), progress=False)
    np.testing.assert_array_equal(square, fitted)
