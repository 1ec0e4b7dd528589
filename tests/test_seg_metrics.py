"""Segmentation metrics against hand-counted confusion matrices."""

from __future__ import annotations

import numpy as np
import pytest

from sklearn.metrics import average_precision_score, precision_recall_curve

from slidemap.training.seg_metrics import choose_threshold, confusion, pr_auc, ranking_scores, segmentation_metrics


def test_metrics_match_hand_counted_confusion():
    y = np.array([1, 1, 0, 0, 1, 0, 255, 0])
    p = np.array([0.9, 0.4, 0.6, 0.1, 0.8, 0.2, 0.99, np.nan])
    m = segmentation_metrics(y, p, threshold=0.5)
    # tp: 0.9, 0.8 | fn: 0.4 | fp: 0.6 | tn: 0.1, 0.2 ; label 255 and NaN left out
    assert m["confusion"] == {"tp": 2, "fp": 1, "fn": 1, "tn": 2}
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["iou"] == pytest.approx(2 / 4)
    assert m["iou_background"] == pytest.approx(2 / 4)
    assert m["miou"] == pytest.approx(0.5)
    assert m["pixels"] == 6 and m["threshold"] == 0.5


def test_imbalanced_case_and_f1_is_harmonic_mean():
    y = np.array([1] * 3 + [0] * 97)
    p = np.zeros(100)
    p[[0, 1]] = 0.9  # two hits
    p[[10, 11, 12, 13]] = 0.8  # four false alarms
    m = segmentation_metrics(y, p, 0.5)
    assert m["confusion"] == {"tp": 2, "fp": 4, "fn": 1, "tn": 93}
    pr, rc = 2 / 6, 2 / 3
    assert m["f1"] == pytest.approx(2 * pr * rc / (pr + rc))
    assert m["miou"] == pytest.approx((2 / 7 + 93 / 98) / 2)
    assert m["accuracy"] == pytest.approx(95 / 100)


def test_confusion_ignores_nodata():
    assert confusion(np.array([255, 1, 0]), np.array([1, 1, 1])) == {"tp": 1, "fp": 1, "fn": 0, "tn": 0}


def test_threshold_and_pr_auc():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8])
    thr = choose_threshold(y, p)
    assert 0.3 < thr <= 0.7
    assert segmentation_metrics(y, p, thr)["f1"] == 1.0
    assert pr_auc(y, p) == pytest.approx(1.0)
    assert np.isnan(pr_auc(np.zeros(4), np.ones(4)))
    assert choose_threshold(np.zeros(4), np.ones(4)) == 0.5


def test_bootstrap_interval_over_units_and_chance():
    from slidemap.training.seg_metrics import best_f1, bootstrap_f1, chance_f1, f1_from_counts

    rng = np.random.default_rng(0)
    # 50 chips, each with its own hit rate: the pooled F1 sits inside the interval, which narrows with more chips
    counts = np.stack([rng.integers(20, 60, 50), rng.integers(0, 30, 50), rng.integers(0, 30, 50),
                       rng.integers(900, 1000, 50)], axis=1)
    f1 = float(f1_from_counts(counts.sum(axis=0)))
    lo, hi = bootstrap_f1(counts, seed=1)
    assert lo < f1 < hi and hi - lo < 0.2
    lo4, hi4 = bootstrap_f1(counts[:4], seed=1)
    assert hi4 - lo4 > hi - lo
    assert bootstrap_f1(counts, seed=1) == (lo, hi)  # seeded: reproducible
    assert chance_f1(0.02) == pytest.approx(2 * 0.02 / 1.02) and chance_f1(0.0) == 0.0
    y = np.array([0, 0, 1, 1], np.uint8)
    assert best_f1(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0


def test_paired_difference_cancels_what_two_models_share():
    from slidemap.training.seg_metrics import bootstrap_f1, paired_f1_difference

    rng = np.random.default_rng(2)
    # chips differ a lot in difficulty (shared by both models); model a finds 5 % more landslide pixels
    hard = rng.integers(10, 80, 60)
    b = np.stack([hard, 30 - hard // 3, 100 - hard, np.full(60, 5000)], axis=1)
    a = b.copy()
    moved = (b[:, 2] * 0.05).astype(np.int64)
    a[:, 0] += moved
    a[:, 2] -= moved
    out = paired_f1_difference(a, b, seed=3)
    assert out["difference"] > 0 and out["ci95"][0] > 0 and out["share_a_ahead"] == 1.0
    # the separate intervals overlap, the paired one does not reach 0
    lo_a, _ = bootstrap_f1(a, seed=3)
    _, hi_b = bootstrap_f1(b, seed=3)
    assert lo_a < hi_b
    same = paired_f1_difference(b, b, seed=3)
    assert same["difference"] == 0.0 and same["ci95"] == [0.0, 0.0] and same["share_a_ahead"] == 0.0
    with pytest.raises(ValueError, match="same units"):
        paired_f1_difference(a, b[:10])


def test_ranking_scores_are_average_precision_and_best_f1_from_one_curve():
    rng = np.random.default_rng(7)
    y = (rng.random(5000) < 0.05).astype(np.uint8)
    prob = np.round(np.clip(0.4 * rng.random(5000) + 0.5 * y * rng.random(5000), 0, 1), 2)  # with ties
    y[:50] = 255  # ignored pixels stay out
    ap, f1 = ranking_scores(y, prob)
    keep = y != 255
    assert ap == pytest.approx(average_precision_score(y[keep], prob[keep]), abs=1e-12)
    p, r, _ = precision_recall_curve(y[keep], prob[keep])
    assert f1 == pytest.approx(np.max(2 * p * r / np.maximum(p + r, 1e-12)), abs=1e-12)
    no_slides = ranking_scores(np.zeros(10, np.uint8), np.linspace(0, 1, 10))
    assert np.isnan(no_slides[0]) and no_slides[1] == 0.0
