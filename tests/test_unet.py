"""Attention U-Net: shapes, attention gates, search records, training beats a constant, artefact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

keras = pytest.importorskip("keras")

from slidemap.errors import ModelError  # noqa: E402
from slidemap.training import unet_report, unet_train  # noqa: E402
from slidemap.training.chips import blocked_split, chips_from_region, fit_normalisation, normalise  # noqa: E402
from slidemap.training.search import bayesian_search  # noqa: E402
from slidemap.training.unet import attention_maps, build_unet, flops_per_tile  # noqa: E402


@pytest.mark.parametrize("tile", [16, 48, 64, 128])
def test_output_shape_for_tile_sizes(tile):
    model = build_unet(4, base_width=2)
    out = model(np.random.default_rng(0).random((2, tile, tile, 4)).astype("float32"))
    assert tuple(out.shape) == (2, tile, tile, 1)
    values = np.asarray(out)
    assert values.min() >= 0 and values.max() <= 1


def test_rgb_and_rectangular_tiles():
    model = build_unet(3, base_width=2)
    assert tuple(model(np.zeros((1, 32, 80, 3), "float32")).shape) == (1, 32, 80, 1)


def test_attention_gates_on_every_skip_and_in_unit_range():
    keras.utils.set_random_seed(0)
    model = build_unet(4, base_width=4)
    maps = attention_maps(model)(np.random.default_rng(1).normal(size=(2, 64, 64, 4)).astype("float32"))
    assert len(maps) == 4  # one gate per skip connection
    sizes = sorted(m.shape[1] for m in maps)
    assert sizes == [4, 8, 16, 32]  # computed at the coarse (gating) scale of each level
    for m in maps:
        a = np.asarray(m)
        assert a.shape[-1] == 1 and a.min() >= 0.0 and a.max() <= 1.0
    plain = build_unet(4, base_width=4, attention=False)
    with pytest.raises(ValueError):
        attention_maps(plain)


def test_flops_scale_with_tile_area():
    model = build_unet(4, base_width=4)
    f64, f128 = flops_per_tile(model, 64), flops_per_tile(model, 128)
    assert f64 > 0 and f128 / f64 == pytest.approx(4.0, rel=0.01)


def test_search_records_every_iteration():
    seen = []
    best, records = bayesian_search(lambda hp: 1.0 - abs(hp.alpha - 0.3) - 0.1 * hp.gamma, 3, seed=0,
                                    on_iteration=seen.append)
    assert [r["iteration"] for r in records] == [1, 2, 3] and len(seen) == 3
    for r in records:
        assert set(r) == {"iteration", "optimizer", "learning_rate", "alpha", "gamma", "score", "proposed_by"}
        assert r["optimizer"] in ("adam", "sgd") and r["learning_rate"] in (1e-2, 1e-3, 1e-4)
        assert 0 <= r["alpha"] <= 1 and 0 <= r["gamma"] <= 5
    assert best.alpha == max(records, key=lambda r: r["score"])["alpha"]
    # the paper's set first, then a random start, then at least one point chosen by EI
    assert [r["proposed_by"] for r in records] == [
        "paper's best set (seed)", "random (initial design)", "GP + expected improvement"]


def _tiny_region(root: Path, size: int = 192, seed: int = 0) -> Path:
    """A build folder with 4-band imagery and a landslide mask: bare, bright, low-NIR scars."""
    rng = np.random.default_rng(seed)
    build = root / "build"
    build.mkdir(parents=True)
    yy, xx = np.mgrid[0:size, 0:size]
    mask = np.zeros((size, size), np.uint8)
    for _ in range(14):
        cy, cx, r = rng.integers(8, size - 8), rng.integers(8, size - 8), rng.integers(3, 7)
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    base = np.stack([0.04, 0.06, 0.05, 0.30])[:, None, None] + rng.normal(0, 0.01, (4, size, size))
    scar = np.array([0.12, 0.14, 0.16, 0.15])[:, None, None]
    img = np.where(mask[None] == 1, scar + rng.normal(0, 0.01, (4, size, size)), base).astype("float32")
    img[:, :6, :6] = np.nan
    transform = Affine(10, 0, 500000, 0, -10, 3000000)
    prof = dict(driver="GTiff", width=size, height=size, crs="EPSG:32649", transform=transform)
    with rasterio.open(build / "imagery.tif", "w", count=4, dtype="float32", nodata=np.nan, **prof) as dst:
        dst.write(img)
        for i, b in enumerate(["B2", "B3", "B4", "B8"], start=1):
            dst.set_band_description(i, b)
    with rasterio.open(build / "labels_imagery.tif", "w", count=1, dtype="uint8", **prof) as dst:
        dst.write(mask[None])
    (build / "factors.json").write_text(json.dumps({"synthetic": True}))
    return root


def test_chips_from_region_and_blocked_split(tmp_path):
    chips = chips_from_region(_tiny_region(tmp_path), size=32, stride=16)
    assert chips.images.shape[1:] == (32, 32, 4) and chips.bands == ["B2", "B3", "B4", "B8"]
    assert chips.synthetic and set(np.unique(chips.masks)) <= {0, 1, 255}
    assert (chips.masks[0][:6, :6] == 255).all()  # NaN imagery -> ignored label
    train, test = blocked_split(chips, 0.2, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(test) > 0
    fp = chips.footprints
    for i in train:  # no training chip overlaps a test chip
        for j in test:
            assert not (fp[i, 0] < fp[j, 2] and fp[j, 0] < fp[i, 2] and fp[i, 1] < fp[j, 3] and fp[j, 1] < fp[i, 3])
    norm = fit_normalisation(chips.subset(train))
    x = normalise(chips.images, norm)
    assert np.isfinite(x).all() and abs(float(np.mean(x[train]))) < 0.1


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = _tiny_region(tmp_path_factory.mktemp("region"))
    chips = chips_from_region(root, size=32, stride=32)
    cfg = unet_train.preset("quick", base_width=4, epochs=6, batch_size=4, patience=0, search_iterations=0,
                            optimizer="adam", learning_rate=1e-2, alpha=0.75, gamma=1.0, negatives_ratio=None)
    return root, unet_train.run(chips, cfg, progress=False)


def test_tiny_model_beats_constant_predictor(trained):
    _, result = trained
    for t in result.trained:
        m = t.metrics
        prevalence = m["landslide_pixels"] / m["pixels"]
        constant_f1 = 2 * prevalence / (1 + prevalence)  # predicting landslide everywhere
        assert m["f1"] > constant_f1 + 0.2, (t.split, m)
        assert m["pr_auc"] > prevalence + 0.2
        assert m["miou"] > 0.5


def test_report_and_card_round_trip_and_hash_refusal(trained):
    from slidemap.compute.detection import load_detector
    from slidemap.compute.models.store import read_card

    root, result = trained
    path = unet_train.save_model(result, root / "models", "attention-unet")
    assert path.parent == root / "models" / "unet"
    card = read_card(path)
    assert card["bands"] == ["B2", "B3", "B4", "B8"] and card["tile_multiple"] == 16
    assert card["normalisation"]["fitted_on"] == "training split only"
    assert card["synthetic"] is True and len(card["training_data"]["fingerprint"]) == 64
    assert "blocked" in card["metrics"] and card["hyperparameters"]["loss"] == "focal"
    det = load_detector(path)
    assert det.version == card["version"] and det.bands == card["bands"]
    report = unet_report.build_report(result, {"attention-unet": det.version}, {"path": str(root)})
    out = unet_report.write_report(report, root / "reports" / "unet" / "r1", result)
    saved = json.loads((out / "report.json").read_text())
    assert saved["kind"] == "unet" and saved["synthetic"] is True
    assert set(saved["models"]["attention-unet-focal"]) == {"random", "blocked"}
    for k in ("accuracy", "precision", "recall", "f1", "miou", "pr_auc", "threshold"):
        assert k in saved["models"]["attention-unet-focal"]["blocked"]
    md = (out / "report.md").read_text()
    assert md.startswith("# SYNTHETIC") and "| attention-unet-focal | blocked |" in md
    assert list(out.glob("curves_*.png"))
    # tamper with the weights: loading must refuse
    weights = path / "model.keras"
    weights.write_bytes(weights.read_bytes() + b"x")
    with pytest.raises(ModelError, match="SHA-256"):
        load_detector(path)


def test_search_inside_a_run_records_iterations(tmp_path):
    chips = chips_from_region(_tiny_region(tmp_path, size=160, seed=1), size=32, stride=32)
    cfg = unet_train.preset("quick", base_width=2, batch_size=8, search_iterations=3, search_epochs=1)
    pool = np.arange(len(chips))
    best, records = unet_train.run_search(chips, pool, cfg, progress=False)
    assert [r["iteration"] for r in records] == [1, 2, 3]
    assert all(0.0 <= r["score"] <= 1.0 for r in records)
    assert best.optimizer in ("adam", "sgd")
