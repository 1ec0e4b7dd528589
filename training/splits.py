"""Train/test splits: random 80/20 (the paper's), spatially blocked with a buffer, and repeated
spatial k-fold cross-validation.

Neighbouring cells are autocorrelated, so a random split puts near-copies of every test cell in the
training set and inflates the scores. The blocked split cuts the region into square blocks at least
as large as the autocorrelation range (the practical range of an empirical indicator variogram of
the sample labels, or ``block_cells`` when given) and at least the largest window, and sends whole
blocks to the test set. Two more rules make it leak-free:

* **polygons whole on one side**: every sample carries a group (its landslide polygon); a group
  goes to the block holding its centroid, so no polygon is cut by a block edge;
* **a buffer**: training samples within ``buffer`` cells (Chebyshev distance, i.e. any window of
  half-width ``buffer`` around them would overlap) of a test block or a test sample are dropped. With
  the buffer at least the largest window's reach (11 cells for 22-cell windows) no training window
  sees a cell of a test window.

Small sample sets rank models by noise on one 20 % test set; :func:`spatial_kfold` gives repeated
k-fold splits over the same blocks, so every sample is tested once per repeat.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import pdist
from sklearn.model_selection import train_test_split

from slidemap.errors import BuildError


@dataclass
class Split:
    name: str  # "random" | "blocked" | "cv-r{repeat}-f{fold}" | "inner"
    train: np.ndarray  # sample indices
    test: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)


def random_split(y: np.ndarray, test_size: float = 0.2, seed: int = 0, name: str = "random") -> Split:
    """Stratified random split of sample indices (no buffer: the paper's protocol)."""
    idx = np.arange(len(y))
    stratify = y if min(np.bincount(np.asarray(y, dtype=np.int64), minlength=2)) >= 2 else None
    train, test = train_test_split(idx, test_size=test_size, random_state=seed, stratify=stratify)
    return Split(name, np.sort(train), np.sort(test), {"test_size": test_size, "seed": seed})


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


@dataclass(frozen=True)
class SpatialLayout:
    """What every spatial split of one sample set shares: sample positions, groups, blocks."""

    rows: np.ndarray
    cols: np.ndarray
    y: np.ndarray
    group: np.ndarray
    shape: tuple[int, int]  # the grid (H, W)
    block_cells: int
    buffer: int
    block: np.ndarray  # block index per sample (groups whole)
    block_origin: np.ndarray  # [n_blocks, 2] top-left cell of each block
    info: dict[str, Any]

    @property
    def n_blocks(self) -> int:
        return len(self.block_origin)


def spatial_layout(
    rows: np.ndarray,
    cols: np.ndarray,
    y: np.ndarray,
    group: np.ndarray,
    shape: tuple[int, int],
    block_cells: int | None = None,
    buffer: int = 11,
    min_block: int = 23,
    seed: int = 0,
) -> SpatialLayout:
    """Blocks of ``block_cells`` (or from the variogram) with every group in its centroid's block."""
    info: dict[str, Any] = {}
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
        # at least the largest window, and small enough that the region still has ~25 blocks
        # (with fewer, one test fold is one or two blocks and its score is a coin toss)
        block_cells = int(np.clip(np.ceil(rng_cells), min_block, max(min_block, extent // 5)))
        info["block_rule"] = f"max(variogram range, {min_block}) capped at extent/5"
    info["block_cells"] = int(block_cells)
    info["buffer_cells"] = int(buffer)
    # every member of a group takes the block of the group's centroid
    _, inverse = np.unique(group, return_inverse=True)
    counts = np.bincount(inverse)
    centroid_r = np.bincount(inverse, weights=rows) / counts
    centroid_c = np.bincount(inverse, weights=cols) / counts
    br = (centroid_r[inverse] // block_cells).astype(np.int64)
    bc = (centroid_c[inverse] // block_cells).astype(np.int64)
    keys, block = np.unique(br * 1_000_003 + bc, return_inverse=True)
    origin = np.column_stack([keys // 1_000_003, keys % 1_000_003]) * block_cells
    return SpatialLayout(
        np.asarray(rows), np.asarray(cols), np.asarray(y), np.asarray(group), tuple(shape), int(block_cells),
        int(buffer), block, origin, info,
    )


def buffered(layout: SpatialLayout, name: str, is_test: np.ndarray, within: np.ndarray | None = None) -> Split:
    """Test = ``is_test`` samples; train = the other samples (of ``within``) outside the buffer."""
    pool = np.arange(len(layout.y)) if within is None else np.asarray(within)
    test = pool[is_test[pool]]
    train_all = pool[~is_test[pool]]
    h, w = layout.shape
    area = np.zeros((h, w), dtype=bool)
    b = layout.block_cells
    for k in np.unique(layout.block[test]):
        r0, c0 = layout.block_origin[k]
        area[r0 : r0 + b, c0 : c0 + b] = True
    area[np.clip(layout.rows[test], 0, h - 1), np.clip(layout.cols[test], 0, w - 1)] = True
    # Chebyshev distance <= buffer: a square maximum filter (separable, linear in the grid size)
    near = ndimage.maximum_filter(area, size=2 * layout.buffer + 1) if layout.buffer > 0 else area
    in_buffer = near[layout.rows[train_all], layout.cols[train_all]]
    train = train_all[~in_buffer]
    info = {
        "block_cells": layout.block_cells,
        "buffer_cells": layout.buffer,
        "n_blocks": int(len(np.unique(layout.block[pool]))),
        "n_test_blocks": int(len(np.unique(layout.block[test]))),
        "dropped_in_buffer": int(in_buffer.sum()),
        "dropped_positives": int(layout.y[train_all][in_buffer].sum()),
    }
    return Split(name, np.sort(train), np.sort(test), info)


def _both_classes(y: np.ndarray, train: np.ndarray, test: np.ndarray) -> bool:
    return len(np.unique(y[train])) == 2 and len(np.unique(y[test])) == 2


def blocked_split(
    layout: SpatialLayout,
    test_size: float = 0.2,
    seed: int = 0,
    tries: int = 200,
    within: np.ndarray | None = None,
    name: str = "blocked",
) -> Split:
    """Whole blocks (of the samples in ``within``) to the test set until it holds ~``test_size``,
    then the buffer; the try closest to the target size and the overall class balance wins."""
    pool = np.arange(len(layout.y)) if within is None else np.asarray(within)
    y = layout.y
    blocks = np.unique(layout.block[pool])
    if len(blocks) < 2:
        raise BuildError(
            f"all samples fall in one {layout.block_cells}-cell block; pass a smaller --set block_size="
        )
    rng = np.random.default_rng(seed)
    target = test_size * len(pool)
    counts = np.bincount(layout.block[pool], minlength=layout.n_blocks)
    best: Split | None = None
    best_err = np.inf
    for _ in range(tries):
        order = rng.permutation(blocks)
        k = int(np.searchsorted(np.cumsum(counts[order]), target)) + 1
        is_test = np.isin(layout.block, order[:k])
        split = buffered(layout, name, is_test, pool)
        if not _both_classes(y, split.train, split.test):
            continue
        err = (abs(len(split.test) - target) / target + abs(y[split.test].mean() - y[pool].mean())
               + 0.5 * split.info["dropped_in_buffer"] / len(pool))
        if err < best_err:
            best, best_err = split, err
    if best is None:
        raise BuildError(
            "could not find a blocked split with both classes on each side; pass --set block_size= (smaller)"
        )
    best.info.update(test_size=test_size, seed=seed, **layout.info)
    return best


def spatial_kfold(layout: SpatialLayout, folds: int = 5, repeats: int = 3, seed: int = 0, tries: int = 50) -> list[Split]:
    """``repeats`` x ``folds`` buffered splits; in each repeat every block is tested once.

    Blocks are dealt to folds at random, each to the fold with the fewest samples so far, and a
    deal is redrawn until every fold has both classes on both sides.
    """
    y = layout.y
    counts = np.bincount(layout.block, minlength=layout.n_blocks)
    if layout.n_blocks < folds:
        raise BuildError(
            f"{layout.n_blocks} blocks of {layout.block_cells} cells cannot make {folds} folds; "
            "pass a smaller --set block_size= or --set cv_folds="
        )
    rng = np.random.default_rng(seed)
    out: list[Split] = []
    for r in range(repeats):
        for _ in range(tries):
            fold_of = np.empty(layout.n_blocks, dtype=np.int64)
            load = np.zeros(folds)
            for k in rng.permutation(layout.n_blocks):
                f = int(np.argmin(load + rng.random(folds) * 1e-6))
                fold_of[k] = f
                load[f] += counts[k]
            splits = [buffered(layout, f"cv-r{r + 1}-f{f + 1}", fold_of[layout.block] == f) for f in range(folds)]
            if all(_both_classes(y, s.train, s.test) for s in splits):
                break
        else:
            raise BuildError(
                "could not deal blocks into folds with both classes in each; pass --set cv_folds= (fewer) "
                "or --set block_size= (smaller)"
            )
        for s in splits:
            s.info.update(repeat=r + 1, **layout.info)
        out.extend(splits)
    return out
