"""Train/test splits: random 80/20 (the paper's) and spatially blocked 80/20.

Neighbouring cells are autocorrelated, so a random split puts near-copies of every test cell in the
training set and inflates the scores. The blocked split cuts the region into square blocks at least
as large as the autocorrelation range (the practical range of an empirical indicator variogram of
the sample labels, or ``block_cells`` when given) and at least the largest window, and sends whole
blocks to the test set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.spatial.distance import pdist
from sklearn.model_selection import train_test_split

from slidemap.errors import BuildError


@dataclass
class Split:
    name: str  # "random" | "blocked"
    train: np.ndarray  # sample indices
    test: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def random_split(y: np.ndarray, test_size: float = 0.2, seed: int = 0) -> Split:
    """Stratified random split of sample indices."""
    idx = np.arange(len(y))
    train, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=y)
    return Split("random", np.sort(train), np.sort(test), {"test_size": test_size, "seed": seed})


def empirical_variogram(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_bins: int = 25, max_points: int = 1500, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Semivariance per distance bin (distances in cells), on at most ``max_points`` samples."""
    rng = np.random.default_rng(seed)
    idx = np.arange(len(values))
    if len(idx) > max_points:
        idx = np.sort(rng.choice(idx, max_points, replace=False))
    xy = np.column_stack([rows[idx], cols[idx]]).astype(np.float64)
    v = values[idx].astype(np.float64)
    dist = pdist(xy)
    half_sq = 0.5 * pdist(v[:, None], metric="sqeuclidean")
    max_d = dist.max() / 2 if len(dist) else 1.0
    edges = np.linspace(0, max_d, n_bins + 1)
    which = np.digitize(dist, edges) - 1
    ok = (which >= 0) & (which < n_bins)
    sums = np.bincount(which[ok], weights=half_sq[ok], minlength=n_bins)
    counts = np.bincount(which[ok], minlength=n_bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    gamma = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return centres, gamma


def practical_range(centres: np.ndarray, gamma: np.ndarray) -> float:
    """First lag where the semivariance reaches 95 % of the sill (mean of the far half)."""
    ok = np.isfinite(gamma)
    if ok.sum() < 3:
        return float(centres[-1])
    c, g = centres[ok], gamma[ok]
    sill = float(np.mean(g[len(g) // 2 :]))
    above = np.flatnonzero(g >= 0.95 * sill)
    return float(c[above[0]]) if len(above) else float(c[-1])


def blocked_split(
    rows: np.ndarray,
    cols: np.ndarray,
    y: np.ndarray,
    block_cells: int | None = None,
    min_block: int = 23,
    test_size: float = 0.2,
    seed: int = 0,
    tries: int = 200,
) -> Split:
    """Whole square blocks of ``block_cells`` to the test set until it holds ~``test_size``."""
    info: dict[str, Any] = {"test_size": test_size, "seed": seed}
    if block_cells is None:
        centres, gamma = empirical_variogram(rows, cols, y.astype(np.float64), seed=seed)
        rng_cells = practical_range(centres, gamma)
        info["variogram"] = {
            "of": "landslide indicator of the samples",
            "lag_cells": [round(float(c), 2) for c in centres],
            "gamma": [None if not np.isfinite(g) else round(float(g), 5) for g in gamma],
            "range_cells": round(rng_cells, 2),
        }
        extent = max(int(rows.max() - rows.min()), int(cols.max() - cols.min())) + 1
        # at least the largest window (no shared window cells across a block edge's interior), and
        # small enough that the region still has ~10 blocks to choose from
        block_cells = int(np.clip(np.ceil(rng_cells), min_block, max(min_block, extent // 3)))
        info["block_rule"] = f"max(variogram range, {min_block}) capped at extent/3"
    info["block_cells"] = int(block_cells)
    block_id = (rows // block_cells) * 1_000_003 + (cols // block_cells)
    blocks, inverse = np.unique(block_id, return_inverse=True)
    if len(blocks) < 2:
        raise BuildError(f"all samples fall in one {block_cells}-cell block; pass a smaller --block-size")
    rng = np.random.default_rng(seed)
    target = test_size * len(y)
    best, best_err = None, np.inf
    for _ in range(tries):
        order = rng.permutation(len(blocks))
        counts = np.bincount(inverse, minlength=len(blocks))[order]
        k = int(np.searchsorted(np.cumsum(counts), target)) + 1
        test_blocks = order[:k]
        is_test = np.isin(inverse, test_blocks)
        if len(np.unique(y[is_test])) < 2 or len(np.unique(y[~is_test])) < 2:
            continue
        # closeness to the target size and to the overall class balance
        err = abs(is_test.sum() - target) / target + abs(y[is_test].mean() - y.mean())
        if err < best_err:
            best, best_err = is_test, err
    if best is None:
        raise BuildError("could not find a blocked split with both classes on each side; pass --block-size")
    info["n_blocks"] = int(len(blocks))
    info["n_test_blocks"] = int(len(np.unique(inverse[best])))
    return Split("blocked", np.flatnonzero(~best), np.flatnonzero(best), info)
