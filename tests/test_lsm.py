"""Susceptibility: samples, splits, statistics, tiny models on the demo region, report, map, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import stats

from slidemap.training.cls_metrics import classification_metrics, mcnemar_test, rate_curve, youden_threshold
from slidemap.training.lsm_report import classify, jenks_breaks, jenks_classes
from slidemap.training.samples import SOURCES, balanced_weights, build_samples
from slidemap.training.splits import blocked_split, empirical_variogram, practical_range, random_split

METRIC_KEYS = {"accuracy", "precision", "recall", "f1", "f1_macro", "roc_auc", "pr_auc", "threshold"}


@pytest.fixture(scope="module")
def lsm_region(tmp_path_factory) -> Path:
    from slidemap.compute.demo import generate_demo_region
    from slidemap.compute.prepare import prepare_region

    region = tmp_path_factory.mktemp("lsm") / "demo"
    generate_demo_region(region, size_km=4, seed=3)
    prepare_region(region, show_progress=False)
    return region


@pytest.fixture(scope="module")
def trained(lsm_region):
    from slidemap.training.lsm_train import train_lsm

    return train_lsm(
        lsm_region, preset="quick", models=("multiscale", "multiscale_dense", "logreg"), progress=False
    )


# ---- samples and splits ---------------------------------------------------------------------
def test_samples_rules():
    labels = np.zeros((40, 40), np.uint8)
    labels[5:8, 5:8] = 1  # 9 landslide cells
    labels[30, 30] = 2  # one known negative
    labels[:, 39] = 255
    valid = np.ones_like(labels, bool)
    valid[6, 6] = False  # a landslide cell without factors is not a sample
    s = build_samples(labels, valid, neg_ratio=2.0, buffer_cells=4, seed=0)
    assert s.y.sum() == 8 and (s.y == 0).sum() == 16
    assert s.counts()["known_negative"] == 1 and s.counts()["sampled_negative"] == 15
    sampled = s.source == SOURCES.index("sampled_negative")
    # sampled negatives: farther than the buffer from every landslide cell, never outside
    pos_r, pos_c = s.rows[s.y == 1], s.cols[s.y == 1]
    dist = np.hypot(s.rows[sampled][:, None] - pos_r[None], s.cols[sampled][:, None] - pos_c[None])
    assert dist.min() > 4
    assert np.all(labels[s.rows, s.cols] != 255)
    # balanced weights: both classes carry half the total weight
    w = balanced_weights(s.y)
    assert np.isclose(w[s.y == 1].sum(), w[s.y == 0].sum())
    # detected positives are recorded as such
    detected = np.zeros_like(valid)
    detected[20, 20] = True
    s2 = build_samples(labels, valid, detected=detected, seed=0)
    assert s2.counts()["detected"] == 1 and SOURCES[s2.source[s2.y == 1][-1]] in ("inventory", "detected")


def test_splits_disjoint_and_blocked():
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 200, 600), rng.integers(0, 200, 600)
    y = ((rows // 50 + cols // 50) % 2).astype(np.int8)  # spatially structured labels
    for split in (random_split(y, seed=1), blocked_split(rows, cols, y, block_cells=40, seed=1)):
        assert len(np.intersect1d(split.train, split.test)) == 0
        assert len(split.train) + len(split.test) == len(y)
        assert 0.15 < len(split.test) / len(y) < 0.3
    split = blocked_split(rows, cols, y, block_cells=40, seed=1)
    blocks = (rows // 40) * 1000 + cols // 40
    assert not set(blocks[split.train]) & set(blocks[split.test])  # no block on both sides
    # the variogram of 50-cell checkerboard labels rises to its sill at about that scale
    centres, gamma = empirical_variogram(rows, cols, y.astype(float))
    assert 20 <= practical_range(centres, gamma) <= 80
    auto = blocked_split(rows, cols, y, seed=1)
    assert auto.info["block_cells"] >= 23 and "variogram" in auto.info


# ---- statistics -----------------------------------------------------------------------------
def test_mcnemar_against_hand_computed_table():
    # 2x2 (A right/wrong x B right/wrong) = [[20, 10], [3, 7]]
    y = np.ones(40, int)
    a = np.array([1] * 20 + [1] * 10 + [0] * 3 + [0] * 7)
    b = np.array([1] * 20 + [0] * 10 + [1] * 3 + [0] * 7)
    res = mcnemar_test(y, a, b)
    assert res["table"] == [[20, 10], [3, 7]]
    chi2 = (abs(10 - 3) - 1) ** 2 / (10 + 3)  # continuity-corrected
    assert res["chi2"] == pytest.approx(chi2, abs=1e-12)
    assert res["p"] == pytest.approx(stats.chi2.sf(chi2, 1), abs=1e-12)


def test_metrics_and_threshold():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.6, 0.55, 0.8, 0.9])
    thr = youden_threshold(y, p)
    m = classification_metrics(y, p, thr)
    assert METRIC_KEYS <= set(m)
    assert m["roc_auc"] == pytest.approx(8 / 9)
    assert 0.55 <= thr <= 0.8
    r = rate_curve(np.linspace(0, 1, 1000), np.array([0.95, 0.99]))
    assert r["auc"] > 0.9 and r["area"][0] == 0 and r["landslides"][-1] == 1


def test_jenks_known_example():
    values = np.array([1, 2, 3, 10, 11, 12, 20, 21, 22, 30, 31, 40, 41], float)
    assert jenks_breaks(values, k=5) == [3.0, 12.0, 22.0, 31.0, 41.0]
    np.testing.assert_array_equal(classify(np.array([2.0, 12.0, 12.5, 50.0, np.nan]), [3, 12, 22, 31, 41]), [1, 2, 3, 5, 0])
    c = jenks_classes(values, np.array([40.0, 41.0, 1.0]), cell_area_km2=0.01)
    assert c["landslide_share"][4] == pytest.approx(2 / 3) and sum(c["area_share"]) == pytest.approx(1)


# ---- tiny models on the demo region -----------------------------------------------------------
def test_tiny_models_beat_constant_predictor(trained):
    for name in ("multiscale", "multiscale_dense", "logreg"):
        m = trained["models"][name]["random"]
        # a constant predictor scores ROC-AUC 0.5 and PR-AUC = the positive share
        assert m["roc_auc"] > 0.6, (name, m)
        assert m["pr_auc"] > m["positives"] / m["n"] + 0.05, (name, m)


def test_report_and_artefacts(trained):
    from slidemap.compute.models.store import list_models, verify

    assert trained["kind"] == "lsm" and trained["synthetic"] is True
    for name, per in trained["models"].items():
        assert set(per) == {"random", "blocked"}
        for m in per.values():
            assert METRIC_KEYS <= set(m)
    assert set(trained["mcnemar"]["blocked"]) == {"multiscale_dense", "logreg"}
    assert len(trained["classes"]["breaks"]) == 5
    out = Path(trained["report_dir"])
    saved = json.loads((out / "report.json").read_text())
    assert {"kind", "synthetic", "data", "created", "model_versions", "models", "mcnemar", "classes"} <= set(saved)
    assert (out / "report.md").read_text().startswith("# SYNTHETIC")
    for split in ("random", "blocked"):
        assert (out / f"roc_pr_{split}.png").stat().st_size > 1000
        assert (out / f"rates_{split}.png").stat().st_size > 1000
    models = {m.name: m for m in list_models(Path(trained["data"]["region"]), "lsm")}
    card = verify(models["multiscale"].path)
    assert card["factor_names"] == trained["data"]["factor_names"] and card["halo"] == 11
    assert card["normalisation"][0]["name"] == card["factor_names"][0]
    assert len(card["class_breaks"]) == 5 and card["class_breaks"] == sorted(card["class_breaks"])


def test_map_dense_and_window(trained, lsm_region, tmp_path):
    from slidemap.compute.susceptibility import map_region

    dense = map_region(lsm_region, mode="dense", out=tmp_path / "d.tif", progress=False)
    with rasterio.open(tmp_path / "d.tif") as src:
        prob = src.read(1)
        assert src.overviews(1) and src.tags()["synthetic"] == "true"
    assert np.nanmin(prob) >= 0 and np.nanmax(prob) <= 1 and np.isfinite(prob).mean() > 0.9
    with rasterio.open(tmp_path / "d_classes.tif") as src:
        classes = src.read(1)
    assert set(np.unique(classes)) <= {0, 1, 2, 3, 4, 5}
    summary = json.loads((tmp_path / "d_classes.json").read_text())
    assert len(summary["classes"]["area_km2"]) == 5 and sum(summary["classes"]["landslide_share"]) == pytest.approx(1)
    assert dense["cells_per_s"] > 0
    # window path on a corner of the region only (it is the slow reference)
    from slidemap.compute.susceptibility import load_susceptibility, resolve_model

    model = load_susceptibility(resolve_model(lsm_region, None, "window"))
    with rasterio.open(lsm_region / "build" / "factors.tif") as src:
        stack = src.read(window=((0, 30), (0, 30)))
    out = model.predict_block(stack)
    assert out.shape == (8, 8) and np.isfinite(out).all()


def test_cli_errors(tmp_path, capsys):
    from slidemap.cli import main

    assert main(["train", "lsm", str(tmp_path)]) == 2
    assert "slidemap prepare" in capsys.readouterr().err
    assert main(["map", "susceptibility", str(tmp_path)]) == 2
