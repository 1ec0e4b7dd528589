"""Leak-free susceptibility evaluation: encoding, augmentation, samples, buffered splits, intervals.

Small synthetic arrays with known answers; no training here (see test_lsm.py).
"""

from __future__ import annotations

import numpy as np
import pytest

from slidemap.compute.terrain.factors import Encoding, FactorSpec, Normalisation
from slidemap.compute.terrain.derivatives import slope_aspect
from slidemap.training.window_augment import transform_centre, transform_direction, transform_windows
from slidemap.training.cls_metrics import mcnemar_test
from slidemap.training.lsm_config import PRESETS, make_config
from slidemap.training.lsm_eval import bootstrap_auc, cv_score
from slidemap.training.samples import cap_per_group, polygon_ids
from slidemap.training.splits import blocked_split, spatial_kfold, spatial_layout
from slidemap.errors import InputError


def _norm(*specs: FactorSpec) -> Normalisation:
    return Normalisation(tuple(specs))


SLOPE = FactorSpec("slope", "continuous", "degrees", 0.0, 60.0, "dem")
ASPECT = FactorSpec("aspect", "continuous", "degrees", -1.0, 360.0, "dem")
LANDCOVER = FactorSpec("landcover", "categorical", "class", 1, 3, "landcover",
                       classes={"1": "cropland", "2": "forest", "3": "water"})


# ---- encoding ----------------------------------------------------------------------------------
def test_encoding_channels_and_values():
    enc = Encoding.build(_norm(SLOPE, ASPECT, LANDCOVER), {"landcover": [1, 2]})
    assert enc.channel_names == ["slope", "aspect_sin", "aspect_cos", "aspect_flat", "landcover=cropland",
                                 "landcover=forest"]
    stack = np.array([
        [30.0, 60.0, np.nan, 0.0],  # slope
        [90.0, -1.0, 180.0, 0.0],  # aspect: east, flat, south, north
        [1.0, 2.0, 3.0, np.nan],  # landcover: cropland, forest, water (no channel), nodata
    ], dtype=np.float32)[:, None, :]
    out = enc.encode(stack)[:, 0, :]
    np.testing.assert_allclose(out[0], [0.5, 1.0, 0.0, 0.0])  # NaN -> 0
    np.testing.assert_allclose(out[1], [1.0, 0.0, 0.0, 0.0], atol=1e-6)  # sin: east 1, flat 0, south 0
    np.testing.assert_allclose(out[2], [0.0, 0.0, -1.0, 1.0], atol=1e-6)  # cos: north 1, south -1
    np.testing.assert_allclose(out[3], [0.0, 1.0, 0.0, 0.0])  # flat flag
    # one-hot: a class code is never averaged; a class without a channel is all zeros, like nodata
    np.testing.assert_allclose(out[4], [1, 0, 0, 0])
    np.testing.assert_allclose(out[5], [0, 1, 0, 0])
    assert Encoding.from_dict(enc.to_dict()) == enc


# ---- augmentation: the aspect turns with the window ------------------------------------------
def _aspect_channels(dem: np.ndarray) -> np.ndarray:
    """[2, H, W] sine and cosine of the Horn aspect of ``dem`` (30 m cells)."""
    _, aspect = slope_aspect(dem.astype(np.float64), (30.0, 30.0))
    enc = Encoding.build(_norm(ASPECT))
    return enc.encode(aspect[None].astype(np.float32))[:2]


@pytest.mark.parametrize("k", range(8))
def test_augmentation_matches_the_aspect_of_the_transformed_terrain(k):
    rng = np.random.default_rng(k)
    yy, xx = np.mgrid[0:16, 0:16].astype(float)
    dem = 3.0 * xx - 1.5 * yy + 0.8 * np.sin(xx / 3.0) * np.cos(yy / 4.0) + rng.normal(0, 0.01, xx.shape)
    original = _aspect_channels(dem)[:, 2:14, 2:14]  # interior: Horn's edge cells aside
    # the terrain itself, mirrored and rotated the same way, then its aspect recomputed
    moved = dem[:, ::-1] if k >= 4 else dem
    moved = np.rot90(moved, k % 4)
    expected = _aspect_channels(np.ascontiguousarray(moved))[:, 2:14, 2:14]
    windows = original[None, :, :, :, None]  # [N=1, C=2 (sin, cos), rows, cols, S=1]
    got = transform_windows(windows, k, 0, 1)[0, :, :, :, 0]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # the centre values follow the same rule: the sample cell's vector, wherever the cell lands
    index = np.arange(144).reshape(12, 12)
    index = np.rot90(index[:, ::-1] if k >= 4 else index, k % 4)
    r, c = np.argwhere(index == 5 * 12 + 5)[0]
    centre = transform_centre(original[None, :, 5, 5], k, 0, 1)[0]
    np.testing.assert_allclose(centre, got[:, r, c], atol=1e-6)
    e, n = transform_direction(np.array(1.0), np.array(0.0), 1)  # east, a quarter turn left: north
    assert (float(e), float(n)) == (0.0, 1.0)


# ---- samples ------------------------------------------------------------------------------------
def test_polygons_and_cap():
    mask = np.zeros((10, 10), bool)
    mask[1:4, 1:4] = True  # 9 cells
    mask[7, 7] = mask[8, 8] = True  # diagonal neighbours: one polygon (8-connected)
    ids = polygon_ids(mask)
    assert len(np.unique(ids[mask])) == 2
    groups = ids[mask]
    keep = cap_per_group(groups, 3, np.random.default_rng(0))
    kept, counts = np.unique(groups[keep], return_counts=True)
    assert counts.tolist() == [3, 2]


# ---- buffered splits ------------------------------------------------------------------------------
def _toy(seed=0, n=1500, size=200):
    rng = np.random.default_rng(seed)
    rows, cols = rng.integers(0, size, n), rng.integers(0, size, n)
    y = ((rows // 40 + cols // 40) % 2).astype(np.int8)
    group = np.arange(n)
    # a few polygons of several cells straddling block edges (block 25: edge at 25, 50, ...)
    for g, (r, c) in enumerate([(24, 24), (49, 70), (99, 124)]):
        idx = np.arange(g * 6, g * 6 + 6)
        rows[idx] = r + np.array([0, 1, 0, 1, 0, 1])
        cols[idx] = c + np.array([0, 0, 1, 1, 2, 2])
        y[idx] = 1
        group[idx] = 10_000 + g
    return rows, cols, y, group


def _chebyshev_to_test(split, rows, cols, layout):
    """Distance (cells, Chebyshev) from every training sample to the nearest test block or sample."""
    b = layout.block_cells
    d = np.full(len(split.train), np.inf)
    for k in np.unique(layout.block[split.test]):
        r0, c0 = layout.block_origin[k]
        dr = np.maximum(np.maximum(r0 - rows[split.train], rows[split.train] - (r0 + b - 1)), 0)
        dc = np.maximum(np.maximum(c0 - cols[split.train], cols[split.train] - (c0 + b - 1)), 0)
        d = np.minimum(d, np.maximum(dr, dc))
    for t in split.test:
        d = np.minimum(d, np.maximum(np.abs(rows[split.train] - rows[t]), np.abs(cols[split.train] - cols[t])))
    return d


def test_blocked_split_buffer_and_whole_polygons():
    rows, cols, y, group = _toy()
    layout = spatial_layout(rows, cols, y, group, (200, 200), block_cells=25, buffer=11)
    split = blocked_split(layout, seed=3)
    assert len(np.intersect1d(split.train, split.test)) == 0
    assert _chebyshev_to_test(split, rows, cols, layout).min() > 11  # nothing within the buffer
    assert split.info["dropped_in_buffer"] > 0 and split.info["buffer_cells"] == 11
    assert len(split.train) + len(split.test) + split.info["dropped_in_buffer"] == len(y)
    for g in (10_000, 10_001, 10_002):  # each polygon wholly on one side (or wholly dropped)
        members = np.flatnonzero(group == g)
        sides = {("test" if i in split.test else "train" if i in split.train else "dropped") for i in members}
        assert len(sides) == 1, sides
    assert 0.1 < len(split.test) / len(y) < 0.35


def test_spatial_kfold_tests_every_block_once_per_repeat():
    rows, cols, y, group = _toy(1)
    layout = spatial_layout(rows, cols, y, group, (200, 200), block_cells=25, buffer=11)
    folds = spatial_kfold(layout, folds=5, repeats=2, seed=0)
    assert len(folds) == 10
    for r in (1, 2):
        tested = np.concatenate([f.test for f in folds if f.info["repeat"] == r])
        assert np.array_equal(np.sort(tested), np.arange(len(y)))  # each sample tested exactly once
    for f in folds:
        assert _chebyshev_to_test(f, rows, cols, layout).min() > 11
        assert len(np.unique(y[f.test])) == 2 and len(np.unique(y[f.train])) == 2


# ---- intervals and tests --------------------------------------------------------------------------
def test_intervals():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(100), np.zeros(100)].astype(int)
    p = np.where(y == 1, rng.normal(0.7, 0.2, 200), rng.normal(0.4, 0.2, 200))
    score = bootstrap_auc(y, p, np.arange(200), n_boot=300)
    assert score.ci95[0] < score.value < score.ci95[1] and score.has_skill
    # 20 distinct observations, each copied 10 times (neighbouring cells saying the same thing):
    # counted as 200 independent samples the interval is too narrow; as 20 clusters it widens
    base_y, base_p = y[::10], p[::10]
    copies_y, copies_p = np.repeat(base_y, 10), np.repeat(base_p, 10)
    naive = bootstrap_auc(copies_y, copies_p, np.arange(200), n_boot=300)
    clustered = bootstrap_auc(copies_y, copies_p, np.arange(200) // 10, n_boot=300)
    assert (clustered.ci95[1] - clustered.ci95[0]) > 2 * (naive.ci95[1] - naive.ci95[0])
    noise = bootstrap_auc(y, rng.random(200), np.arange(200), n_boot=300)
    assert not noise.has_skill
    folds = [0.80, 0.82, 0.78, 0.85, 0.79, 0.81, 0.83, 0.77, 0.80, 0.84]
    cv = cv_score(folds, n_train=800, n_test=200, folds=5, repeats=2)
    naive = 1.96 * np.std(folds, ddof=1) / np.sqrt(len(folds))
    assert cv.value == pytest.approx(np.mean(folds))
    assert (cv.ci95[1] - cv.value) > naive  # corrected for the folds' shared training data


def test_mcnemar_exact_for_few_discordant_pairs():
    y = np.ones(30, int)
    a = np.r_[np.ones(22), np.ones(6), np.zeros(2)].astype(int)  # b = 6, c = 2
    b = np.r_[np.ones(22), np.zeros(6), np.ones(2)].astype(int)
    res = mcnemar_test(y, a, b)
    from scipy.stats import binomtest

    assert res["p"] == pytest.approx(binomtest(2, 8, 0.5).pvalue) and res["method"].startswith("exact")


# ---- settings -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_is_valid(preset):
    cfg = make_config(preset)
    assert cfg.preset == preset and cfg.models and cfg.epochs >= 1
    if preset == "paper":  # the paper's Table 5
        assert (cfg.lr, cfg.batch, cfg.epochs, cfg.widths, cfg.dense_units) == (0.01, 64, 25, (32, 64), 64)


@pytest.mark.parametrize("item, message", [
    ({"epochs": "0"}, "epochs"), ({"widths": "8"}, "widths"), ({"models": "unet"}, "unknown models"),
    ({"negatives": "water"}, "negatives"), ({"nope": "1"}, "no such setting"), ({"augment": "maybe"}, "true or false"),
])
def test_bad_settings_are_one_line_errors(item, message):
    with pytest.raises(InputError, match=message):
        make_config("quick", item)
    cfg = make_config("quick", {"max_samples": "none", "widths": "4,8", "augment": "false"})
    assert cfg.max_samples is None and cfg.widths == (4, 8) and cfg.augment is False


def test_window_network_starts_as_the_logistic_regression_and_its_fast_form_copies_it():
    """The centre-linear path: the untrained network's probabilities are exactly the logreg peer's
    (standardised logistic regression folded onto the raw values), and the fast form built from it
    starts with the same linear path on every cell."""
    from slidemap.training.baselines import fit_baseline, make_baseline
    from slidemap.training.lsm_networks import (
        DENSE_HALO,
        build_dense_fcn,
        build_window_cnn,
        centre_linear_weights,
        set_centre_linear,
    )
    from slidemap.training.lsm_fit import logistic_start

    rng = np.random.default_rng(3)
    n, n_ch = 300, 5
    centre = rng.normal(size=(n, n_ch)).astype(np.float32) * [1, 10, 0.1, 100, 3] + [0, 50, 0, 900, 0]
    y = (centre[:, 0] + 0.05 * centre[:, 1] + rng.normal(size=n) > 2.5).astype(int)
    weight = np.where(y == 1, 0.5 / y.mean(), 0.5 / (1 - y.mean()))
    peer = fit_baseline(make_baseline("logreg", {}), centre, y, weight)
    net = build_window_cnn(3, 3, n_ch, widths=(2, 2), dense=4, centre_linear=True)
    set_centre_linear(net, *logistic_start(centre, y, weight))
    windows = rng.normal(size=(n, 3, 12, 12, 3)).astype(np.float32)
    p_net = np.asarray(net([windows, centre], training=False)).reshape(-1)
    np.testing.assert_allclose(p_net, peer.predict_proba(centre)[:, 1], atol=2e-5)

    fast = build_dense_fcn(n_ch, width=4, dense=4, centre_linear=True)
    set_centre_linear(fast, *centre_linear_weights(net))
    side = 2 * DENSE_HALO + 4
    grid = rng.normal(size=(1, side, side, n_ch)).astype(np.float32)
    p_fast = np.asarray(fast(grid, training=False))[0, :, :, 0]
    inner = grid[0, DENSE_HALO:-DENSE_HALO, DENSE_HALO:-DENSE_HALO].reshape(-1, n_ch)
    np.testing.assert_allclose(p_fast.reshape(-1), peer.predict_proba(inner)[:, 1], atol=2e-5)
    # the paper's network has no such path
    assert centre_linear_weights(build_window_cnn(3, 3, n_ch, widths=(2, 2), dense=4)) is None
