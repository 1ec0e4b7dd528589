"""Susceptibility: statistics, tiny models on a demo region, ranking, default, artefacts, maps, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from scipy import stats

from slidemap.training.cls_metrics import classification_metrics, mcnemar_test, rate_curve, youden_threshold
from slidemap.compute.maps.classes import classify, jenks_breaks, jenks_classes
from slidemap.training.lsm_report import single_factor_auc
from slidemap.training.samples import SOURCES, balanced_weights, build_samples, load_region_data

METRIC_KEYS = {"accuracy", "precision", "recall", "f1", "f1_macro", "roc_auc", "pr_auc", "threshold"}


@pytest.fixture(scope="module")
def lsm_region(tmp_path_factory) -> Path:
    from slidemap.compute.demo.region import generate_demo_region
    from slidemap.compute.region.prepare import prepare_region

    region = tmp_path_factory.mktemp("lsm") / "demo"
    generate_demo_region(region, size_km=4, seed=3)
    prepare_region(region, show_progress=False)
    return region


@pytest.fixture(scope="module")
def trained(lsm_region):
    from slidemap.training.lsm_train import train_lsm

    # one blocked split (no CV) with the "anywhere" negatives beside it; CV has its own test
    return train_lsm(
        lsm_region, preset="quick", models=("multiscale", "logreg", "random_forest"), progress=False,
        overrides={"cv_below": "0", "compare_anywhere": "true"},
    )


# ---- statistics -----------------------------------------------------------------------------
def test_mcnemar_against_hand_computed_table():
    # 2x2 (A right/wrong x B right/wrong) = [[20, 25], [8, 7]]: 33 discordant pairs, chi-squared
    y = np.ones(60, int)
    a = np.array([1] * 20 + [1] * 25 + [0] * 8 + [0] * 7)
    b = np.array([1] * 20 + [0] * 25 + [1] * 8 + [0] * 7)
    res = mcnemar_test(y, a, b)
    assert res["table"] == [[20, 25], [8, 7]]
    chi2 = (abs(25 - 8) - 1) ** 2 / (25 + 8)  # continuity-corrected
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


# ---- samples on a prepared demo region ----------------------------------------------------------
def test_samples_terrain_and_anywhere(lsm_region):
    data = load_region_data(lsm_region)
    lc, slope = data.factor("landcover"), data.factor("slope")
    terrain, rule = build_samples(data, negatives="terrain", per_polygon_cap=5, seed=0)
    anywhere, _ = build_samples(data, negatives="anywhere", per_polygon_cap=5, seed=0)
    assert "slope" in rule and "land cover" in rule
    for s in (terrain, anywhere):
        assert np.all(data.labels[s.rows[s.y == 1], s.cols[s.y == 1]] == 1)
        assert np.all(data.labels[s.rows[s.y == 0], s.cols[s.y == 0]] != 1)
        w = balanced_weights(s.y)
        assert np.isclose(w[s.y == 1].sum(), w[s.y == 0].sum())
        _, per_polygon = np.unique(s.group[s.y == 1], return_counts=True)
        assert per_polygon.max() <= 5
    sampled = terrain.source == SOURCES.index("sampled_negative")
    # terrain negatives: never water (5) or built-up (6), never flat
    assert not np.isin(lc[terrain.rows[sampled], terrain.cols[sampled]], [5, 6]).any()
    assert slope[terrain.rows[sampled], terrain.cols[sampled]].min() >= 2.0
    # the anywhere sampling does reach the easy ground the terrain rule keeps out
    easy = np.isin(lc[anywhere.rows, anywhere.cols], [5, 6]) | (slope[anywhere.rows, anywhere.cols] < 2.0)
    assert easy[anywhere.source == SOURCES.index("sampled_negative")].any()


def test_ndvi_from_the_pre_event_scene_is_no_leak(lsm_region):
    """The demo's NDVI comes from the scene without scars: alone it separates landslide cells only
    as far as the physics (root cohesion by land cover) lets it."""
    data = load_region_data(lsm_region)
    assert data.imagery_factors_from.startswith("imagery_pre")
    samples, _ = build_samples(data, negatives="terrain", seed=0)
    assert single_factor_auc(data, samples)["ndvi"] <= 0.75


# ---- tiny models on the demo region -----------------------------------------------------------
def test_tiny_models_beat_constant_predictor(trained):
    for name in ("logreg", "random_forest"):
        m = trained["models"][name]["random"]
        # a constant predictor scores ROC-AUC 0.5 and PR-AUC = the positive share
        assert m["roc_auc"] > 0.65, (name, m)
        assert m["pr_auc"] > m["positives"] / m["n"] + 0.05, (name, m)


def test_report_ranking_default_and_artefacts(trained, lsm_region):
    from slidemap.compute.models.select import default_model, has_skill
    from slidemap.compute.models.store import list_models, verify

    assert trained["kind"] == "lsm" and trained["synthetic"] is True
    for per in trained["models"].values():
        assert {"random", "blocked", "anywhere_random", "anywhere_blocked", "ranking_score"} <= set(per)
        for split in ("random", "blocked", "anywhere_random", "anywhere_blocked"):
            assert METRIC_KEYS <= set(per[split])
    ranking = trained["ranking"]
    assert [e["rank"] for e in ranking] == [1, 2, 3]
    assert [e["value"] for e in ranking] == sorted((e["value"] for e in ranking), reverse=True)
    assert all(e["ci95"][0] <= e["value"] <= e["ci95"][1] for e in ranking)
    info = trained["data"]["splits"]["blocked"]
    assert info["buffer_cells"] == 11 and "dropped_in_buffer" in info
    # the region's default: the best model with skill, recorded for map / serve / status
    best = next((e["model"] for e in ranking if e["has_skill"]), None)
    assert trained["default_model"] == best
    chosen = default_model(lsm_region, "susceptibility")
    assert (chosen.name if chosen else None) == best
    models = {m.name: m for m in list_models(lsm_region, "lsm")}
    for name in ("multiscale", "logreg", "random_forest"):
        card = verify(models[name].path)
        assert card["skill"]["metric"] == "roc_auc" and card["skill"]["has_skill"] == has_skill(card)
        assert card["encoding"]["channels"] and card["run_id"] == trained["run_id"]
        assert len(card["class_breaks"]) == 5 and card["class_breaks"] == sorted(card["class_breaks"])
    window = verify(models["multiscale"].path)
    assert window["halo"] == 11 and window["fast_form"]["name"] == "multiscale_fast"
    fast = verify(models["multiscale_fast"].path)
    assert fast["fast_form_of"] == {"name": "multiscale", "version": window["version"]}
    assert window["fast_form"]["version"] == fast["version"]
    out = Path(trained["report_dir"])
    saved = json.loads((out / "report.json").read_text())
    assert {"kind", "synthetic", "data", "created", "model_versions", "models", "ranking", "mcnemar", "classes"} <= set(saved)
    md = (out / "report.md").read_text()
    assert md.startswith("# SYNTHETIC") and "planted rule" in md and "imagery_pre" in md
    for split in ("random", "blocked"):
        assert (out / f"roc_pr_{split}.png").stat().st_size > 1000
        assert (out / f"rates_{split}.png").stat().st_size > 1000


def test_window_path_serves_what_training_scored(trained, lsm_region):
    """The block engine's window path and the training path give one number per cell, edge included."""
    from slidemap.compute.maps.susceptibility import load_susceptibility, resolve_model
    from slidemap.training.lsm_fit import FittedModel, ModelInputs, StackCache, predict_cells

    model = load_susceptibility(resolve_model(lsm_region, "multiscale"), mode="window")
    assert model.mode == "window"
    h, n = model.halo, 20
    block = np.full((len(model.factor_names), n + 2 * h, n + 2 * h), np.nan, np.float32)  # NaN beyond the edge
    with rasterio.open(lsm_region / "build" / "factors.tif") as src:
        block[:, h:, h:] = src.read(window=((0, n + h), (0, n + h)))
    served = model.predict_block(block)
    inputs = ModelInputs(model.window_channels, model.centre_channels, (None, None), (None, None))
    fitted = FittedModel("multiscale", model.model, "window", inputs, model.sizes)
    rows, cols = np.nonzero(np.ones((n, n), bool))
    scored = predict_cells(fitted, StackCache(load_region_data(lsm_region)), rows, cols).reshape(n, n)
    np.testing.assert_allclose(served, scored, atol=2e-5)
    assert served.std() > 1e-3  # not a constant: a broken path would show


def test_map_by_name_mode_and_default(trained, lsm_region, tmp_path):
    from slidemap.compute.maps.susceptibility import map_region

    s = map_region(lsm_region, model="multiscale", mode="dense", out=tmp_path / "d.tif", progress=False)
    assert s["mode"] == "dense" and s["computed_by"] != s["model_versions"]["multiscale"]  # the fast form ran
    with rasterio.open(tmp_path / "d.tif") as src:
        prob = src.read(1)
        assert src.overviews(1) and src.tags()["synthetic"] == "true"
    assert np.nanmin(prob) >= 0 and np.nanmax(prob) <= 1 and np.isfinite(prob).mean() > 0.9
    with rasterio.open(tmp_path / "d_classes.tif") as src:
        classes = src.read(1)
    assert set(np.unique(classes)) <= {0, 1, 2, 3, 4, 5}
    summary = json.loads((tmp_path / "d_classes.json").read_text())
    assert "model card" in summary["classes"]["breaks_from"]
    assert sum(summary["classes"]["landslide_share"]) == pytest.approx(1)
    version = trained["model_versions"]["random_forest"]
    rf = map_region(lsm_region, model=version[:8], out=tmp_path / "rf.tif", progress=False)
    assert rf["model"] == "random_forest" and rf["mode"] == "centre"
    if trained["default_model"]:
        default = map_region(lsm_region, out=tmp_path / "default.tif", progress=False)
        assert default["model"] == trained["default_model"]


def test_cross_validation_path_with_the_fast_peers(lsm_region, tmp_path):
    from slidemap.training.lsm_train import train_lsm

    region = tmp_path / "r"
    shutil.copytree(lsm_region / "build", region / "build")
    shutil.copy(lsm_region / "region.toml", region / "region.toml")
    report = train_lsm(region, preset="quick", models=("logreg", "random_forest"), progress=False,
                       overrides={"cv_below": "100000", "compare_anywhere": "false"})
    assert report["data"]["cv"]["folds"] == 3 and report["data"]["cv"]["repeats"] == 1
    for name in ("logreg", "random_forest"):
        assert len(report["models"][name]["cv"]["folds"]) == 3
    assert report["ranking"][0]["method"].startswith("3-fold x 1 spatial CV")
    assert report["model_versions"].keys() == {"logreg", "random_forest"}


def test_cli_errors_and_names(tmp_path, capsys):
    from slidemap.cli import main

    assert main(["train", "lsm", str(tmp_path)]) == 2
    assert "slidemap prepare" in capsys.readouterr().err
    assert main(["map", "susceptibility", str(tmp_path)]) == 2
    assert main(["train", "lsm", str(tmp_path), "--set", "negatives=water"]) == 2
    assert "negatives" in capsys.readouterr().err
