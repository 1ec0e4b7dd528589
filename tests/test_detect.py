"""Detection: seamless tiling, streamed GeoTIFFs, chip folders, real tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

keras = pytest.importorskip("keras")

from slidemap.compute.detection import Detector, blend_window, detect_file, load_detector, n_tiles  # noqa: E402
from slidemap.errors import InputError  # noqa: E402
from slidemap.compute.models.store import save_artefact  # noqa: E402
from slidemap.training.chips import chips_from_folder  # noqa: E402
from slidemap.training.unet import build_unet  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
L4S = DATA / "l4s_divided_rgb_png"
CHITTAGONG = DATA / "s2_landslide_chittagong"


def _card(bands, units="reflectance", halo=16):
    return {"synthetic": True, "bands": bands, "inputs": bands, "units": units, "tile_multiple": 16,
            "halo": halo, "threshold": 0.5,
            "normalisation": {"method": "standardise", "bands": bands, "mean": [0.1] * len(bands),
                              "std": [0.05] * len(bands)}}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    keras.utils.set_random_seed(3)
    model = build_unet(4, base_width=2)
    root = tmp_path_factory.mktemp("models")
    return save_artefact(root, "unet", "tiny", _card(["B2", "B3", "B4", "B8"]), lambda p: model.save(p))


class _Identity:
    """A stand-in network whose output is its first input channel: blending must give the input back."""

    def predict_on_batch(self, x):
        return x[..., :1]


def test_blend_weights_sum_to_one_everywhere():
    det = Detector(_Identity(), _card(["a"]), Path("."), tile=64, overlap=16, batch_size=3)
    rng = np.random.default_rng(0)
    img = (0.1 + 0.05 * rng.normal(size=(1, 150, 131))).astype("float32")
    img[0, 40:50, 60:70] = np.nan
    out = det.predict(img)
    expected = (img[0] - 0.1) / 0.05
    ok = np.isfinite(img[0])
    assert np.isnan(out[~ok]).all()
    np.testing.assert_allclose(out[ok], expected[ok], atol=1e-5)
    w = blend_window(64, 16)
    assert w.max() == 1.0 and w.min() > 0
    assert n_tiles(10, 64, 16) == 1 and n_tiles(150, 64, 16) == 4


def test_tiled_prediction_is_seamless(tiny_model):
    det = load_detector(tiny_model)
    rng = np.random.default_rng(1)
    from scipy import ndimage

    img = np.stack([0.1 + 0.05 * ndimage.gaussian_filter(rng.normal(size=(200, 176)), 3) * 5 for _ in range(4)])
    img = img.astype("float32")
    tiled = Detector(det.model, det.card, det.path, tile=64, overlap=16).predict(img)
    single = Detector(det.model, det.card, det.path, tile=256, overlap=16).predict(img)  # one tile covers it
    assert tiled.shape == (200, 176) and np.isfinite(tiled).all()
    assert np.abs(tiled - single).mean() < 0.02
    # no discontinuity at tile boundaries: jumps across the seams are like jumps elsewhere
    step = 64 - 16
    seams = [k * step - 16 + 64 - 16 // 2 for k in range(4) if 0 < k * step - 16 + 56 < 175]
    jumps = np.abs(np.diff(tiled, axis=1))
    other = np.delete(jumps, seams, axis=1)
    assert jumps[:, seams].mean() < 3 * other.mean() + 1e-6


def _write(path, data, crs="EPSG:32649", transform=None, nodata=None, names=None):
    transform = transform or Affine(10, 0, 500000, 0, -10, 3000000)
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, crs=crs, transform=transform, nodata=nodata) as dst:
        dst.write(data)
        for i, n in enumerate(names or [], start=1):
            dst.set_band_description(i, n)


def test_detect_file_streams_exactly_and_writes_cog(tiny_model, tmp_path):
    det = load_detector(tiny_model)
    rng = np.random.default_rng(2)
    refl = (0.1 + 0.03 * rng.random((4, 300, 270))).astype("float32")
    dn = np.round(refl * 10000).astype("uint16")
    dn[:, :20, :30] = 0  # zero fill = no data
    src = tmp_path / "in.tif"
    _write(src, dn, nodata=None, names=["B2", "B3", "B4", "B8"])
    out = tmp_path / "out.tif"
    small = Detector(det.model, det.card, det.path, tile=64, overlap=16, batch_size=4)
    summary = detect_file(tiny_model, src, out, scale=10000, progress=False, detector=small)
    assert summary["valid_pixels"] == 300 * 270 - 20 * 30
    with rasterio.open(out) as r:
        assert r.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert r.dtypes[0] == "float32" and r.shape == (300, 270) and r.crs.to_epsg() == 32649
        prob = r.read(1)
    expected_in = (dn / 10000).astype("float32")
    expected_in[:, :20, :30] = np.nan
    np.testing.assert_allclose(prob, small.predict(expected_in), atol=1e-6, equal_nan=True)
    assert np.isnan(prob[:20, :30]).all() and np.isfinite(prob[20:]).all()


def test_detect_refuses_missing_bands(tiny_model, tmp_path):
    src = tmp_path / "rgb.tif"
    _write(src, np.ones((3, 32, 32), "float32"), names=["B2", "B3", "B4"])
    with pytest.raises(InputError, match="band"):
        detect_file(tiny_model, src, tmp_path / "o.tif", progress=False)


def test_chip_folder_detection_writes_pngs(tmp_path):
    from PIL import Image

    keras.utils.set_random_seed(0)
    model = build_unet(3, base_width=2)
    path = save_artefact(tmp_path, "unet", "rgb", _card(["R", "G", "B"], units="display8"), lambda p: model.save(p))
    (tmp_path / "chips" / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k in range(3):
        rgba = np.concatenate([rng.integers(0, 255, (32, 32, 3)), np.full((32, 32, 1), 255)], -1).astype("uint8")
        Image.fromarray(rgba).save(tmp_path / "chips" / "images" / f"image_{k}.png")
    summary = detect_file(path, tmp_path / "chips", tmp_path / "out", progress=False)
    assert summary["chips"] == 3
    for k in range(3):
        arr = np.asarray(Image.open(tmp_path / "out" / f"image_{k}.png"))
        assert arr.dtype == np.uint8 and arr.shape == (32, 32)


@pytest.mark.skipif(not L4S.is_dir(), reason="../shared/data/l4s_divided_rgb_png not present")
def test_reads_l4s_chip_folder_as_is():
    chips = chips_from_folder(L4S)
    assert len(chips) == 760 and chips.images.shape[1:] == (128, 128, 3)  # RGBA, constant alpha -> RGB
    assert chips.bands == ["R", "G", "B"] and chips.source["units"] == "display8"
    assert set(np.unique(chips.masks)) == {0, 1}
    frac = float((chips.masks == 1).mean())
    assert 0.01 < frac < 0.2
    # index blocks are contiguous in file index
    assert np.all(np.diff(chips.blocks) >= 0)


@pytest.mark.skipif(not CHITTAGONG.is_dir(), reason="../shared/data/s2_landslide_chittagong not present")
def test_detect_on_real_chittagong_tile(tiny_model, tmp_path):
    tile = CHITTAGONG / "images" / "000000000000.tif"
    out = tmp_path / "ctg.tif"
    summary = detect_file(tiny_model, tile, out, band_order=["B4", "B3", "B2", "B8"], scale=10000, progress=False)
    with rasterio.open(tile) as s, rasterio.open(out) as r:
        assert r.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert r.crs == s.crs and r.transform == s.transform and r.shape == s.shape
        prob = r.read(1)
        zero = np.all(s.read() == 0, axis=0)
    assert np.isnan(prob[zero]).all() and np.isfinite(prob[~zero]).all()
    assert summary["bands"] == {"B2": 3, "B3": 2, "B4": 1, "B8": 4}


def test_cli_detect_and_clear_errors(tiny_model, tmp_path, capsys):
    from slidemap.cli import main

    src = tmp_path / "in.tif"
    _write(src, np.full((4, 40, 40), 0.1, "float32"), names=["B2", "B3", "B4", "B8"])
    assert main(["detect", str(tiny_model), str(src), str(tmp_path / "o.tif"), "--no-progress"]) == 0
    assert (tmp_path / "o.tif").is_file()
    assert main(["detect", str(tmp_path / "nomodel"), str(src), str(tmp_path / "p.tif")]) == 2
    assert "not a slidemap model folder" in capsys.readouterr().err
    assert main(["train", "unet", "--chips", str(tmp_path)]) == 2
    assert main(["train", "unet", "--chips", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "images/" in capsys.readouterr().err


def test_inventory_masks_exclusions_and_scores_objects(tiny_model, tmp_path):
    import json

    import geopandas as gpd
    from rasterio import features
    from shapely.geometry import box

    from slidemap.compute.inventory_map import map_inventory

    build = tmp_path / "build"
    build.mkdir()
    rng = np.random.default_rng(5)
    transform = Affine(10, 0, 500000, 0, -10, 3000000)
    img = (0.1 + 0.05 * rng.normal(size=(4, 96, 96))).astype("float32")
    _write(build / "imagery.tif", img, transform=transform, names=["B2", "B3", "B4", "B8"])
    excl = np.zeros((1, 96, 96), "uint8")
    excl[:, :, :48] = 1  # left half is "road/water/settlement"
    _write(build / "exclusion_imagery.tif", excl, transform=transform)
    lab = np.zeros((1, 96, 96), "uint8")
    lab[:, 60:70, 60:70] = 1
    _write(build / "labels_imagery.tif", lab, transform=transform)
    inv = gpd.GeoDataFrame({"label": [True, False]}, geometry=[box(500600, 2999300, 500700, 2999400),
                                                              box(500100, 2999100, 500120, 2999120)], crs="EPSG:32649")
    inv.to_file(build / "inventory.gpkg", layer="landslides")
    (build / "factors.json").write_text(json.dumps({"synthetic": True}))
    result = map_inventory(tmp_path, model_dir=tiny_model, threshold=0.0, min_pixels=1, progress=False, run_id="r")
    # threshold 0 flags everything: one area, the right half, kept after the exclusion
    assert result["excluded_pixels"] == 96 * 48 and result["areas_kept"] == 1
    areas = gpd.read_file(result["gpkg"])
    assert {"area", "mean_probability", "pixels"} <= set(areas.columns)
    assert areas["area"].sum() == pytest.approx(96 * 48 * 100)
    burnt = features.rasterize(areas.geometry, out_shape=(96, 96), transform=transform)
    assert not (burnt.astype(bool) & excl[0].astype(bool)).any()
    obj = result["object_level"]
    assert obj["known_landslides"] == 1 and obj["recall"] == 1.0 and obj["precision"] == 1.0
    report = json.loads((tmp_path / "reports" / "inventory" / "r" / "report.json").read_text())
    assert report["kind"] == "inventory" and report["synthetic"] is True
