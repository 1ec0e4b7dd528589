"""The reported metrics against independent references, once.

``training/cls_metrics.py`` (susceptibility) and ``training/seg_metrics.py`` (detection) feed every
report. Here their ROC-AUC, PR-AUC (average precision), thresholded scores, thresholds, McNemar test
and rate-curve areas are recomputed another way: ROC-AUC as the Mann-Whitney U statistic (scipy),
average precision and Youden's J from their definitions over the sorted scores, pixel scores with
scikit-learn's ``precision_recall_fscore_support`` / ``jaccard_score`` on the valid pixels, McNemar
from its closed form. Scores come with ties and NaN pixels on purpose.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, average_precision_score, jaccard_score, precision_recall_fscore_support

from slidemap.training.cls_metrics import classification_metrics, curves, mcnemar_test, rate_curve, youden_threshold
from slidemap.training.seg_metrics import carry_operating_point, choose_threshold, segmentation_metrics


def scores(n: int, seed: int, skill: float = 1.0, ties: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Labels (30% positive) and scores that separate them with some skill, rounded so values tie."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + skill * (2 * y - 1))))
    return y, np.round(p * ties) / ties


def auc_mann_whitney(y: np.ndarray, p: np.ndarray) -> float:
    """P(score of a positive > score of a negative) + 0.5 P(tie): the U statistic over n1 n0."""
    u = stats.mannwhitneyu(p[y == 1], p[y == 0], alternative="two-sided").statistic
    return float(u / ((y == 1).sum() * (y == 0).sum()))


def average_precision_by_definition(y: np.ndarray, p: np.ndarray) -> float:
    """AP = sum over distinct thresholds t (descending) of (R(t) - R(previous t)) * P(t)."""
    ap, recall_before = 0.0, 0.0
    for t in np.unique(p)[::-1]:
        predicted = p >= t
        tp = np.sum(predicted & (y == 1))
        recall = tp / np.sum(y == 1)
        ap += (recall - recall_before) * tp / np.sum(predicted)
        recall_before = recall
    return float(ap)


@pytest.mark.parametrize(("seed", "skill"), [(0, 1.0), (1, 0.0), (2, 3.0), (3, -1.0)])
def test_roc_and_pr_auc_match_independent_definitions(seed: int, skill: float) -> None:
    y, p = scores(600, seed, skill)
    m = classification_metrics(y, p, threshold=0.5)
    assert m["roc_auc"] == pytest.approx(auc_mann_whitney(y, p), abs=1e-12)
    assert m["pr_auc"] == pytest.approx(average_precision_by_definition(y, p), abs=1e-12)
    # the ROC curve the report draws integrates to the same area
    c = curves(y, p)
    assert np.trapezoid(c["tpr"], c["fpr"]) == pytest.approx(m["roc_auc"], abs=1e-12)
    # and the skill levels order the areas as they should (no skill ~ 0.5, reversed < 0.5)
    if skill == 0.0:
        assert abs(m["roc_auc"] - 0.5) < 0.08
    if skill < 0:
        assert m["roc_auc"] < 0.3


def test_thresholded_scores_and_edge_cases() -> None:
    y, p = scores(500, 4)
    t = 0.55
    m = classification_metrics(y, p, t)
    pred = p >= t
    tp, fp, fn, tn = (np.sum(pred & (y == 1)), np.sum(pred & (y == 0)), np.sum(~pred & (y == 1)), np.sum(~pred & (y == 0)))
    assert m["accuracy"] == pytest.approx((tp + tn) / len(y))
    assert m["precision"] == pytest.approx(tp / (tp + fp))
    assert m["recall"] == pytest.approx(tp / (tp + fn))
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert m["recall_macro"] == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    # perfect and constant rankings
    assert classification_metrics(y, y.astype(float), 0.5)["roc_auc"] == 1.0
    constant = classification_metrics(y, np.full(len(y), 0.3), 0.5)
    assert constant["roc_auc"] == 0.5 and constant["pr_auc"] == pytest.approx(y.mean())
    assert np.isnan(classification_metrics(np.zeros(10, int), np.linspace(0, 1, 10), 0.5)["roc_auc"])


def test_youden_threshold_maximises_j() -> None:
    y, p = scores(400, 5)
    t = youden_threshold(y, p)
    j = {c: np.mean(p[y == 1] >= c) - np.mean(p[y == 0] >= c) for c in np.unique(p)}
    assert max(j.values()) == pytest.approx(np.mean(p[y == 1] >= t) - np.mean(p[y == 0] >= t))
    assert youden_threshold(np.ones(5, int), np.linspace(0, 1, 5)) == 0.5


def test_mcnemar_closed_form() -> None:
    rng = np.random.default_rng(6)
    y = rng.integers(0, 2, 300)
    a = np.where(rng.random(300) < 0.8, y, 1 - y)
    b = np.where(rng.random(300) < 0.7, y, 1 - y)
    res = mcnemar_test(y, a, b)
    only_a = int(np.sum((a == y) & (b != y)))
    only_b = int(np.sum((a != y) & (b == y)))
    chi2 = (abs(only_a - only_b) - 1) ** 2 / (only_a + only_b)
    assert res["table"][0][1] == only_a and res["table"][1][0] == only_b
    assert res["chi2"] == pytest.approx(chi2) and res["p"] == pytest.approx(stats.chi2.sf(chi2, 1))
    same = mcnemar_test(y, a, a)
    assert same["chi2"] == 0.0 and same["p"] == 1.0


def test_rate_curve_area_is_the_landslides_ranking_auc() -> None:
    """The success-rate curve's area is P(a landslide cell outranks a random cell): Mann-Whitney again."""
    rng = np.random.default_rng(7)
    area = rng.beta(2, 5, 20_000)
    slides = rng.beta(5, 2, 300)
    rate = rate_curve(area, slides)
    u = stats.mannwhitneyu(slides, area, alternative="two-sided").statistic / (len(slides) * len(area))
    assert rate["auc"] == pytest.approx(u, abs=0.01)  # 101 quantile steps
    assert rate["area"][0] == 0 and rate["area"][-1] == 1 and np.all(np.diff(rate["landslides"]) >= 0)
    assert rate_curve(area, rng.choice(area, 300))["auc"] == pytest.approx(0.5, abs=0.04)  # no skill


def test_pixel_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(8)
    truth = (rng.random((3, 40, 40)) < 0.2).astype(np.uint8)
    prob = np.clip(0.35 * truth + rng.random(truth.shape) * 0.7, 0, 1).astype(np.float32)
    prob[0, :5, :5] = np.nan  # no-data pixels are left out of every count
    m = segmentation_metrics(truth, prob, threshold=0.5)
    valid = np.isfinite(prob)
    y, p = truth[valid], prob[valid]
    pred = (p >= 0.5).astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    assert (m["precision"], m["recall"], m["f1"]) == pytest.approx((precision, recall, f1))
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["iou"] == pytest.approx(jaccard_score(y, pred))
    assert m["miou"] == pytest.approx(jaccard_score(y, pred, average="macro"))
    assert m["pr_auc"] == pytest.approx(average_precision_score(y, p))
    assert m["pixels"] == valid.sum() and m["landslide_pixels"] == y.sum()
    # the F1-maximising threshold really maximises F1 among the observed scores
    best = choose_threshold(truth, prob, plateau=1.0)
    f1_at = {t: precision_recall_fscore_support(y, (p >= t).astype(int), average="binary", zero_division=0)[2]
             for t in np.unique(p)[::37]}
    assert precision_recall_fscore_support(y, (p >= best).astype(int), average="binary")[2] >= max(f1_at.values()) - 1e-12


def test_threshold_is_the_centre_of_the_validation_f1_plateau():
    """The threshold is the median of the cuts whose F1 is within 90 % of the best (checked against
    scikit-learn's F1 at every observed score); 1.0 gives the F1-maximising cut."""
    rng = np.random.default_rng(3)
    y = (rng.random(3000) < 0.1).astype(int)
    p = np.clip(0.3 * y + rng.random(3000) * 0.8, 0, 1)
    f1 = {t: precision_recall_fscore_support(y, (p >= t).astype(int), average="binary", zero_division=0)[2]
          for t in np.unique(p)}
    top = max(f1.values())
    expected = float(np.median([t for t, v in f1.items() if v >= 0.9 * top - 1e-12]))
    assert choose_threshold(y, p) == pytest.approx(expected)
    assert abs(expected - max(f1, key=f1.get)) > 1e-3  # here the centre is not the peak
    assert choose_threshold(y, p, plateau=1.0) == pytest.approx(max(f1, key=f1.get))  # the peak itself
    with pytest.raises(ValueError):
        choose_threshold(y, p, plateau=0)


def test_a_refit_keeps_the_first_fits_operating_point_not_its_probability():
    """A second network that ranks the pixels alike but on another probability scale gets the cut that
    calls the same pixels landslide; ties (saturated probabilities) give the closest share there is; a
    share of 0 or 1 (no operating point) keeps the cut as it is."""
    rng = np.random.default_rng(5)
    first = rng.random(5000)
    second = np.sqrt(first).astype(np.float32)  # same ranking, higher probabilities (the refitted plain U-Net on L4S)
    cut, share, reached = carry_operating_point(first, 0.7, second)
    assert share == pytest.approx(np.mean(first >= 0.7)) and reached == pytest.approx(share)
    assert cut == pytest.approx(np.sqrt(0.7), abs=2e-3) and cut > 0.8
    assert np.array_equal(second >= np.float32(cut), first >= 0.7)  # the same pixels called landslide
    # a pixel that one network could not score is left out for both
    first_nan, second_nan = first.copy(), second.copy()
    first_nan[:10], second_nan[10:20] = np.nan, np.nan
    ok = slice(20, None)
    assert carry_operating_point(first_nan, 0.7, second_nan)[1] == pytest.approx(np.mean(first[ok] >= 0.7))
    # saturated: 30 % of the second network's pixels at exactly 0.0 and a 75 % share asked for: the
    # plain quantile lands on the tie (cut 0, every pixel); the closest share is the next value's 70 %
    saturated = second.copy()
    saturated[np.argsort(second)[:1500]] = 0.0
    cut, share, reached = carry_operating_point(first, np.quantile(first, 0.25), saturated)
    assert share == pytest.approx(0.75, abs=1e-3)
    assert cut > 0 and reached == pytest.approx(0.7) and reached == pytest.approx(np.mean(saturated >= cut))
    # 30 % at exactly 1.0 and a 10 % share asked for: no cut calls fewer than those 30 %
    saturated = second.copy()
    saturated[np.argsort(second)[-1500:]] = 1.0
    assert carry_operating_point(first, np.quantile(first, 0.9), saturated)[::2] == (1.0, pytest.approx(0.3))
    assert carry_operating_point(first, 1.5, second) == (1.5, 0.0, 0.0)
    assert carry_operating_point(first, -1.0, second) == (-1.0, 1.0, 1.0)
