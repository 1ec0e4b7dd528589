"""The fast form of a window 3D-CNN: a dense network trained to reproduce it (distillation).

A window model needs one 3D-CNN pass per cell; its fast form (:func:`slidemap.training.lsm_networks.build_dense_fcn`)
maps a whole block in one pass. No labels are needed to train it -- every valid cell of the region
is an example, its target the window model's probability there -- so it learns the window model,
not the inventory:

1. ``fast_cells`` valid cells scattered over the region, and the window model's probability at each;
2. ``fast_steps`` Adam steps on batches of ``fast_batch`` crops (``fast_patch`` cells a side, plus the
   11-cell halo) holding targets, each under a random symmetry of the square (the aspect turned with
   it), minimising the cross-entropy to the soft targets;
3. agreement, measured on cells that were not targets: Pearson r between the two maps (and, as
   ``pearson_r_fit``, on the targets: far above the other means the targets were too few) and the
   ROC-AUC of each on the blocked test samples; and both paths' cells per second in this process.

Tiles of the window model come from its fast form only when the agreement holds (``fast_agreement``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from slidemap.training.window_augment import transform_direction
from slidemap.training.lsm_networks import (
    DENSE_HALO,
    build_dense_fcn,
    centre_linear_weights,
    set_centre_linear,
)
from slidemap.compute.models.runtime import compiled_predict
from slidemap.training.lsm_config import LsmConfig
from slidemap.training.lsm_fit import FittedModel, StackCache, predict_cells
from slidemap.training.samples import RegionData, SampleSet

log = logging.getLogger(__name__)


@dataclass
class FastForm:
    model: Any
    pearson_r: float
    pearson_r_fit: float  # on the cells it was trained on: far above pearson_r means too few cells
    agreement_cells: int
    auc_window: float
    auc_fast: float
    cells_per_s_window: float
    cells_per_s_fast: float
    target_cells: int
    steps: int
    seconds: float
    region_map: np.ndarray  # the fast form's probability over the region (NaN off valid cells)

    @property
    def auc_diff(self) -> float:
        return self.auc_fast - self.auc_window

    @property
    def speedup(self) -> float:
        return self.cells_per_s_fast / self.cells_per_s_window if self.cells_per_s_window else float("nan")

    def card(self, threshold_r: float) -> dict[str, Any]:
        return {
            "pearson_r": round(self.pearson_r, 4),
            "pearson_r_fit": round(self.pearson_r_fit, 4),
            "agreement_cells": self.agreement_cells,
            "auc_window": round(self.auc_window, 4),
            "auc_fast": round(self.auc_fast, 4),
            "auc_diff": round(self.auc_diff, 4),
            "cells_per_s_window": round(self.cells_per_s_window, 1),
            "cells_per_s_fast": round(self.cells_per_s_fast, 1),
            "speedup": round(self.speedup, 1),
            "target_cells": self.target_cells,
            "steps": self.steps,
            "seconds": round(self.seconds, 1),
            "use": bool(self.pearson_r >= threshold_r),
            "rule": f"tiles come from the fast form when Pearson r >= {threshold_r} over cells it was not trained on",
        }


def dense_map(model: Any, encoded: np.ndarray, valid: np.ndarray, block: int = 256) -> np.ndarray:
    """The fast form's probability over the whole region, block by block (outside = 0, as the
    window extractor reads it); NaN where a factor is missing."""
    predict = compiled_predict(model)
    c, h, w = encoded.shape
    halo = DENSE_HALO
    padded = np.zeros((h + 2 * halo + block, w + 2 * halo + block, c), dtype=np.float32)
    padded[halo : halo + h, halo : halo + w] = encoded.transpose(1, 2, 0)
    out = np.full((h, w), np.nan, dtype=np.float32)
    for r in range(0, h, block):
        for col in range(0, w, block):
            tile = padded[r : r + block + 2 * halo, col : col + block + 2 * halo][np.newaxis]
            prob = predict(tile)[0, :, :, 0]
            hh, ww = min(block, h - r), min(block, w - col)
            out[r : r + hh, col : col + ww] = prob[:hh, :ww]
    out[~valid] = np.nan
    return out


def distil(
    fitted: FittedModel, stacks: StackCache, cfg: LsmConfig, test: SampleSet, seed: int, p_test_window: np.ndarray
) -> FastForm:
    """Train ``fitted``'s fast form (see the module docstring)."""
    import keras
    import tensorflow as tf

    t0 = time.perf_counter()
    data: RegionData = stacks.data
    rng = np.random.default_rng(seed)
    valid = data.valid
    h, w = valid.shape
    patch = int(min(cfg.fast_patch, h, w))
    # 1. targets ----------------------------------------------------------------------------------
    # Scattered cells, not whole crops: the window model's cost is per target cell, and a budget
    # spread over the region teaches the student every kind of ground; a few contiguous crops of the
    # same budget were fitted (r ~0.99) but did not carry over to the rest of the region (~0.93-0.98).
    n_valid = int(valid.sum())
    flat_valid = np.flatnonzero(valid.ravel())
    picked = rng.choice(flat_valid, size=min(cfg.fast_cells, n_valid), replace=False)
    target_cells = np.zeros(valid.size, dtype=bool)
    target_cells[picked] = True
    target_cells = target_cells.reshape(valid.shape)
    # crops with at least one target (the student computes every cell; the loss reads the targets)
    per_origin = np.lib.stride_tricks.sliding_window_view(np.pad(np.cumsum(np.cumsum(
        target_cells, 0), 1), ((1, 0), (1, 0))), (patch + 1, patch + 1))
    counts = (per_origin[..., -1, -1] - per_origin[..., 0, -1] - per_origin[..., -1, 0] + per_origin[..., 0, 0])
    origins = [tuple(int(v) for v in o) for o in np.argwhere(counts > 0)]
    tr, tc = np.nonzero(target_cells)
    t1 = time.perf_counter()
    targets_flat = predict_cells(fitted, stacks, tr, tc)
    window_rate = len(tr) / max(time.perf_counter() - t1, 1e-9)
    target = np.zeros((h, w), dtype=np.float32)
    target[tr, tc] = targets_flat
    # 2. training -------------------------------------------------------------------------------
    enc = data.encoding
    sin_i = next((i for i, ch in enumerate(enc.channels) if ch.kind == "sin"), None)
    cos_i = next((i for i, ch in enumerate(enc.channels) if ch.kind == "cos"), None)
    halo = DENSE_HALO
    padded = np.zeros((h + 2 * halo, w + 2 * halo, len(enc.channels)), dtype=np.float32)
    padded[halo : halo + h, halo : halo + w] = data.encoded.transpose(1, 2, 0)
    keras.utils.set_random_seed(seed)
    teacher_linear = centre_linear_weights(fitted.model)
    model = build_dense_fcn(len(enc.channels), width=cfg.fast_width, dense=cfg.fast_dense,
                            name=f"{fitted.name}_fast", seed=seed, centre_linear=teacher_linear is not None)
    if teacher_linear is not None:  # the window model's linear path, copied: the student learns the rest
        set_centre_linear(model, *teacher_linear)
    schedule = keras.optimizers.schedules.CosineDecay(cfg.fast_lr, decay_steps=cfg.fast_steps, alpha=0.05)
    optimizer = keras.optimizers.Adam(learning_rate=schedule)

    @tf.function(reduce_retracing=True)
    def step(x: Any, y: Any, m: Any) -> Any:
        with tf.GradientTape() as tape:
            p = tf.clip_by_value(model(x, training=True)[..., 0], 1e-6, 1 - 1e-6)
            loss = -(y * tf.math.log(p) + (1 - y) * tf.math.log(1 - p))
            loss = tf.reduce_sum(loss * m) / tf.maximum(tf.reduce_sum(m), 1.0)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    side = patch + 2 * halo
    for _ in range(cfg.fast_steps):
        pick = rng.integers(0, len(origins), cfg.fast_batch)
        xs = np.empty((cfg.fast_batch, side, side, len(enc.channels)), dtype=np.float32)
        ys = np.empty((cfg.fast_batch, patch, patch), dtype=np.float32)
        ms = np.empty((cfg.fast_batch, patch, patch), dtype=np.float32)
        for b, k in enumerate(pick):
            r, c = origins[k]
            x = padded[r : r + side, c : c + side]
            y, m = target[r : r + patch, c : c + patch], target_cells[r : r + patch, c : c + patch]
            sym = int(rng.integers(0, 8))
            xs[b], ys[b], ms[b] = _symmetry(x, sym, sin_i, cos_i), _symmetry(y, sym), _symmetry(m, sym)
        step(tf.constant(xs), tf.constant(ys), tf.constant(ms))
    # 3. agreement --------------------------------------------------------------------------------
    # timed warm, as the window path's rate is (its model was compiled when it was scored): the
    # first call traces and compiles the graph, which on a small region costs more than the map
    dense_map(model, data.encoded[:, : min(h, 8), : min(w, 8)], valid[: min(h, 8), : min(w, 8)])
    t2 = time.perf_counter()
    region_map = dense_map(model, data.encoded, valid)
    fast_rate = n_valid / max(time.perf_counter() - t2, 1e-9)
    held = np.flatnonzero((valid & ~target_cells).ravel())
    if len(held) == 0:  # a tiny region: every cell was a target; say so by measuring on them
        held = np.flatnonzero(valid.ravel())
    held = np.sort(rng.choice(held, size=min(cfg.agreement_cells, len(held)), replace=False))
    hr, hc = np.unravel_index(held, valid.shape)
    p_window = predict_cells(fitted, stacks, hr, hc)
    p_fast = region_map[hr, hc]
    r_value = _pearson(p_window, p_fast)
    r_fit = _pearson(targets_flat, region_map[tr, tc])
    both = len(np.unique(test.y)) == 2
    auc_window = float(roc_auc_score(test.y, p_test_window)) if both else float("nan")
    auc_fast = float(roc_auc_score(test.y, region_map[test.rows, test.cols])) if both else float("nan")
    return FastForm(
        model=model, pearson_r=r_value, pearson_r_fit=r_fit, agreement_cells=len(held), auc_window=auc_window, auc_fast=auc_fast,
        cells_per_s_window=window_rate, cells_per_s_fast=fast_rate, target_cells=len(tr), steps=cfg.fast_steps,
        seconds=time.perf_counter() - t0, region_map=region_map,
    )


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1]) if np.std(a) > 0 and np.std(b) > 0 else 0.0


def _symmetry(a: np.ndarray, k: int, sin_i: int | None = None, cos_i: int | None = None) -> np.ndarray:
    """Element ``k`` of the square's symmetry group on ``[rows, cols, ...]`` (see augment.py)."""
    out = a[:, ::-1] if k >= 4 else a
    out = np.rot90(out, k % 4, axes=(0, 1))
    if sin_i is not None and cos_i is not None:
        out = out.copy()
        out[..., sin_i], out[..., cos_i] = transform_direction(out[..., sin_i], out[..., cos_i], k)
    return out
