"""A region's imagery as one scene: spatial splits with buffers, for any region from 4 km up.

The network trains on chips, but a region is one image, so the split is made on the image, not on
a list of chips (cutting chips first and splitting them later leaves a small region with almost
nothing on one side once overlapping chips are dropped):

1. the scene is cut into square blocks (:func:`block_size`: about a fifth of the shorter side,
   64-256 px); whole blocks go to the test side (about 20 % of the valid pixels) and to the
   validation side (about 20 % of the rest). Among seeded candidate assignments the one whose
   landslide shares are closest to those area shares is kept, so both held-out sides have
   landslides;
2. a buffer ring of ``buffer`` px around the held-out blocks is used by nobody, and a landslide
   (8-connected area) that reaches into a held-out block or its ring is left out of training whole,
   so no landslide is on both sides of a boundary;
3. training chips are cut anywhere (:class:`SceneSampler`), with held-out pixels blanked to no data
   in the input and every pixel that is not a training pixel ignored in the loss; test and validation
   are scored on their own pixels, predicted over the whole scene the way ``detect`` does.

The ``random`` split (the paper's random chips, leaky on purpose, reported beside the blocked one
to show the leak) uses chip-sized blocks and no buffer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.compute.region.image_files import IGNORE
from slidemap.compute.region.layout import RegionLayout
from slidemap.errors import BuildError

TRAIN, VALIDATION, TEST, BUFFER = 0, 1, 2, 3
ROLE_NAMES = {TRAIN: "train", VALIDATION: "validation", TEST: "test", BUFFER: "buffer"}
TEST_FRACTION = 0.2
VALIDATION_FRACTION = 0.2  # of what is left after the test side
MIN_LANDSLIDES = {"train": 6, "validation": 2, "test": 2}  # connected landslide areas per side
CANDIDATES = 64  # seeded block assignments tried; the best-stratified one is kept


@dataclass
class Scene:
    """One region's imagery (float32 ``[C, H, W]``, NaN = no data) and labels (uint8 ``[H, W]``)."""

    image: np.ndarray
    labels: np.ndarray
    bands: list[str]
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape  # type: ignore[return-value]

    @property
    def synthetic(self) -> bool:
        return bool(self.source.get("synthetic", False))

    def fingerprint(self) -> str:
        import hashlib
        import json

        digest = hashlib.sha256(json.dumps(self.bands).encode())
        digest.update(np.ascontiguousarray(self.image).tobytes())
        digest.update(np.ascontiguousarray(self.labels).tobytes())
        return digest.hexdigest()


def scene_from_region(region_dir: str | Path, bands: list[str] | None = None) -> Scene:
    """Read ``build/imagery.tif`` and ``build/labels_imagery.tif`` whole (a 20 km region: 64 MB)."""
    import rasterio

    from slidemap.training.chips import region_is_synthetic

    region_dir = Path(region_dir)
    layout = RegionLayout.of(region_dir)
    imagery, labels_path = layout.imagery_tif, layout.labels_imagery_tif
    for path in (imagery, labels_path):
        if not path.is_file():
            raise BuildError(f"{path}: missing; run `slidemap prepare {region_dir}` (needs imagery and an inventory)")
    with rasterio.open(imagery) as src:
        names = [d or f"B{i + 1}" for i, d in enumerate(src.descriptions)]
        wanted = list(bands) if bands else names
        missing = [b for b in wanted if b not in names]
        if missing:
            raise BuildError(f"{imagery}: bands {missing} not present (has {names}); choose --bands from these")
        img = src.read([names.index(b) + 1 for b in wanted]).astype(np.float32)
        if src.nodata is not None and not np.isnan(src.nodata):
            img[img == src.nodata] = np.nan
    with rasterio.open(labels_path) as src:
        lab = src.read(1)
    if lab.shape != img.shape[1:]:
        raise BuildError(f"{labels_path}: shape {lab.shape} differs from {imagery} {img.shape[1:]}; rerun prepare")
    lab = lab.copy()
    lab[(lab != IGNORE) & (lab > 0)] = 1
    lab[~np.isfinite(img).all(axis=0)] = IGNORE
    return Scene(img, lab.astype(np.uint8), wanted, {
        "kind": "region", "path": str(region_dir.resolve()), "synthetic": region_is_synthetic(region_dir),
        "units": "reflectance", "imagery": str(imagery), "labels": str(labels_path),
    })


def landslide_areas(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected landslide areas: ``(ids [H, W] int32, count)``."""
    from scipy import ndimage

    ids, n = ndimage.label(labels == 1, structure=np.ones((3, 3), dtype=bool))
    return ids.astype(np.int32), int(n)


def block_size(shape: tuple[int, int], chip: int) -> int:
    """About a fifth of the shorter side, between half a chip and two chips (64-256 px for 128 px chips)."""
    return int(np.clip(min(shape) // 5, max(16, chip // 2), 2 * chip))


@dataclass
class SceneSplit:
    """Pixel roles (``TRAIN``, ``VALIDATION``, ``TEST``, ``BUFFER``; 255 = no data) and what they hold."""

    kind: str
    roles: np.ndarray  # uint8 [H, W]
    train_labels: np.ndarray  # uint8 [H, W]: labels on training pixels, 255 elsewhere
    block: int
    buffer: int
    summary: dict[str, Any]

    def mask(self, role: int) -> np.ndarray:
        return self.roles == role


def _grid(shape: tuple[int, int], block: int) -> tuple[np.ndarray, int, int]:
    h, w = shape
    nr, nc = -(-h // block), -(-w // block)
    rows = np.minimum(np.arange(h) // block, nr - 1)
    cols = np.minimum(np.arange(w) // block, nc - 1)
    return rows[:, None] * nc + cols[None, :], nr, nc


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask.copy()
    from scipy import ndimage

    return ndimage.binary_dilation(mask, structure=np.ones((3, 3), dtype=bool), iterations=radius)


def _assign(area: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One candidate: a role per block (test first, then validation) by seeded random order;
    ``area`` is each block's count of valid pixels."""
    n_blocks = len(area)
    roles = np.full(n_blocks, TRAIN, dtype=np.uint8)
    order = rng.permutation(np.flatnonzero(area > 0))
    total = area.sum()
    taken = 0.0
    test_target = TEST_FRACTION * total
    val_target = VALIDATION_FRACTION * (1 - TEST_FRACTION) * total
    for b in order:
        if taken < test_target:
            roles[b] = TEST
        elif taken < test_target + val_target:
            roles[b] = VALIDATION
        else:
            break
        taken += area[b]
    return roles


def split_scene(scene: Scene, kind: str = "blocked", chip: int = 128, buffer: int = 16, seed: int = 0,
                min_landslides: dict[str, int] | None = None) -> SceneSplit:
    """Assign every pixel a role (see the module docstring); raise BuildError when a side lacks landslides."""
    if kind not in ("blocked", "random"):
        raise ValueError(f"unknown split {kind!r}")
    need = dict(MIN_LANDSLIDES if min_landslides is None else min_landslides)
    labels = scene.labels
    valid = labels != IGNORE
    if kind == "random":
        block, buffer = max(16, chip // 2), 0
    else:
        block = block_size(scene.shape, chip)
    block_ids, nr, nc = _grid(scene.shape, block)
    n_blocks = nr * nc
    slide = labels == 1
    ids, n_areas = landslide_areas(labels)
    where = scene.source.get("labels") or scene.source.get("path") or "the region"
    total_need = sum(need.values())
    if n_areas < total_need:
        raise BuildError(
            f"{where}: only {n_areas} landslide areas; a {kind} split needs at least {total_need} "
            f"({need['train']} to train on, {need['validation']} to validate, {need['test']} to test); "
            "add landslides to the inventory or use a larger region"
        )
    slide_per_block = np.bincount(block_ids[slide], minlength=n_blocks).astype(np.float64)
    area_per_block = np.bincount(block_ids[valid], minlength=n_blocks).astype(np.float64)
    rng = np.random.default_rng(seed)
    best: tuple[float, np.ndarray] | None = None
    for _ in range(CANDIDATES):
        roles_b = _assign(area_per_block, rng)
        share = {r: slide_per_block[roles_b == r].sum() / max(slide_per_block.sum(), 1) for r in (TEST, VALIDATION)}
        area = {r: area_per_block[roles_b == r].sum() / max(area_per_block.sum(), 1) for r in (TEST, VALIDATION)}
        # stratification: held-out landslide shares close to the held-out area shares
        score = sum(abs(share[r] - area[r]) for r in (TEST, VALIDATION))
        if min(share.values()) == 0:
            score += 10.0
        if best is None or score < best[0]:
            best = (score, roles_b)
    assert best is not None
    roles = best[1][block_ids]
    held_out = (roles == TEST) | (roles == VALIDATION)
    ring = _dilate(held_out, buffer) & ~held_out
    roles = roles.astype(np.uint8)
    roles[ring] = BUFFER
    roles[~valid] = IGNORE
    train = roles == TRAIN
    # a landslide that reaches a held-out block or its ring is left out of training whole
    touching = np.unique(ids[(ids > 0) & ~train])
    cut = np.isin(ids, touching) & train
    train_labels = np.where(train & ~cut, labels, IGNORE).astype(np.uint8)

    def count(mask: np.ndarray) -> int:
        return int(len(np.unique(ids[mask & (ids > 0)])))

    counts = {"train": count(train_labels == 1), "validation": count(roles == VALIDATION),
              "test": count(roles == TEST)}
    short = [f"{side} {counts[side]} (needs {need[side]})" for side in need if counts[side] < need[side]]
    if short:
        raise BuildError(
            f"{where}: too few landslide areas on each side of the {kind} split: {', '.join(short)}; "
            f"the region has {n_areas} landslide areas and needs about {total_need + 4} or more spread over it; "
            "add landslides to the inventory or use a larger region"
        )
    n_valid = max(int(valid.sum()), 1)
    summary = {
        "kind": kind,
        "seed": int(seed),  # with the region, the seed re-creates the split (which blocks are held out)
        "block_px": int(block),
        "buffer_px": int(buffer),
        "blocks": {ROLE_NAMES[r]: int((best[1] == r).sum()) for r in (TRAIN, VALIDATION, TEST)},
        "pixel_share": {ROLE_NAMES[r]: round(float((roles == r).sum()) / n_valid, 4)
                        for r in (TRAIN, VALIDATION, TEST, BUFFER)},
        "landslide_areas": counts,
        "landslide_pixels": {"train": int((train_labels == 1).sum()),
                             "validation": int((slide & (roles == VALIDATION)).sum()),
                             "test": int((slide & (roles == TEST)).sum())},
        "left_out_of_training": {"landslide_areas_cut_by_a_boundary": int(len(np.unique(ids[cut]))),
                                 "pixels": int(cut.sum())},
        "rule": (f"square blocks of {block} px; test about {TEST_FRACTION:.0%} and validation about "
                 f"{VALIDATION_FRACTION:.0%} of the rest, stratified by landslide share; a {buffer} px ring "
                 "around held-out blocks unused; landslides crossing into a held-out block or ring left out "
                 "of training whole"),
    }
    return SceneSplit(kind, roles, train_labels, block, buffer, summary)


# ---- training chips ------------------------------------------------------------------------
class SceneSampler:
    """Random training chips from a scene: a share centred near landslides, the rest anywhere.

    ``image`` is the *normalised* scene ``[H, W, C]`` with held-out pixels already blanked (0);
    ``labels`` are the training labels (255 = not a training pixel). A chip must have at least
    ``min_labelled`` of its pixels labelled; chips that do not are drawn again.
    """

    def __init__(self, image: np.ndarray, labels: np.ndarray, chip: int, positive_share: float = 0.5,
                 min_labelled: float = 0.25) -> None:
        h, w = labels.shape
        if h < chip or w < chip:
            raise BuildError(f"the scene ({w}x{h} px) is smaller than one {chip} px chip; use --chip {max(16, min(h, w) // 16 * 16)}")
        self.image, self.labels, self.chip = image, labels, chip
        self.positive_share = float(positive_share)
        self.min_labelled = float(min_labelled)
        self.positives = np.flatnonzero(labels.reshape(-1) == 1)
        labelled = (labels != IGNORE).astype(np.float64)
        # summed-area table: labelled pixels in any chip in O(1)
        self._sat = np.pad(labelled.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        self.drawn = 0
        self.drawn_with_landslide = 0
        self.labelled_pixels = 0
        self.landslide_pixels = 0

    def _labelled(self, r: int, c: int) -> float:
        s, k = self._sat, self.chip
        return float(s[r + k, c + k] - s[r, c + k] - s[r + k, c] + s[r, c]) / (k * k)

    def _position(self, rng: np.random.Generator, positive: bool) -> tuple[int, int]:
        h, w = self.labels.shape
        k = self.chip
        for _ in range(50):
            if positive and len(self.positives):
                pr, pc = divmod(int(self.positives[rng.integers(len(self.positives))]), w)
                r = int(np.clip(pr - rng.integers(k // 8, k - k // 8), 0, h - k))
                c = int(np.clip(pc - rng.integers(k // 8, k - k // 8), 0, w - k))
            else:
                r, c = int(rng.integers(0, h - k + 1)), int(rng.integers(0, w - k + 1))
            if self._labelled(r, c) >= self.min_labelled:
                return r, c
        return r, c  # a scene with little training area: take the last draw anyway

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        k = self.chip
        xs, ys = [], []
        for _ in range(n):
            r, c = self._position(rng, rng.random() < self.positive_share)
            xs.append(self.image[r : r + k, c : c + k])
            y = self.labels[r : r + k, c : c + k]
            ys.append(y)
            self.drawn += 1
            ones = int((y == 1).sum())
            self.drawn_with_landslide += ones > 0
            self.landslide_pixels += ones
            self.labelled_pixels += int((y != IGNORE).sum())
        return np.stack(xs), np.stack(ys)

    def balance_report(self) -> dict[str, Any]:
        train = self.labels != IGNORE
        base = float((self.labels == 1).sum()) / max(int(train.sum()), 1)
        drawn = self.landslide_pixels / max(self.labelled_pixels, 1)
        return {
            "chips_drawn": self.drawn,
            "chips_with_landslide": round(self.drawn_with_landslide / max(self.drawn, 1), 3),
            "landslide_pixel_share_drawn": round(drawn, 4),
            "landslide_pixel_share_training_area": round(base, 4),
            "oversampling": round(drawn / base, 2) if base > 0 else None,
            "rule": f"{self.positive_share:.0%} of chips placed to contain a training landslide pixel, the rest anywhere "
                    f"with at least {self.min_labelled:.0%} training pixels",
        }


def eval_windows(mask: np.ndarray, size: int, margin: int) -> list[tuple[int, int, int, int]]:
    """Square windows ``(row0, col0, row, col)`` of ``size + 2 * margin`` px placed inside the scene,
    one per ``size`` px cell ``[row:row+size, col:col+size]`` of a regular grid that holds a True pixel
    of ``mask``. Scoring only each cell's own pixels counts every pixel once; the margin is context."""
    h, w = mask.shape
    side = size + 2 * margin
    if h < side or w < side:
        raise BuildError(f"the scene ({w}x{h} px) is smaller than one {side} px evaluation window; use a smaller --chip")
    out = []
    for r in range(0, h, size):
        for c in range(0, w, size):
            if mask[r : r + size, c : c + size].any():
                out.append((int(np.clip(r - margin, 0, h - side)), int(np.clip(c - margin, 0, w - side)), r, c))
    return out


def window_stack(image: np.ndarray, labels: np.ndarray, mask: np.ndarray, wins: list[tuple[int, int, int, int]],
                 size: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``[N, S, S, C]`` and targets ``[N, S, S]`` (255 outside each window's own cell and ``mask``)."""
    side = size + 2 * margin
    xs, ys = [], []
    for r0, c0, r, c in wins:
        xs.append(image[r0 : r0 + side, c0 : c0 + side])
        y = np.full((side, side), IGNORE, dtype=np.uint8)
        rr, cc = r - r0, c - c0
        cell = labels[r : r + size, c : c + size]
        keep = mask[r : r + size, c : c + size]
        y[rr : rr + cell.shape[0], cc : cc + cell.shape[1]] = np.where(keep, cell, IGNORE)
        ys.append(y)
    return np.stack(xs), np.stack(ys)
