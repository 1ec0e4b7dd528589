"""Pixel metrics for landslide segmentation, pooled over every valid pixel of a split.

How each figure is averaged (``../shared/method.md`` asks to say so):

- the confusion matrix is pooled over all valid pixels of all chips (no per-chip averaging);
- ``precision``, ``recall``, ``f1`` and ``iou`` are those of the landslide class only;
- ``miou`` is the mean of the landslide IoU and the background IoU (two classes, unweighted);
- ``accuracy`` is correct pixels / valid pixels;
- ``pr_auc`` is scikit-learn's average precision of the landslide probabilities (threshold-free);
- ``threshold`` is the probability cut used for the other figures. It is chosen on validation
  data only (carved from the training split), as the centre of the plateau of landslide F1 there
  (:func:`choose_threshold`, :func:`threshold_rule`), and then applied unchanged to the test split.
  A network refitted on fit + validation keeps that cut's operating point, the share of pixels it
  calls landslide (:func:`carry_operating_point`), not the probability itself.

Pixels whose label is 255 (no data) or whose probability is NaN are left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slidemap.compute.region.image_files import IGNORE

METRIC_KEYS = ("accuracy", "precision", "recall", "f1", "iou", "miou", "pr_auc", "threshold")


def _valid_pairs(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(prob, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"labels {np.shape(y_true)} and probabilities {np.shape(prob)} differ in size")
    keep = (y != IGNORE) & np.isfinite(p)
    return (y[keep] > 0).astype(np.uint8), p[keep]


def confusion(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, int]:
    """Pooled confusion counts of binary labels and binary predictions (label 255 ignored)."""
    y = np.asarray(y_true).reshape(-1)
    pred = np.asarray(y_pred).reshape(-1)
    keep = y != IGNORE
    y = y[keep] > 0
    pred = pred[keep] > 0
    tp = int(np.count_nonzero(y & pred))
    fp = int(np.count_nonzero(~y & pred))
    fn = int(np.count_nonzero(y & ~pred))
    tn = int(np.count_nonzero(~y & ~pred))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def from_confusion(c: dict[str, int]) -> dict[str, float]:
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    precision = _ratio(tp, tp + fp)
    recall = _ratio(tp, tp + fn)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)  # = harmonic mean of precision and recall
    iou = _ratio(tp, tp + fp + fn)
    iou_bg = _ratio(tn, tn + fp + fn)
    return {
        "accuracy": _ratio(tp + tn, tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "iou": iou,
        "iou_background": iou_bg,
        "miou": (iou + iou_bg) / 2.0,
    }


def _pr_curve(y_true: np.ndarray, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Precision and recall over every threshold (scikit-learn's curve); None without a landslide pixel."""
    from sklearn.metrics import precision_recall_curve

    y, p = _valid_pairs(y_true, prob)
    if y.size == 0 or not y.any():
        return None
    precision, recall, _ = precision_recall_curve(y, p)
    return precision, recall


def _average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    # scikit-learn's average_precision_score on the same curve: a step sum, no interpolation
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def _best_f1(precision: np.ndarray, recall: np.ndarray) -> float:
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    return float(f1.max())


def pr_auc(y_true: np.ndarray, prob: np.ndarray) -> float:
    """Average precision of the landslide class; NaN when the split has no landslide pixel."""
    curve = _pr_curve(y_true, prob)
    return float("nan") if curve is None else _average_precision(*curve)


def best_f1(y_true: np.ndarray, prob: np.ndarray) -> float:
    """The highest landslide F1 over all thresholds (0 with no landslide pixel)."""
    curve = _pr_curve(y_true, prob)
    return 0.0 if curve is None else _best_f1(*curve)


def ranking_scores(y_true: np.ndarray, prob: np.ndarray) -> tuple[float, float]:
    """``(pr_auc, best_f1)`` from one sort of the pixels (early stopping scores both at each validation)."""
    curve = _pr_curve(y_true, prob)
    return (float("nan"), 0.0) if curve is None else (_average_precision(*curve), _best_f1(*curve))


def choose_threshold(y_true: np.ndarray, prob: np.ndarray, default: float = 0.5, plateau: float = 0.9) -> float:
    """The probability cut for landslide pixels, chosen on (validation) data: the centre of the F1
    plateau, i.e. the median of the thresholds whose F1 is within ``plateau`` of the best (1.0: the
    F1-maximising threshold itself).

    Why not the maximum: with a dozen validation landslides the F1 curve can peak narrowly at a cut
    that does not carry over (a 4 km region: threshold 0.757, test F1 0.12 at a test PR-AUC of 0.56;
    the plateau's centre 0.393 gave 0.50). Over 14 demo regions' saved detectors the centre was level
    with the maximum where the peak is broad and much better where it was not
    (``reports/synthetic/detector_threshold_rules.md``). Exact precision-recall curve; with no
    landslide pixel (or only landslide pixels) the default is returned.
    """
    from sklearn.metrics import precision_recall_curve

    if not 0 < plateau <= 1:
        raise ValueError(f"plateau must be in (0, 1], got {plateau}")
    y, p = _valid_pairs(y_true, prob)
    if y.size == 0 or not y.any() or y.all():
        return float(default)
    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    f1 = f1[:-1]  # the last point (recall 0) has no threshold
    if plateau == 1:
        return float(thresholds[int(np.argmax(f1))])
    return float(np.median(thresholds[f1 >= plateau * f1.max()]))


def carry_operating_point(first_prob: np.ndarray, threshold: float, second_prob: np.ndarray) -> tuple[float, float, float]:
    """The cut for a second network that calls the same share of pixels landslide as ``threshold``
    calls with the first, both scored on the same unlabelled pixels: ``(cut, share, reached)``, where
    ``reached`` is the share the cut calls with the second network (probabilities tie, e.g. at 1.0 on
    pixels a network trained on, so it can only come as close as the distinct values allow). With no
    operating point to keep (nothing, or everything, called landslide) the cut is ``threshold``.

    Why: a refitted network (same recipe, more chips) ranks much like the first but its probabilities
    need not sit on the same scale. On the real L4S chips a refitted plain U-Net scored more pixels
    above the first fit's cut (recall 0.72 -> 0.83, precision 0.60 -> 0.51) while its PR-AUC rose, so
    the probability cut did not carry over; the validation part, where the cut was chosen, is then
    training data and cannot choose it again. The share is taken where both networks trained (the fit
    part), so neither is scored on pixels it did not see while the other did.
    """
    first = np.asarray(first_prob, dtype=np.float64).ravel()
    second = np.asarray(second_prob, dtype=np.float32).ravel()  # the scale the test part is cut on
    if first.shape == second.shape:  # the same pixels: keep those both networks scored
        ok = np.isfinite(first) & np.isfinite(second)
        first, second = first[ok], second[ok]
    else:
        first, second = first[np.isfinite(first)], second[np.isfinite(second)]
    if first.size == 0 or second.size == 0:
        return float(threshold), float("nan"), float("nan")
    share = float(np.mean(first >= threshold))
    if share <= 0 or share >= 1:
        return float(threshold), share, share
    ordered = np.sort(second)
    values, first_at = np.unique(ordered, return_index=True)
    shares = (ordered.size - first_at) / ordered.size  # share at or above each distinct value
    miss = np.abs(shares - share)
    k = int(np.flatnonzero(miss == miss.min())[-1])  # the closest; on a tie the higher cut (fewer false landslides)
    return float(values[k]), share, float(shares[k])


def threshold_rule(plateau: float) -> str:
    """What :func:`choose_threshold` did, in words (model cards and reports)."""
    if plateau == 1:
        return "maximises landslide F1 on the validation part (never the test part)"
    return (f"the median of the cuts whose landslide F1 on the validation part is within {plateau:.0%} of the "
            "best (the centre of the F1 plateau; never the test part)")


def segmentation_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Every metric of the report for one split: pooled pixel counts at ``threshold``, plus PR-AUC."""
    y, p = _valid_pairs(y_true, prob)
    counts = confusion(y, p >= threshold)
    metrics: dict[str, Any] = from_confusion(counts)
    metrics["pr_auc"] = pr_auc(y, p)
    metrics["threshold"] = float(threshold)
    metrics["pixels"] = int(y.size)
    metrics["landslide_pixels"] = int(y.sum())
    metrics["confusion"] = counts
    return metrics


def f1_from_counts(counts: np.ndarray) -> np.ndarray:
    """Landslide F1 from ``[..., 4]`` (tp, fp, fn, tn) counts; 0 where there is nothing to score."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def bootstrap_f1(unit_counts: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the pooled F1, resampling whole test units (chips) with replacement.

    ``unit_counts`` is ``[units, 4]`` (tp, fp, fn, tn) per unit. Resampling units rather than pixels
    keeps the pixels of one chip together (they are not independent).
    """
    counts = np.asarray(unit_counts, dtype=np.int64)
    if len(counts) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(counts), size=(n_boot, len(counts)))
    pooled = counts[draws].sum(axis=1)  # [n_boot, 4]
    f1 = f1_from_counts(pooled)
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(f1, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_f1_difference(counts_a: np.ndarray, counts_b: np.ndarray, n_boot: int = 2000, seed: int = 0,
                         level: float = 0.95) -> dict[str, Any]:
    """F1(a) - F1(b) of two models scored on the same test units, with a paired percentile bootstrap.

    Both ``[units, 4]`` count arrays must list the same units in the same order. Each draw resamples
    the units once and pools both models' counts over that one sample, so what the two models share
    (hard chips, easy chips) cancels: the interval is that of the difference, much narrower than
    the two models' own intervals side by side. ``share_a_ahead`` is the share of draws where a leads.
    """
    a = np.asarray(counts_a, dtype=np.int64)
    b = np.asarray(counts_b, dtype=np.int64)
    if a.shape != b.shape:
        raise ValueError(f"paired counts need the same units: {a.shape} vs {b.shape}")
    diff = float(f1_from_counts(a.sum(axis=0)) - f1_from_counts(b.sum(axis=0)))
    if len(a) == 0:
        return {"difference": float("nan"), "ci95": [float("nan"), float("nan")], "share_a_ahead": float("nan")}
    draws = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    d = f1_from_counts(a[draws].sum(axis=1)) - f1_from_counts(b[draws].sum(axis=1))
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(d, [tail, 100 - tail])
    return {"difference": diff, "ci95": [float(lo), float(hi)], "share_a_ahead": float((d > 0).mean()),
            "units": len(a), "method": f"paired percentile bootstrap over {len(a)} test units, {n_boot} draws"}


def chance_f1(prevalence: float) -> float:
    """F1 of the no-skill detector that calls every pixel a landslide: ``2p / (1 + p)``."""
    p = float(prevalence)
    return 2 * p / (1 + p) if p > 0 else 0.0
