"""Intervals and rankings for susceptibility scores.

* One blocked test set: a **spatial cluster bootstrap** of the ROC-AUC -- whole landslide polygons
  and whole small squares of negatives are resampled, not single cells, because neighbouring cells
  are not independent evidence. The 2.5 and 97.5 percentiles are the 95 % interval.
* Repeated spatial k-fold CV: the mean over all folds with the **corrected resampled t** interval
  (Nadeau & Bengio 2003): the folds share training data, so their scores are correlated and the
  plain standard error is too narrow; the variance is inflated by ``1/J + n_test/n_train``.

A model has skill when its interval lies above 0.5 (a coin). Rankings use the CV mean where CV ran,
else the blocked test score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score

CHANCE = 0.5


@dataclass(frozen=True)
class Score:
    value: float
    ci95: tuple[float, float]
    method: str
    n_test: int

    @property
    def has_skill(self) -> bool:
        return bool(np.isfinite(self.ci95[0]) and self.ci95[0] > CHANCE)

    def to_dict(self) -> dict[str, Any]:
        return {"value": round(self.value, 4), "ci95": [round(self.ci95[0], 4), round(self.ci95[1], 4)],
                "method": self.method, "n_test": self.n_test, "has_skill": self.has_skill}


def bootstrap_auc(y: np.ndarray, p: np.ndarray, clusters: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Score:
    """ROC-AUC of ``p`` with a cluster-bootstrap 95 % interval (clusters resampled whole)."""
    y, p, clusters = np.asarray(y), np.asarray(p, dtype=np.float64), np.asarray(clusters)
    value = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")
    ids, inverse = np.unique(clusters, return_inverse=True)
    members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse))[:-1])
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        pick = rng.integers(0, len(ids), len(ids))
        idx = np.concatenate([members[k] for k in pick])
        if len(np.unique(y[idx])) == 2:
            values.append(roc_auc_score(y[idx], p[idx]))
    lo, hi = (np.percentile(values, [2.5, 97.5]) if values else (np.nan, np.nan))
    return Score(value, (float(lo), float(hi)), f"blocked test, spatial cluster bootstrap ({n_boot}x, {len(ids)} clusters)", len(y))


def cv_score(values: list[float], n_train: float, n_test: float, folds: int, repeats: int) -> Score:
    """Mean of per-fold scores with the corrected resampled t 95 % interval."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    mean = float(v.mean()) if len(v) else float("nan")
    if len(v) < 2:
        return Score(mean, (float("nan"), float("nan")), "spatial CV (too few folds for an interval)", int(n_test))
    var = np.var(v, ddof=1) * (1.0 / len(v) + n_test / max(n_train, 1.0))
    half = float(stats.t.ppf(0.975, len(v) - 1) * np.sqrt(var))
    return Score(mean, (mean - half, mean + half),
                 f"{folds}-fold x {repeats} spatial CV, corrected resampled t interval", int(round(n_test)))


def clusters_for(rows: np.ndarray, cols: np.ndarray, group: np.ndarray, y: np.ndarray, cell: int) -> np.ndarray:
    """Bootstrap clusters: a landslide sample's polygon; a negative's ``cell``-sided square."""
    square = (np.asarray(rows) // cell) * 1_000_003 + (np.asarray(cols) // cell)
    return np.where(np.asarray(y) == 1, np.asarray(group) * 2, square * 2 + 1)


def rank(scores: dict[str, Score]) -> list[dict[str, Any]]:
    """Models by score, best first, with their rank and skill."""
    order = sorted(scores, key=lambda m: (-np.nan_to_num(scores[m].value, nan=-1.0), m))
    return [{"rank": i + 1, "model": m, **scores[m].to_dict()} for i, m in enumerate(order)]
