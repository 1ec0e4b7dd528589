"""Bayesian hyperparameter search: Gaussian-process surrogate + expected improvement.

Library: scikit-optimize's ``gp_minimize(acq_func="EI")``. Why this one:

- it really is GP + EI (a Matern-kernel GP surrogate and the expected-improvement acquisition,
  as in the paper); keras-tuner's ``BayesianOptimization`` uses an upper-confidence bound, not EI;
  Optuna's ``GPSampler`` uses log-EI but needs torch, which this project does not ship;
- it is light (numpy, scipy, scikit-learn, all already here) and works with numpy 2.4;
- its weak point is maintenance (few releases lately); the call used here is its stable core.

Two search spaces:

- ``paper``: optimizer {Adam, SGD}, learning rate {1e-2, 1e-3, 1e-4}, focal alpha in [0, 1],
  focal gamma in [0, 5] (the paper's);
- ``focal``: alpha and gamma only, at a fixed optimizer and learning rate. A short trial cannot tell
  a good learning rate from a lucky one, but it can rank alpha and gamma at a rate known to train.

The objective is a score on a validation part carved from the training data (never the test split),
maximised; every iteration is recorded with what proposed it (the paper's seed, the random initial
design, or GP + expected improvement), like the paper's Table 3. :func:`seed_won` says whether the
seeded paper point stayed the best, which reports must state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

OPTIMIZERS = ("adam", "sgd")
LEARNING_RATES = (1e-2, 1e-3, 1e-4)
ALPHA_RANGE = (0.0, 1.0)
GAMMA_RANGE = (0.0, 5.0)
# The paper's best set (their Table 3, iteration 16): evaluated first, so a short search starts
# from a point known to train, and the GP then looks for better ones.
PAPER_BEST = ("adam", 1e-2, 0.338, 3.809)


@dataclass(frozen=True)
class HyperParams:
    optimizer: str
    learning_rate: float
    alpha: float
    gamma: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "optimizer": self.optimizer,
            "learning_rate": float(self.learning_rate),
            "alpha": float(self.alpha),
            "gamma": float(self.gamma),
        }


SPACES = ("paper", "focal")
SEED_PROPOSER = "paper's best set (seed)"


def search_space(space: str = "paper") -> list[Any]:
    from skopt.space import Categorical, Real

    focal = [Real(*ALPHA_RANGE, name="alpha"), Real(*GAMMA_RANGE, name="gamma")]
    if space == "focal":
        return focal
    if space == "paper":
        return [Categorical(list(OPTIMIZERS), name="optimizer"),
                Categorical(list(LEARNING_RATES), name="learning_rate")] + focal
    raise ValueError(f"search space {space!r} unknown; use one of {SPACES}")


def seed_won(records: list[dict[str, Any]]) -> bool:
    """Whether the best record is the seeded paper point."""
    if not records:
        return False
    return max(records, key=lambda r: r["score"]).get("proposed_by") == SEED_PROPOSER


def bayesian_search(
    objective: Callable[[HyperParams], float],
    n_iterations: int,
    seed: int = 0,
    n_initial: int | None = None,
    on_iteration: Callable[[dict[str, Any]], None] | None = None,
    start_from_paper: bool = True,
    space: str = "paper",
    fixed: HyperParams | None = None,
) -> tuple[HyperParams, list[dict[str, Any]]]:
    """Maximise ``objective`` with GP + EI over ``space``; return the best set and every iteration.

    ``n_initial`` random points seed the GP (default: about a third of the budget, at least 2);
    with ``start_from_paper`` the paper's best set (its alpha and gamma, in the ``focal`` space) is
    evaluated first (it counts as one iteration). In the ``focal`` space the optimizer and learning
    rate come from ``fixed``. Each record is ``{iteration, optimizer, learning_rate, alpha, gamma,
    score, proposed_by}``.
    """
    from skopt import gp_minimize

    if n_iterations < 1:
        raise ValueError("n_iterations must be >= 1")
    if n_initial is None:
        n_initial = max(2, n_iterations // 3)
    dims = search_space(space)
    base = fixed or HyperParams("adam", 1e-3, PAPER_BEST[2], PAPER_BEST[3])
    seed_point = list(PAPER_BEST) if space == "paper" else [PAPER_BEST[2], PAPER_BEST[3]]
    x0 = [seed_point] if start_from_paper else None
    seeded = 1 if x0 else 0
    # Leave at least one point to expected improvement whenever the budget allows it.
    n_initial = max(0, min(n_initial, n_iterations - seeded - (1 if n_iterations - seeded >= 2 else 0)))
    if n_initial == 0 and not x0:
        n_initial = 1
    records: list[dict[str, Any]] = []

    def proposer(iteration: int) -> str:
        if iteration <= seeded:
            return SEED_PROPOSER
        return "random (initial design)" if iteration <= seeded + n_initial else "GP + expected improvement"

    def minimise(point: list[Any]) -> float:
        if space == "paper":
            hp = HyperParams(str(point[0]), float(point[1]), float(point[2]), float(point[3]))
        else:
            hp = HyperParams(base.optimizer, base.learning_rate, float(point[0]), float(point[1]))
        score = float(objective(hp))
        if not np.isfinite(score):
            score = 0.0  # a diverged run counts as the worst score, not a crash of the search
        iteration = len(records) + 1
        record = {"iteration": iteration, **hp.to_dict(), "score": score, "proposed_by": proposer(iteration),
                  "space": space}
        records.append(record)
        log.info("search %d/%d: %s -> %.4f", record["iteration"], n_iterations, hp.to_dict(), score)
        if on_iteration:
            on_iteration(record)
        return -score

    gp_minimize(
        minimise,
        dims,
        acq_func="EI",
        n_calls=n_iterations,
        n_initial_points=n_initial,
        x0=x0,
        random_state=seed,
    )
    best = max(records, key=lambda r: r["score"])
    return HyperParams(best["optimizer"], best["learning_rate"], best["alpha"], best["gamma"]), records
