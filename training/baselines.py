"""Baselines on the centre cell's encoded factor values (scikit-learn).

* ``gbdt_lr``: the paper's GBDT + logistic-regression stacking (He et al. 2014 style): gradient
  boosted trees are fitted on half of the training set, each sample is re-encoded as the one-hot
  vector of the leaves it lands in, and a logistic regression is fitted on those codes from the other
  half (fitting both on the same rows lets the LR memorise the trees' overfit).
* ``logreg``: plain logistic regression on the factors.
* ``random_forest``: a random forest on the factors.

All take class-balancing sample weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from slidemap.training.lsm_config import BASELINES


class GBDTLR(ClassifierMixin, BaseEstimator):
    def __init__(self, n_estimators: int = 100, max_depth: int = 3, learning_rate: float = 0.1, C: float = 1.0, seed: int = 0):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.C = C
        self.seed = seed

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> GBDTLR:
        y = np.asarray(y)
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight)
        idx = np.arange(len(y))
        a, b = train_test_split(idx, test_size=0.5, random_state=self.seed, stratify=y)
        self.gbdt_ = GradientBoostingClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            random_state=self.seed,
        ).fit(X[a], y[a], sample_weight=w[a])
        self.encoder_ = OneHotEncoder(handle_unknown="ignore").fit(self._leaves(X))
        self.lr_ = LogisticRegression(C=self.C, max_iter=2000).fit(
            self.encoder_.transform(self._leaves(X[b])), y[b], sample_weight=w[b]
        )
        self.classes_ = self.lr_.classes_
        return self

    def _leaves(self, X: np.ndarray) -> np.ndarray:
        return self.gbdt_.apply(X)[:, :, 0]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.lr_.predict_proba(self.encoder_.transform(self._leaves(X)))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]


def make_baseline(name: str, params: dict[str, Any], seed: int = 0) -> Any:
    if name == "gbdt_lr":
        return GBDTLR(n_estimators=params.get("gbdt_trees", 100), max_depth=params.get("gbdt_depth", 3), seed=seed)
    if name == "logreg":
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    if name == "random_forest":
        return RandomForestClassifier(
            n_estimators=params.get("rf_trees", 200),
            min_samples_leaf=params.get("rf_min_leaf", 2),
            n_jobs=params.get("n_jobs", 2),
            random_state=seed,
        )
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")


def fit_baseline(model: Any, X: np.ndarray, y: np.ndarray, weight: np.ndarray) -> Any:
    if hasattr(model, "steps"):  # Pipeline: route the weights to the final estimator
        return model.fit(X, y, **{f"{model.steps[-1][0]}__sample_weight": weight})
    return model.fit(X, y, sample_weight=weight)
