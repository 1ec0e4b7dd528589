"""Binary classification metrics for susceptibility, McNemar's test, and rate curves.

Threshold rule: the cut-off that maximises Youden's J (TPR - FPR) on the model's predictions for a
VALIDATION set carved from its training part (never its own training predictions, which an
overfitted model makes look perfect, and never the test set); independent of the class ratio.
Accuracy, precision, recall and F1 use it; ROC-AUC and PR-AUC (average precision) do not need one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float:
    if len(np.unique(y)) < 2:
        return 0.5
    fpr, tpr, thr = roc_curve(y, p)
    best = int(np.argmax(tpr - fpr))
    return float(np.clip(thr[best], 0.0, 1.0))


def classification_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "n": int(len(y)),
        "positives": int(y.sum()),
        "accuracy": float(accuracy_score(y, pred)),
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "precision_macro": float(precision_score(y, pred, average="macro", zero_division=0)),
        "recall_macro": float(recall_score(y, pred, average="macro", zero_division=0)),
        "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0)),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y, p)) if both else float("nan"),
        "threshold": float(threshold),
    }


EXACT_BELOW = 25  # discordant pairs: below this the chi-squared approximation is poor


def mcnemar_test(y: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict[str, Any]:
    """McNemar's test of two classifiers' hard predictions on one test set: the exact binomial test
    when the discordant pairs are fewer than 25, else the continuity-corrected chi-squared.

    Table rows: A correct / wrong; columns: B correct / wrong. Only the discordant cells matter.
    """
    from statsmodels.stats.contingency_tables import mcnemar

    y = np.asarray(y).astype(int)
    ca = np.asarray(pred_a).astype(int) == y
    cb = np.asarray(pred_b).astype(int) == y
    table = np.array([[np.sum(ca & cb), np.sum(ca & ~cb)], [np.sum(~ca & cb), np.sum(~ca & ~cb)]])
    discordant = int(table[0, 1] + table[1, 0])
    if discordant == 0:  # identical decisions: no evidence of a difference
        return {"chi2": 0.0, "p": 1.0, "table": table.tolist(), "method": "identical decisions"}
    if discordant < EXACT_BELOW:
        res = mcnemar(table, exact=True)
        return {"chi2": None, "p": float(res.pvalue), "table": table.tolist(),
                "method": f"exact binomial ({discordant} discordant pairs)"}
    res = mcnemar(table, exact=False, correction=True)
    return {"chi2": float(res.statistic), "p": float(res.pvalue), "table": table.tolist(),
            "method": "chi-squared, continuity-corrected"}


def curves(y: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    fpr, tpr, _ = roc_curve(y, p)
    prec, rec, _ = precision_recall_curve(y, p)
    return {"fpr": fpr, "tpr": tpr, "precision": prec, "recall": rec}


def rate_curve(area_scores: np.ndarray, landslide_scores: np.ndarray, n_points: int = 101) -> dict[str, Any]:
    """Success/prediction-rate curve: cumulative share of landslides against share of the area,
    cells ranked from most to least susceptible. ``area_scores`` are the scores of (a random sample
    of) all region cells; ``landslide_scores`` those of the landslide cells in question.
    Returns the curve and its area (0.5 = no skill, 1 = perfect)."""
    area_scores = np.sort(np.asarray(area_scores, dtype=np.float64))[::-1]
    thresholds = np.quantile(area_scores, np.linspace(1, 0, n_points)) if len(area_scores) else np.zeros(n_points)
    area = np.array([(area_scores >= t).mean() for t in thresholds])
    slides = np.array([(np.asarray(landslide_scores) >= t).mean() for t in thresholds])
    area[0], slides[0] = 0.0, 0.0
    area[-1], slides[-1] = 1.0, 1.0
    return {"area": area.tolist(), "landslides": slides.tolist(), "auc": float(np.trapezoid(slides, area))}
