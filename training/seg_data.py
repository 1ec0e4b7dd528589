"""One split's data for the segmentation network, from a region scene or a chip folder.

:func:`scene_split_data` and :func:`chip_split_data` both return a :class:`SplitData`: a sampler of
training chips (the fit part), another for the refit (fit + validation), normalised windows that
score each epoch on the validation part, and functions that predict the fit, validation and test
pixels with a trained network and return an :class:`Evaluation` (labels, probabilities and the
test chip each pixel belongs to, for bootstrap intervals).

Normalisation (:mod:`slidemap.compute.maps.image_norm`) is robust and per image: a region's scene is
normalised by its own percentiles (the unlabelled statistics of the whole image, as ``detect`` does
on any new scene), a chip by its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from slidemap.compute.maps.image_norm import BandStats, apply_stats, image_stats, robust_spec
from slidemap.compute.region.image_files import IGNORE
from slidemap.errors import InputError
from slidemap.training import scene as sc
from slidemap.training.chips import ChipSampler, ChipSet, chip_buffer, random_chip_split, split_chips

EVAL_MARGIN = 32  # px of context around each scored cell of a scene
SCENE_EPOCH_CHIPS = 64  # a scene has no list of chips: an epoch is this many random chips
MAX_MONITOR_WINDOWS = 24  # validation windows scored at each validation (a seeded subset on large scenes)
MAX_FIT_CELLS = 32  # fit-part cells scored to carry a refit's threshold: a share needs a sample, not the scene
MAX_FIT_CHIPS = 512  # the same for a chip folder's fit chips (the L4S folder's 438 are all scored)


class Sampler(Protocol):
    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]: ...

    def balance_report(self) -> dict[str, Any]: ...


@dataclass
class Evaluation:
    """Valid pixels of one held-out part: labels (0/1), probabilities and the chip (unit) of each."""

    labels: np.ndarray  # uint8 [n]
    prob: np.ndarray  # float32 [n]
    unit: np.ndarray  # int64 [n]

    def counts_by_unit(self, threshold: float) -> np.ndarray:
        """``[units, 4]`` confusion counts (tp, fp, fn, tn) per unit at ``threshold``."""
        units, inverse = np.unique(self.unit, return_inverse=True)
        pred = self.prob >= threshold
        y = self.labels == 1
        out = np.zeros((len(units), 4), dtype=np.int64)
        for k, sel in enumerate((y & pred, ~y & pred, y & ~pred, ~y & ~pred)):
            out[:, k] = np.bincount(inverse[sel], minlength=len(units))
        return out


Predictor = Callable[[Any], Evaluation]


@dataclass
class SplitData:
    kind: str
    bands: list[str]
    chip: int
    sampler: Sampler
    refit_sampler: Sampler | None
    val_x: np.ndarray  # normalised windows [N, S, S, C]
    val_y: np.ndarray  # [N, S, S]: 255 outside each window's own scored cell
    predict_val: Predictor
    predict_test: Predictor
    normalisation: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)
    epoch_chips: int = 64  # chips per epoch unless the config says otherwise (scene: fixed; folder: one pass)
    refit_epoch_chips: int = 64
    fit_arrays: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None  # (x [N,H,W,C], y [N,H,W]) for pixel baselines
    # the fit part's pixels, where the first fit and the refit both trained (the refit's threshold
    # keeps the first fit's operating point there: seg_metrics.carry_operating_point)
    predict_fit: Predictor | None = None


def predict_windows(model: Any, x: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """Probabilities ``[N, H, W]`` for normalised windows ``[N, H, W, C]``."""
    out = [np.asarray(model.predict_on_batch(x[i : i + batch_size]))[..., 0] for i in range(0, len(x), batch_size)]
    return np.concatenate(out, axis=0).astype(np.float32) if out else np.zeros(x.shape[:3], np.float32)


# ---- scenes --------------------------------------------------------------------------------
def _cell_units(shape: tuple[int, int], cell: int) -> np.ndarray:
    h, w = shape
    nc = -(-w // cell)
    return (np.arange(h)[:, None] // cell) * nc + (np.arange(w)[None, :] // cell)


def predict_scene_cells(model: Any, z: np.ndarray, mask: np.ndarray, cell: int, margin: int = EVAL_MARGIN,
                        batch_size: int = 8) -> np.ndarray:
    """Probability map ``[H, W]`` (NaN outside ``mask``): one window of ``cell + 2 margin`` px per cell
    of a regular grid that holds a ``mask`` pixel, each scoring only its own cell."""
    h, w = mask.shape
    side = cell + 2 * margin
    if h < side or w < side:  # a tiny scene: one window of the largest multiple of 16 that fits
        side = max(16, min(h, w) // 16 * 16)
        cell, margin = side, 0
    wins = sc.eval_windows(mask, cell, margin) if side == cell + 2 * margin else []
    out = np.full((h, w), np.nan, dtype=np.float32)
    for k in range(0, len(wins), batch_size):
        group = wins[k : k + batch_size]
        x = np.stack([z[r0 : r0 + side, c0 : c0 + side] for r0, c0, _, _ in group])
        prob = predict_windows(model, x, batch_size)
        for p, (r0, c0, r, c) in zip(prob, group, strict=True):
            rr, cc = r - r0, c - c0
            block = p[rr : rr + cell, cc : cc + cell]
            out[r : r + block.shape[0], c : c + block.shape[1]] = block
    out[~mask] = np.nan
    return out


def sample_cells(mask: np.ndarray, cell: int, most: int, seed: int) -> np.ndarray:
    """``mask`` kept on at most ``most`` cells of a regular ``cell``-px grid (a seeded choice of those
    that hold a ``mask`` pixel; all of them when there are no more)."""
    units = _cell_units(mask.shape, cell)
    held = np.unique(units[mask])
    if len(held) <= most:
        return mask
    chosen = np.random.default_rng(seed).choice(held, most, replace=False)
    return mask & np.isin(units, chosen)


def _scene_evaluator(z: np.ndarray, labels: np.ndarray, mask: np.ndarray, cell: int, unit_cell: int) -> Predictor:
    units = _cell_units(labels.shape, unit_cell)
    keep = mask & (labels != IGNORE)

    def evaluate(model: Any) -> Evaluation:
        prob = predict_scene_cells(model, z, keep, cell)
        ok = keep & np.isfinite(prob)
        return Evaluation(labels[ok].astype(np.uint8), prob[ok], units[ok].astype(np.int64))

    return evaluate


def scene_split_data(scene: sc.Scene, kind: str, chip: int, buffer: int, seed: int,
                     positive_share: float, exclude: np.ndarray | None = None) -> SplitData:
    """Blocked (or random) split of a scene, normalised by the scene's own robust statistics.

    ``exclude`` (bool ``[H, W]``) marks pixels no part of this split may train or validate on (the
    other split's test pixels, when a search is shared).
    """
    split_ = sc.split_scene(scene, kind, chip=chip, buffer=buffer, seed=seed)
    stats = image_stats(scene.image, channel_axis=0)
    z = apply_stats(np.moveaxis(scene.image, 0, -1), stats)  # [H, W, C], NaN -> 0
    roles = split_.roles
    test = roles == sc.TEST
    val = roles == sc.VALIDATION
    train_labels = split_.train_labels
    if exclude is not None:
        train_labels = np.where(exclude, IGNORE, train_labels).astype(np.uint8)
        val = val & ~exclude
    held_out = test if exclude is None else test | exclude  # another split's test: held out here too
    z_fit = z.copy()
    z_fit[held_out | val] = 0.0  # held-out imagery never enters training, nor does its label
    z_val = z.copy()
    z_val[held_out] = 0.0
    refit_labels = refit_training_labels(scene.labels, roles, buffer)
    if exclude is not None:
        refit_labels = np.where(exclude, IGNORE, refit_labels).astype(np.uint8)
    sampler = sc.SceneSampler(z_fit, train_labels, chip, positive_share)
    refit = sc.SceneSampler(z_val, refit_labels, chip, positive_share)
    margin = 16
    wins = sc.eval_windows(val & (scene.labels != IGNORE), chip, margin) if val.any() else []
    if len(wins) > MAX_MONITOR_WINDOWS:  # every validation pays for these; the final threshold uses all of val
        keep = np.random.default_rng(seed).choice(len(wins), MAX_MONITOR_WINDOWS, replace=False)
        wins = [wins[i] for i in sorted(keep)]
    if wins:
        val_x, val_y = sc.window_stack(z_val, scene.labels, val, wins, chip, margin)
    else:
        val_x = np.zeros((0, chip + 2 * margin, chip + 2 * margin, z.shape[-1]), np.float32)
        val_y = np.zeros((0, chip + 2 * margin, chip + 2 * margin), np.uint8)
    norm = robust_spec(scene.bands, "scene", stats, scene.source.get("units", "reflectance"))
    cell = 2 * chip
    fit_cells = sample_cells(train_labels != IGNORE, cell, MAX_FIT_CELLS, seed)
    summary = {**split_.summary, "normalisation_scope": "scene", "monitor_windows": len(wins),
               "training_pixels": int((train_labels != IGNORE).sum()),
               "refit_training_pixels": int((refit_labels != IGNORE).sum())}
    return SplitData(
        kind=kind, bands=list(scene.bands), chip=chip, sampler=sampler, refit_sampler=refit,
        val_x=val_x, val_y=val_y,
        predict_val=_scene_evaluator(z_val, scene.labels, val, cell, chip),
        predict_test=_scene_evaluator(z, scene.labels, test, cell, chip),
        predict_fit=lambda model: _scene_evaluator(z_fit, train_labels, fit_cells, cell, chip)(model),
        normalisation=norm, summary=summary,
        fit_arrays=lambda: (z_fit[None], train_labels[None]),
        epoch_chips=SCENE_EPOCH_CHIPS, refit_epoch_chips=SCENE_EPOCH_CHIPS,
    )


def refit_training_labels(labels: np.ndarray, roles: np.ndarray, buffer: int) -> np.ndarray:
    """Training labels for the refit: train and validation pixels, with the ring and the whole-landslide
    rule applied around the test blocks only."""
    test = roles == sc.TEST
    ring = sc._dilate(test, buffer) & ~test
    usable = (roles != IGNORE) & ~test & ~ring
    ids, _ = sc.landslide_areas(labels)
    touching = np.unique(ids[(ids > 0) & ~usable])
    cut = np.isin(ids, touching)
    return np.where(usable & ~cut, labels, IGNORE).astype(np.uint8)


# ---- chip folders --------------------------------------------------------------------------
def normalise_chips(images: np.ndarray, scope: str, reference: BandStats | None = None) -> np.ndarray:
    """Robust normalisation of chips ``[N, H, W, C]``: each by its own statistics, or all by ``reference``."""
    if scope == "chip":
        return np.stack([apply_stats(im, image_stats(im, channel_axis=-1)) for im in images]).astype(np.float32)
    assert reference is not None
    return apply_stats(images, reference)


def _chip_evaluator(x: np.ndarray, masks: np.ndarray, idx: np.ndarray) -> Predictor:
    def evaluate(model: Any) -> Evaluation:
        prob = predict_windows(model, x)
        m = masks
        ok = (m != IGNORE) & np.isfinite(prob)
        units = np.broadcast_to(idx[:, None, None], m.shape)
        return Evaluation((m[ok] == 1).astype(np.uint8), prob[ok], units[ok].astype(np.int64))

    return evaluate


def carve_validation(chips: ChipSet, idx: np.ndarray, kind: str, seed: int, buffer: int) -> tuple[np.ndarray, np.ndarray]:
    """Split training indices into fit / validation parts the way the test split was made."""
    sub = chips.subset(idx)
    try:
        fit, val = split_chips(sub, kind, 0.2, seed + 1, buffer)
    except Exception:  # too few blocks inside the training part: random chips instead
        fit, val = random_chip_split(len(sub), 0.2, seed + 1)
    if len(fit) == 0 or len(val) == 0:
        fit, val = random_chip_split(len(sub), 0.2, seed + 1)
    return idx[fit], idx[val]


def chip_split_data(chips: ChipSet, kind: str, seed: int, positive_share: float, scope: str = "chip",
                    buffer: int | None = None, exclude: np.ndarray | None = None) -> SplitData:
    """Blocked (index or location blocks, with a buffer) or random split of a chip folder.

    ``exclude`` (indices) are chips that may neither train nor validate (another split's test chips).
    """
    buffer = chip_buffer(chips) if buffer is None else buffer
    train_idx, test_idx = split_chips(chips, kind, 0.2, seed, buffer if kind == "blocked" else 0)
    if exclude is not None and len(exclude):
        train_idx = np.setdiff1d(train_idx, exclude)
    fit_idx, val_idx = carve_validation(chips, train_idx, kind, seed, buffer if kind == "blocked" else 0)
    if min(len(fit_idx), len(val_idx), len(test_idx)) == 0:
        unit = "px" if chips.source.get("georeferenced") else "index positions"
        gap = f" with a buffer of {buffer} {unit} between the parts" if kind == "blocked" else ""
        raise InputError(f"{chips.source.get('path', 'chip folder')}: {len(chips)} chips leave {len(fit_idx)} to fit, "
                         f"{len(val_idx)} to validate and {len(test_idx)} to test on a {kind} split{gap}; "
                         "add chips (a few dozen at least) or lower --buffer")
    reference = image_stats(chips.images[fit_idx], channel_axis=-1)  # pooled training chips
    x = normalise_chips(chips.images, scope, reference)
    norm = robust_spec(chips.bands, scope, reference, chips.source.get("units", "file"))
    sampler = ChipSampler(x[fit_idx], chips.masks[fit_idx], positive_share)
    refit_idx = np.union1d(fit_idx, val_idx)
    fit_sample = fit_idx if len(fit_idx) <= MAX_FIT_CHIPS else np.sort(
        np.random.default_rng(seed).choice(fit_idx, MAX_FIT_CHIPS, replace=False))
    refit = ChipSampler(x[refit_idx], chips.masks[refit_idx], positive_share)
    summary = {"kind": kind, "seed": int(seed), "chips": {"fit": int(len(fit_idx)), "validation": int(len(val_idx)),
                                       "test": int(len(test_idx)), "dropped_by_buffer": int(len(chips) - len(test_idx) - len(train_idx))},
               "buffer": f"{buffer} {'px' if chips.source.get('georeferenced') else 'index positions'}"
               if kind == "blocked" else "none",
               "blocking": chips.source.get("blocking"), "normalisation_scope": scope,
               "landslide_pixels": {"fit": int((chips.masks[fit_idx] == 1).sum()),
                                    "validation": int((chips.masks[val_idx] == 1).sum()),
                                    "test": int((chips.masks[test_idx] == 1).sum())}}
    return SplitData(
        kind=kind, bands=list(chips.bands), chip=int(chips.images.shape[1]), sampler=sampler, refit_sampler=refit,
        val_x=x[val_idx], val_y=chips.masks[val_idx],
        predict_val=_chip_evaluator(x[val_idx], chips.masks[val_idx], val_idx),
        predict_test=_chip_evaluator(x[test_idx], chips.masks[test_idx], test_idx),
        predict_fit=lambda model: _chip_evaluator(x[fit_sample], chips.masks[fit_sample], fit_sample)(model),
        normalisation=norm, summary=summary,
        fit_arrays=lambda: (x[fit_idx], chips.masks[fit_idx]),
        epoch_chips=int(len(fit_idx)), refit_epoch_chips=int(len(refit_idx)),
    )
