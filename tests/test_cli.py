"""CLI success paths as a user runs them, on the small prepared SYNTHETIC region of conftest.py:
``train lsm`` -> ``map susceptibility``, ``train unet`` -> ``inventory``, and ``status --json`` (with
the ``device`` TensorFlow really uses). Outputs are checked against references computed here another
way: the map against one forward pass of the saved network over the whole region (the CLI maps it in
many small blocks), the inventory's polygons against the probability raster they were drawn from.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio import features
from scipy import ndimage

from slidemap.cli import main
from slidemap.compute.models.store import list_models, read_card


@pytest.fixture(scope="module")
def region(prepared_region, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "region"
    shutil.copytree(prepared_region, out, ignore=shutil.ignore_patterns("cache", "models", "reports", "maps"))
    return out


@pytest.fixture(scope="module")
def lsm_model(region) -> Path:
    # the quick preset, shortened further: this checks the commands, test_lsm.py the training
    args = ["train", "lsm", str(region), "--preset", "quick", "--models", "multiscale", "--epochs", "2",
            "--set", "cv_below=0", "--set", "fast_steps=30", "--set", "fast_cells=800", "--set", "agreement_cells=400",
            "--quiet"]
    assert main(args) == 0
    window = [m for m in list_models(region) if m.kind == "lsm" and m.name == "multiscale"]
    assert len(window) == 1
    return window[0].path


@pytest.fixture(scope="module")
def detector(region) -> Path:
    args = ["train", "unet", str(region), "--preset", "quick", "--search-iterations", "0", "--epochs", "2",
            "--splits", "blocked", "--chip", "64", "--learning-rate", "0.01", "--quiet"]
    assert main(args) == 0
    unets = [m for m in list_models(region) if m.kind == "unet"]
    assert len(unets) == 1
    return unets[0].path


def whole_region_pass(model_dir: Path, region: Path, mode: str) -> np.ndarray:
    """The model over the whole NaN-padded factor stack in one block: what the CLI's map, computed in
    many small blocks with their halos, must equal."""
    from slidemap.compute.maps.susceptibility import load_susceptibility

    sm = load_susceptibility(model_dir, mode)
    with rasterio.open(region / "build" / "factors.tif") as src:
        names = list(src.descriptions)
        stack = src.read([names.index(n) + 1 for n in sm.factor_names]).astype(np.float32)
    h = sm.halo
    return sm.predict_block(np.pad(stack, ((0, 0), (h, h), (h, h)), constant_values=np.nan))


@pytest.mark.parametrize("mode", ["dense"])  # the fast form (the window path is test_lsm.py's, and slow)
def test_map_susceptibility(region, lsm_model, capsys, mode):
    capsys.readouterr()
    code = main(["map", "susceptibility", str(region), "--mode", mode, "--model", "multiscale", "--block", "32",
                 "--out", str(region / "maps" / f"{mode}.tif"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    path = {"dense": "fast form", "window": "window path"}[mode]
    assert out.startswith(f"SYNTHETIC susceptibility map (multiscale {read_card(lsm_model)['version']}, {path}):")
    prob_path = Path(re.search(r"probability: (\S+)", out).group(1))
    classes_path = Path(re.search(r"classes: +(\S+)", out).group(1))
    assert prob_path == (region / "maps" / f"{mode}.tif").resolve()
    with rasterio.open(region / "build" / "factors.tif") as ref, rasterio.open(prob_path) as src, \
            rasterio.open(classes_path) as cls:
        assert (src.crs, src.transform, src.shape) == (ref.crs, ref.transform, ref.shape)
        assert (cls.crs, cls.transform, cls.shape) == (ref.crs, ref.transform, ref.shape)
        prob, classes = src.read(1), cls.read(1)
        assert src.tags()["synthetic"] == "true" and src.overviews(1)
    # blocks of 32 cells with their halos give the model's single whole-region answer
    expected = whole_region_pass(lsm_model, region, mode)
    np.testing.assert_array_equal(np.isnan(prob), np.isnan(expected))
    np.testing.assert_allclose(prob, expected, atol=2e-5, equal_nan=True)
    cells = int(re.search(r"\): (\d+) cells", out).group(1))
    assert cells == np.isfinite(prob).sum() > 0.9 * prob.size
    # five classes in probability order, 0 where there is no probability
    valid = np.isfinite(prob)
    assert set(np.unique(classes[valid])) <= {1, 2, 3, 4, 5} and (classes[~valid] == 0).all()
    tops = [prob[valid & (classes == k)].max() for k in range(1, 6) if (valid & (classes == k)).any()]
    bottoms = [prob[valid & (classes == k)].min() for k in range(1, 6) if (valid & (classes == k)).any()]
    assert all(top <= low for top, low in zip(tops[:-1], bottoms[1:], strict=True))


def test_inventory(region, detector, capsys):
    capsys.readouterr()
    card = read_card(detector)
    code = main(["inventory", str(region), "--model", str(detector), "--min-pixels", "3", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    kept, found, gpkg = re.search(r"areas: (\d+) kept of (\d+) detected -> (\S+)", out).groups()
    report_dir = Path(re.search(r"report: (\S+)/report.md", out).group(1))
    report = json.loads((report_dir / "report.json").read_text())
    assert report["kind"] == "inventory" and report["synthetic"] is True
    assert report["areas_kept"] == int(kept) and report["areas_detected"] == int(found)
    assert report["model_versions"] == {card["name"]: card["version"]}
    frame = gpd.read_file(gpkg, layer="landslides")
    assert len(frame) == int(kept)
    with rasterio.open(report_dir / "probability.tif") as src, rasterio.open(region / "build" / "imagery.tif") as img:
        assert (src.crs, src.transform, src.shape) == (img.crs, img.transform, img.shape)
        prob, transform, shape = src.read(1), src.transform, src.shape
        assert frame.crs == src.crs
    # the polygons are exactly the connected above-threshold areas of >= 3 pixels, off roads/water/towns
    above = np.isfinite(prob) & (prob >= report["threshold"])
    exclusion = region / "build" / "exclusion_imagery.tif"
    if exclusion.is_file():
        with rasterio.open(exclusion) as src:
            above &= src.read(1) != 1
    labels, n = ndimage.label(above, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel())
    big = (sizes >= 3) & (np.arange(len(sizes)) > 0)
    expected = big[labels]
    drawn = features.rasterize(((g, 1) for g in frame.geometry), out_shape=shape, transform=transform,
                               fill=0, dtype="uint8").astype(bool) if len(frame) else np.zeros(shape, bool)
    np.testing.assert_array_equal(drawn, expected)
    assert int(found) == n and int(kept) == int(big.sum())
    assert frame["area"].sum() == pytest.approx(expected.sum() * abs(transform.a * transform.e))
    assert int(kept) > 0, "a detector trained on the planted landslides finds some of them"


def test_status_json_reports_the_device(region, lsm_model):
    """The console script, as a user runs it: `slidemap status --json` with the `device` key."""
    exe = shutil.which("slidemap", path=str(Path(sys.executable).parent))
    assert exe is not None
    proc = subprocess.run([exe, "status", str(region), "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "oneDNN" not in proc.stderr and "cuda" not in proc.stderr.lower()  # start-up noise is silenced
    status = json.loads(proc.stdout)
    device = status["device"]
    from slidemap.compute.models.runtime import device_summary

    here = device_summary()
    assert device["device"] == here["device"] and device["placement"] == here["placement"]
    assert device["tensorflow"] == here["tensorflow"] and device["distributions"] == here["distributions"]
    assert device["xla"]["setting"] == "auto" and device["mixed_precision"] == "float32"
    assert str(lsm_model.resolve()) in [m["path"] for m in status["models"]]
    from slidemap.compute.models.status import format_status

    assert f"TensorFlow {here['tensorflow']} on {here['device']}" in format_status(status)
