"""Detection: seamless tiling, streamed GeoTIFFs, normalisation reapplied, masks at the model's
threshold, chip folders, model choice by name or version, memory bounds, real tiles."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import rasterio
from affine import Affine

from slidemap.compute.maps import detection
from slidemap.compute.maps.detection import Detector, blend_window, detect_file, load_detector, n_tiles
from slidemap.compute.maps.image_norm import BandStats, image_stats, robust_spec
from slidemap.compute.models.store import save_artefact
from slidemap.errors import InputError, ModelError
from slidemap.training.chips import chips_from_folder
from slidemap.training.unet import build_unet

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


def _contrasty_model(seed: int = 3, image: np.ndarray | None = None):
    """A tiny U-Net whose output varies strongly over an image (the last layer's weights scaled up
    and centred on the image's features), so that a tiling that drops context or blends wrongly shows."""
    keras.utils.set_random_seed(seed)
    model = build_unet(4, base_width=2)
    layer = model.get_layer("probability")
    kernel, bias = layer.get_weights()
    image = _smooth_image() if image is None else image
    x = (np.moveaxis(image[:, :192, :176], 0, -1)[None] - 0.1) / 0.05  # the _card's standardisation (16-px sides)
    features = np.asarray(keras.Model(model.inputs[0], layer.input)(x))
    pre = features @ kernel[0, 0]
    gain = 3.0 / max(float(pre.std()), 1e-6)
    layer.set_weights([kernel * gain, -gain * np.array([pre.mean()], dtype="float32")])
    return model


def _smooth_image(seed: int = 1, shape=(200, 176)) -> np.ndarray:
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    return np.stack([0.1 + 0.25 * ndimage.gaussian_filter(rng.normal(size=shape), 3) for _ in range(4)]).astype("float32")


def test_tiled_prediction_is_seamless_on_a_model_with_strong_output():
    model = _contrasty_model()
    card = _card(["B2", "B3", "B4", "B8"])
    img = _smooth_image()
    single = Detector(model, card, Path("."), tile=256, overlap=16).predict(img)  # one tile covers it
    assert single.std() > 0.15 and single.min() < 0.2 and single.max() > 0.8  # a non-trivial output
    tiled = Detector(model, card, Path("."), tile=64, overlap=16).predict(img)
    assert tiled.shape == (200, 176) and np.isfinite(tiled).all()
    assert np.abs(tiled - single).mean() < 0.02
    # the same check catches a broken tiling: tiles without overlap lose their context at every edge
    broken = Detector(model, card, Path("."), tile=64, overlap=0).predict(img)
    assert np.abs(broken - single).mean() > 0.02
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
    assert "not a model folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["detect", str(tmp_path / "empty"), str(src), str(tmp_path / "p.tif")]) == 2
    assert "not a slidemap model folder" in capsys.readouterr().err
    assert main(["train", "unet", "--chips", str(tmp_path)]) == 2
    assert main(["train", "unet", "--chips", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "images/" in capsys.readouterr().err


def test_inventory_masks_exclusions_and_scores_objects(tiny_model, tmp_path):
    import json

    import geopandas as gpd
    from rasterio import features
    from shapely.geometry import box

    from slidemap.compute.maps.inventory import map_inventory

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
    areas = gpd.read_file(result["gpkg"], layer="landslides")
    assert {"area", "mean_probability", "pixels"} <= set(areas.columns)
    assert areas["area"].sum() == pytest.approx(96 * 48 * 100)
    burnt = features.rasterize(areas.geometry, out_shape=(96, 96), transform=transform)
    assert not (burnt.astype(bool) & excl[0].astype(bool)).any()
    obj = result["object_level"]
    assert obj["known_landslides"] == 1 and obj["recall"] == 1.0 and obj["precision"] == 1.0
    report = json.loads((tmp_path / "reports" / "inventory" / "r" / "report.json").read_text())
    assert report["kind"] == "inventory" and report["synthetic"] is True


# ---- normalisation recorded in the card and reapplied -------------------------------------------
def _robust_card(bands, reference: BandStats, threshold=0.5, skill=None, scope="scene"):
    card = {"synthetic": True, "bands": bands, "inputs": bands, "units": "reflectance", "tile_multiple": 16,
            "halo": 16, "threshold": threshold, "normalisation": robust_spec(bands, scope, reference, "reflectance")}
    if skill is not None:
        card["skill"] = skill
        card["run_id"] = "run-1"
    return card


@pytest.fixture(scope="module")
def robust_model(tmp_path_factory):
    model = _contrasty_model(5)
    root = tmp_path_factory.mktemp("robust")
    reference = BandStats((0.0,) * 4, (1.0,) * 4)  # deliberately wrong for reflectance: detect must not use it
    return save_artefact(root, "unet", "robust", _robust_card(["B2", "B3", "B4", "B8"], reference, 0.4),
                         lambda p: model.save(p))


def test_detect_reapplies_the_recorded_normalisation_per_scene(robust_model, tmp_path):
    det = load_detector(robust_model)
    assert det.normalisation["method"] == "robust" and det.normalisation["scope"] == "scene"
    img = _smooth_image(7, (96, 80))
    refl = tmp_path / "refl.tif"
    dn = tmp_path / "dn.tif"
    _write(refl, img, names=["B2", "B3", "B4", "B8"])
    _write(dn, (img * 10000).astype("float32"), names=["B2", "B3", "B4", "B8"])  # DN-like scale
    detect_file(robust_model, refl, tmp_path / "p1.tif", progress=False)
    detect_file(robust_model, dn, tmp_path / "p2.tif", progress=False)
    with rasterio.open(tmp_path / "p1.tif") as a, rasterio.open(tmp_path / "p2.tif") as b:
        p1, p2 = a.read(1), b.read(1)
        assert a.tags()["normalisation"] == "robust" and float(a.tags()["threshold"]) == 0.4
    # the scene's own percentiles: DN and reflectance give the same probabilities ...
    np.testing.assert_allclose(p1, p2, atol=2e-3)
    # ... which are exactly what the detector gives with that scene's statistics
    expected = det.for_scene(image_stats(img)).predict(img)
    np.testing.assert_allclose(p1, expected, atol=1e-5)
    # and not what the (wrong) training reference gives
    assert np.abs(det.predict(img) - p1).mean() > 0.05


def test_chip_scope_normalises_each_chip_on_its_own(tmp_path):
    keras.utils.set_random_seed(0)
    rgb = build_unet(3, base_width=2)
    path = save_artefact(tmp_path, "unet", "chipwise", _robust_card(["R", "G", "B"], BandStats((0,) * 3, (1,) * 3),
                                                                  scope="chip"), lambda p: rgb.save(p))
    det = load_detector(path)
    rng = np.random.default_rng(0)
    chip = rng.integers(0, 200, (3, 32, 32)).astype("float32")
    a = det.predict_chips(chip[None])[0]
    b = det.predict_chips((chip * 0.5 + 20)[None])[0]  # another stretch of the same chip
    np.testing.assert_allclose(a, b, atol=1e-4)


def test_a_scene_scope_chip_folder_is_normalised_by_the_cards_reference(robust_model, tmp_path):
    """Training normalised every chip of a scene-scope folder by the fit chips' pooled statistics
    (the card's reference); `detect` on a chip folder does the same, not each chip's own percentiles."""
    from PIL import Image

    det = load_detector(robust_model)
    chip = _smooth_image(9, (64, 64))
    (tmp_path / "chips" / "images").mkdir(parents=True)
    _write(tmp_path / "chips" / "images" / "c.tif", chip, names=["B2", "B3", "B4", "B8"])
    detect_file(robust_model, tmp_path / "chips", tmp_path / "out", progress=False)
    got = np.asarray(Image.open(tmp_path / "out" / "c.png")).astype(int)
    by_reference = np.round(det.predict_chips(chip[None])[0] * 255).astype(int)
    by_chip = np.round(det.for_scene(image_stats(chip)).predict_chips(chip[None])[0] * 255).astype(int)
    assert np.abs(got - by_reference).max() <= 1
    assert np.abs(by_chip - by_reference).mean() > 5  # the two rules differ, so the test can tell them apart


def test_a_file_with_unnamed_extra_bands_names_the_fix(robust_model, tmp_path):
    (tmp_path / "chips" / "images").mkdir(parents=True)
    _write(tmp_path / "chips" / "images" / "c.tif", np.ones((5, 32, 32), "float32"))
    with pytest.raises(InputError, match="5 unnamed bands.*--band-order"):
        detect_file(robust_model, tmp_path / "chips", tmp_path / "out", progress=False)


def test_mask_is_cut_at_the_models_threshold(robust_model, tmp_path):
    img = _smooth_image(8, (64, 72))
    img[:, :5, :7] = np.nan
    src = tmp_path / "in.tif"
    _write(src, img, names=["B2", "B3", "B4", "B8"], nodata=float("nan"))
    summary = detect_file(robust_model, src, tmp_path / "p.tif", progress=False, mask=True)
    assert summary["mask"] == str(tmp_path / "p_mask.tif") and summary["threshold"] == 0.4
    with rasterio.open(tmp_path / "p.tif") as p, rasterio.open(tmp_path / "p_mask.tif") as m:
        prob, cut = p.read(1), m.read(1)
        assert m.tags()["threshold"] == "0.4" and m.nodata == 255 and m.dtypes[0] == "uint8"
    ok = np.isfinite(prob)
    np.testing.assert_array_equal(cut[ok], (prob[ok] >= 0.4).astype("uint8"))
    assert (cut[~ok] == 255).all() and (~ok).sum() == 35
    assert 0 < summary["pixels_above_threshold"] == int((cut == 1).sum())


# ---- which detector: by name, by version, the region's default ---------------------------------
def _skill(value, has):
    return {"metric": "f1", "value": value, "ci95": [value - 0.1, value + 0.1], "has_skill": has}


def test_detect_and_inventory_resolve_name_version_and_default(tmp_path, capsys):
    from slidemap.cli import main
    from slidemap.compute.models.select import record_default, resolve_model

    region = tmp_path / "region"
    ref = BandStats((0.1,) * 4, (0.05,) * 4)
    keras.utils.set_random_seed(1)
    a_model, b_model, c_model = (build_unet(4, base_width=2) for _ in range(3))
    good = save_artefact(region / "models", "unet", "attention-unet", _robust_card(["B2", "B3", "B4", "B8"], ref, 0.3,
                         _skill(0.7, True)), lambda p: a_model.save(p))
    plain = save_artefact(region / "models", "unet", "unet-bce", _robust_card(["B2", "B3", "B4", "B8"], ref, 0.6,
                          _skill(0.6, True)), lambda p: b_model.save(p))
    noskill = save_artefact(region / "models", "unet", "lucky", _robust_card(["B2", "B3", "B4", "B8"], ref, 0.2,
                            _skill(0.9, False)), lambda p: c_model.save(p))
    record_default(region, "detection", resolve_model(region, "detection", "attention-unet"), "best with skill")
    src = tmp_path / "in.tif"
    _write(src, _smooth_image(9, (48, 48)), names=["B2", "B3", "B4", "B8"])
    runs = {"default": [str(src), str(tmp_path / "d.tif"), "--region", str(region)],
            "name": [str(src), str(tmp_path / "n.tif"), "--region", str(region), "--model", "unet-bce"],
            "version": ["lucky", str(src), str(tmp_path / "v.tif"), "--region", str(region)],
            "prefix": [str(src), str(tmp_path / "p.tif"), "--region", str(region), "--model",
                       json.loads((plain / "card.json").read_text())["version"][:8]],
            "folder": [str(good), str(src), str(tmp_path / "f.tif")]}
    used, warned = {}, {}
    for key, argv in runs.items():
        assert main(["detect", *argv, "--no-progress"]) == 0, key
        captured = capsys.readouterr()
        used[key] = json.loads(captured.out)["model_dir"]
        warned[key] = "NO SKILL" in captured.err
    assert warned == {"default": False, "name": False, "version": True, "prefix": False, "folder": False}
    assert used["default"] == str(good) and used["folder"] == str(good)  # the best with skill, not "lucky"
    assert used["name"] == str(plain) and used["prefix"] == str(plain) and used["version"] == str(noskill)
    with rasterio.open(tmp_path / "n.tif") as r:
        assert r.tags()["threshold"] == "0.6"  # the chosen model's own threshold
    assert main(["detect", str(src), str(tmp_path / "x.tif"), "--region", str(region), "--model", "nosuch"]) == 2
    assert "no detection model 'nosuch'" in capsys.readouterr().err
    assert main(["detect", "nosuch", str(src), str(tmp_path / "x.tif")]) == 2
    assert "--region" in capsys.readouterr().err
    # the inventory uses the same resolution and the model's own threshold
    from slidemap.compute.maps.inventory import pick_detector

    assert pick_detector(region, None) == good and pick_detector(region, "unet-bce") == plain
    record_default(region, "detection", None, "latest run: no skill")
    with pytest.raises(ModelError, match="no detection model has skill"):
        pick_detector(region, None)


# ---- memory ---------------------------------------------------------------------------------------
class _OutOfMemory(Exception):
    """Stands in for TensorFlow's ResourceExhaustedError (matched by name)."""


_OutOfMemory.__name__ = "ResourceExhaustedError"


class _SmallDevice:
    """A network that runs out of memory on batches larger than ``limit``."""

    def __init__(self, limit):
        self.limit, self.calls = limit, []

    def predict_on_batch(self, x):
        self.calls.append(len(x))
        if len(x) > self.limit:
            raise _OutOfMemory("OOM when allocating tensor with shape [8,256,256,16]")
        return x[..., :1]


def test_out_of_memory_halves_the_batch_and_retries():
    fake = _SmallDevice(limit=2)
    det = Detector(fake, _card(["a"]), Path("."), tile=32, overlap=8, batch_size=8)
    x = np.arange(7 * 16 * 16, dtype="float32").reshape(7, 16, 16, 1)
    out = det.predict_batch(x)
    np.testing.assert_array_equal(out, x[..., 0])  # every tile predicted once, in order
    assert det.batch_size == 2 and fake.calls[:3] == [7, 4, 2]
    never = Detector(_SmallDevice(limit=0), _card(["a"]), Path("."), batch_size=4)
    with pytest.raises(ModelError, match="out of memory"):
        never.predict_batch(x[:2])
    other = Detector(type("Broken", (), {"predict_on_batch": lambda self, x: 1 / 0})(), _card(["a"]), Path("."))
    with pytest.raises(ZeroDivisionError):  # other errors are not mistaken for memory
        other.predict_batch(x[:1])


def test_detector_cache_is_a_small_lru(tmp_path, monkeypatch):
    monkeypatch.setattr(detection, "_cache", type(detection._cache)())
    paths = []
    for k in range(detection.CACHE_SIZE + 2):
        keras.utils.set_random_seed(k)
        model = build_unet(4, base_width=1)
        paths.append(save_artefact(tmp_path, "unet", f"m{k}", _card(["B2", "B3", "B4", "B8"]), lambda p, m=model: m.save(p)))
    first = load_detector(paths[0])
    for p in paths[1:]:
        load_detector(p)
    keys = detection.cached_detectors()
    assert len(keys) == detection.CACHE_SIZE and str(paths[0].resolve()) not in [k[0] for k in keys]
    assert load_detector(paths[-1]) is load_detector(paths[-1])  # a hit returns the same object
    assert load_detector(paths[0]) is not first  # evicted, loaded again


# ---- the block engine's and Dask's ways in ------------------------------------------------------


def test_lattice_chunks_reproduce_the_streamed_whole_image_exactly(tiny_model):
    det = load_detector(tiny_model)
    image = _smooth_image(4, (500, 560))
    image[:, 100:104, 30:50] = np.nan
    whole = det.predict(image)
    out = np.full(whole.shape, -1.0, dtype=np.float32)
    chunks = det.chunks(*whole.shape, size=1)
    assert len(chunks) == 9

    def read(rows, cols):
        return image[:, rows][:, :, cols]

    for rows, cols in chunks:
        r0, c0, prob = det.predict_chunk(read, *whole.shape, rows, cols)
        out[r0 : r0 + prob.shape[0], c0 : c0 + prob.shape[1]] = prob
    np.testing.assert_array_equal(out, whole)  # every pixel written once, NaN where NaN


def test_block_engine_runs_one_network_pass_per_block_close_to_the_whole_image(tiny_model, tmp_path):
    from slidemap.compute.maps.blocks import BlockEngine, InferenceExecutor, detector_runner
    from slidemap.compute.region.grid import Grid

    det = load_detector(tiny_model)
    image = _smooth_image(5, (300, 280))
    path = tmp_path / "img.tif"
    _write(path, image, names=["B2", "B3", "B4", "B8"])
    runner = detector_runner(det, [1, 2, 3, 4])
    assert runner.edge == "reflect" and runner.block_factor == det.block_factor >= 2 and "pass1" in runner.layout
    calls = []
    real = det.predict_batch
    det.predict_batch = lambda x: calls.append(x.shape) or real(x)
    try:
        grid = Grid.from_raster(path)
        eng = BlockEngine("detection", path, grid, runner, tmp_path / "store", InferenceExecutor(1, 64), block_size=128)
        eng.ensure([(r, c) for r in range(eng.n_rows) for c in range(eng.n_cols)])
    finally:
        del det.predict_batch
    # one pass per block: 128 + 2 x 16 halo (edge blocks: their cells + halo, to the size multiple)
    assert len(calls) == eng.n_rows * eng.n_cols and calls[0] == (1, 160, 160, 4)
    mosaic, _, complete = eng.mosaic(grid.bounds, 0)
    assert complete
    got = mosaic[:300, :280]
    whole = det.predict(image)
    assert np.isfinite(got).all()
    assert np.abs(got - whole).max() < 0.05
