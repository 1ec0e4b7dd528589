"""Training chips from a chip folder (``images/`` + ``masks/``, PNG or GeoTIFF), their splits and sampler.

A :class:`ChipSet` holds image chips ``[N, H, W, C]`` in the units they were read in (whatever the
files hold), masks ``[N, H, W]`` (0 background, 1 landslide, 255 no data / unlabelled) and a block
id and footprint per chip for the spatially blocked split. (A prepared region is one scene, split
pixel by pixel: :mod:`slidemap.training.scene`.)

Splits:

- random 80/20 over chips (the paper's);
- blocked 80/20: whole blocks go to the test side. A folder is grouped into contiguous blocks of
  its file index (the number in the file name; neighbouring indices may be neighbouring ground), or
  into location blocks of 2 x chip size when every chip is a georeferenced GeoTIFF. Training chips
  within ``buffer`` of a held-out chip (index positions, or pixels for georeferenced chips) are
  dropped, so the two sides do not touch.

Normalisation is :mod:`slidemap.compute.maps.image_norm` (by default each chip's own robust percentiles,
since chip folders such as Landslide4Sense stretch every image on its own).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.compute.region.image_files import IGNORE, IMAGE_EXTS, MASK_ENCODINGS, read_image_file, read_mask_file, region_is_synthetic
from slidemap.errors import BuildError, InputError
from slidemap.training.unet import TILE_MULTIPLE

__all__ = ["ChipSet", "ChipSampler", "IMAGE_EXTS", "MASK_ENCODINGS", "chips_from_folder", "blocked_chip_split",
           "random_chip_split", "split_chips", "region_is_synthetic", "read_image_file", "read_mask_file"]


@dataclass
class ChipSet:
    images: np.ndarray  # float32 [N, H, W, C]; NaN = no data
    masks: np.ndarray  # uint8 [N, H, W]; 0, 1, 255 = ignore
    names: list[str]
    bands: list[str]
    blocks: np.ndarray  # int64 [N]; chips sharing a block go to the same side of the blocked split
    footprints: np.ndarray  # int64 [N, 4] row0, col0, row1, col1 in a common pixel frame (or index)
    source: dict[str, Any] = field(default_factory=dict)  # kind, path, synthetic, units, ...

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx: np.ndarray) -> ChipSet:
        idx = np.asarray(idx, dtype=np.int64)
        return replace(
            self,
            images=self.images[idx],
            masks=self.masks[idx],
            names=[self.names[i] for i in idx],
            blocks=self.blocks[idx],
            footprints=self.footprints[idx],
        )

    @property
    def synthetic(self) -> bool:
        return bool(self.source.get("synthetic", False))

    def fingerprint(self) -> str:
        """SHA-256 of the chips' bytes and names: which data a model was trained on."""
        digest = hashlib.sha256()
        digest.update(json.dumps([self.names, self.bands]).encode())
        digest.update(np.ascontiguousarray(self.images).tobytes())
        digest.update(np.ascontiguousarray(self.masks).tobytes())
        return digest.hexdigest()


# ---- from a chip folder ----------------------------------------------------------------------
def _index_of(name: str) -> int | None:
    numbers = re.findall(r"\d+", Path(name).stem)
    return int(numbers[-1]) if numbers else None


def _find_mask(mask_dir: Path, image: Path) -> Path | None:
    stem = image.stem
    candidates = [stem, stem.replace("image", "mask"), stem.replace("img", "mask"), stem.replace("image", "label")]
    for cand in dict.fromkeys(candidates):
        for ext in IMAGE_EXTS:
            path = mask_dir / f"{cand}{ext}"
            if path.is_file():
                return path
    return None


def chips_from_folder(
    folder: str | Path,
    bands: list[str] | None = None,
    mask_encoding: str = "auto",
    n_blocks: int = 10,
) -> ChipSet:
    """Read a folder of chip pairs: ``images/`` and ``masks/`` (or ``labels/``), PNG or GeoTIFF.

    ``bands`` names the image bands in file order (default: band descriptions, ``R,G,B`` for
    3-channel PNGs, else ``B1..Bn``).
    """
    folder = Path(folder)
    image_dir = folder / "images"
    mask_dir = next((folder / d for d in ("masks", "labels") if (folder / d).is_dir()), None)
    if not image_dir.is_dir() or mask_dir is None:
        raise InputError(f"{folder}: a chip folder needs images/ and masks/ (or labels/) subfolders")
    image_files = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not image_files:
        raise InputError(f"{image_dir}: no .png or .tif chips found")
    indexed = [(_index_of(p.name), p) for p in image_files]
    if all(i is not None for i, _ in indexed):
        indexed.sort(key=lambda t: (t[0], t[1].name))
    else:
        indexed = [(k, p) for k, (_, p) in enumerate(indexed)]
    images, masks, names, georefs, file_names = [], [], [], [], None
    shape = None
    for _, path in indexed:
        mask_path = _find_mask(mask_dir, path)
        if mask_path is None:
            raise InputError(f"{path}: no matching mask in {mask_dir} (same name, or 'image' -> 'mask')")
        img, fnames, meta = read_image_file(path)
        msk = read_mask_file(mask_path, mask_encoding)
        if shape is None:
            shape = img.shape
            file_names = fnames
        if img.shape != shape:
            raise InputError(f"{path}: shape {img.shape} differs from the first chip's {shape}; chips must share a size")
        if msk.shape != img.shape[:2]:
            raise InputError(f"{mask_path}: mask {msk.shape} does not match its image {img.shape[:2]}")
        nodata = np.isnan(img).any(axis=-1)
        if path.suffix.lower() != ".png":
            nodata |= np.all(img == 0, axis=-1)  # GIS exports fill outside the area with 0
        # no data is NaN, as `detect` reads it: left out of the chip's percentiles, 0 once normalised
        img[nodata] = np.nan
        msk[nodata] = IGNORE
        images.append(img)
        masks.append(msk)
        names.append(path.name)
        georefs.append(meta["georef"])
    assert shape is not None
    if not any((m == 1).any() for m in masks):
        raise InputError(f"{mask_dir}: no mask marks a landslide pixel (mask encoding {mask_encoding}); "
                         "check the masks or pass --mask-encoding gt127, binary or sparse")
    h, w, c = shape
    if h % TILE_MULTIPLE or w % TILE_MULTIPLE:
        raise InputError(f"{folder}: chips are {w}x{h}; the network needs sides that are multiples of {TILE_MULTIPLE}")
    if bands:
        if len(bands) != c:
            raise InputError(f"{folder}: --bands names {len(bands)} bands but the chips have {c}")
        band_names = list(bands)
    else:
        band_names = file_names or [f"B{i + 1}" for i in range(c)]
    index = np.asarray([i for i, _ in indexed], dtype=np.int64)
    n = len(images)
    georeferenced = all(g is not None for g in georefs)
    if georeferenced:
        # location blocks of 2 x chip size in the chips' CRS
        res = georefs[0]["res"]
        block = 2 * w * res
        xs = np.array([g["x"] for g in georefs])
        ys = np.array([g["y"] for g in georefs])
        bx = np.floor((xs - xs.min()) / block).astype(np.int64)
        by = np.floor((ys.max() - ys) / block).astype(np.int64)
        blocks = by * (bx.max() + 1) + bx
        cols = np.round((xs - xs.min()) / res).astype(np.int64)
        rows = np.round((ys.max() - ys) / res).astype(np.int64)
        footprints = np.column_stack([rows, cols, rows + h, cols + w])
        blocking = "location blocks of 2 x chip size"
    else:
        # contiguous index blocks: equal counts of chips in index order
        order = np.argsort(index, kind="stable")
        blocks = np.empty(n, dtype=np.int64)
        blocks[order] = np.minimum(np.arange(n) * n_blocks // n, n_blocks - 1)
        # footprints on a 1-D index line: chips never overlap
        footprints = np.column_stack([index, np.zeros(n, np.int64), index + 1, np.ones(n, np.int64)])
        blocking = f"{n_blocks} contiguous blocks of file index"
    units = "display8" if image_files[0].suffix.lower() == ".png" else "file"
    return ChipSet(
        images=np.stack(images).astype(np.float32),
        masks=np.stack(masks),
        names=names,
        bands=band_names,
        blocks=blocks,
        footprints=footprints,
        source={
            "kind": "folder",
            "path": str(folder.resolve()),
            "synthetic": False,
            "units": units,
            "chip": h,
            "mask_encoding": mask_encoding,
            "blocking": blocking,
            "georeferenced": georeferenced,
            "index_range": [int(index.min()), int(index.max())],
        },
    )


# ---- splits of a chip list (index arrays; the sample-point splits of susceptibility are in splits.py) ----
def random_chip_split(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _near(fp: np.ndarray, others: np.ndarray, buffer: int) -> np.ndarray:
    """For each footprint in ``fp``, whether it comes within ``buffer`` of any footprint in ``others``."""
    if len(others) == 0 or len(fp) == 0:
        return np.zeros(len(fp), dtype=bool)
    grown = others + np.array([-buffer, -buffer, buffer, buffer])
    r0 = np.maximum(fp[:, None, 0], grown[None, :, 0])
    c0 = np.maximum(fp[:, None, 1], grown[None, :, 1])
    r1 = np.minimum(fp[:, None, 2], grown[None, :, 2])
    c1 = np.minimum(fp[:, None, 3], grown[None, :, 3])
    return ((r1 > r0) & (c1 > c0)).any(axis=1)


def blocked_chip_split(
    chips: ChipSet, test_fraction: float = 0.2, seed: int = 0, buffer: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Whole blocks to the test side (about ``test_fraction`` of chips); no train chip within ``buffer`` of a test chip."""
    n = len(chips)
    rng = np.random.default_rng(seed)
    unique = rng.permutation(np.unique(chips.blocks))
    if len(unique) < 2:
        raise BuildError(
            f"{chips.source.get('path')}: only one spatial block; a blocked split needs a larger area or more chips"
        )
    target = max(1, int(round(n * test_fraction)))
    test_blocks: list[int] = []
    count = 0
    for b in unique:
        if count >= target:
            break
        test_blocks.append(int(b))
        count += int(np.count_nonzero(chips.blocks == b))
    if len(test_blocks) == len(unique):
        test_blocks = test_blocks[:-1]
    is_test = np.isin(chips.blocks, test_blocks)
    test = np.flatnonzero(is_test)
    train = np.flatnonzero(~is_test)
    train = train[~_near(chips.footprints[train], chips.footprints[test], buffer)]
    return train, test


def split_chips(chips: ChipSet, kind: str, test_fraction: float = 0.2, seed: int = 0,
          buffer: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if kind == "random":
        return random_chip_split(len(chips), test_fraction, seed)
    if kind == "blocked":
        return blocked_chip_split(chips, test_fraction, seed, buffer)
    raise ValueError(f"unknown split {kind!r}")


def chip_buffer(chips: ChipSet) -> int:
    """The default gap between the sides of a blocked split: 4 index positions, or one chip width for georeferenced chips."""
    return int(chips.images.shape[1]) if chips.source.get("georeferenced") else 4


class ChipSampler:
    """Training chips from a chip list: each epoch draws ``len(idx)`` chips, with chips holding a
    landslide drawn at least ``positive_share`` of the time (with replacement when they are fewer)."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, positive_share: float = 0.5) -> None:
        self.images, self.masks = images, masks
        flat = masks.reshape(len(masks), -1)
        self.positive = (flat == 1).any(axis=1)
        self.positive_share = float(positive_share)
        n_pos = int(self.positive.sum())
        share = n_pos / max(len(masks), 1)
        weights = np.ones(len(masks), dtype=np.float64)
        if 0 < share < positive_share and n_pos < len(masks):
            # raise the positives' weight so they make up positive_share of the draws
            weights[self.positive] = positive_share / share
            weights[~self.positive] = (1 - positive_share) / (1 - share)
        self.p = weights / weights.sum()
        self.drawn = 0
        self.drawn_with_landslide = 0
        self.labelled_pixels = 0
        self.landslide_pixels = 0

    def batch(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        idx = rng.choice(len(self.masks), size=n, p=self.p)
        y = self.masks[idx]
        self.drawn += n
        self.drawn_with_landslide += int(self.positive[idx].sum())
        self.landslide_pixels += int((y == 1).sum())
        self.labelled_pixels += int((y != IGNORE).sum())
        return self.images[idx], y

    def balance_report(self) -> dict[str, Any]:
        base = float((self.masks == 1).sum()) / max(int((self.masks != IGNORE).sum()), 1)
        drawn = self.landslide_pixels / max(self.labelled_pixels, 1)
        return {
            "chips_drawn": self.drawn,
            "chips_with_landslide": round(self.drawn_with_landslide / max(self.drawn, 1), 3),
            "chips_with_landslide_available": round(float(self.positive.mean()), 3) if len(self.positive) else None,
            "landslide_pixel_share_drawn": round(drawn, 4),
            "landslide_pixel_share_training_chips": round(base, 4),
            "oversampling": round(drawn / base, 2) if base > 0 else None,
            "rule": f"chips with a landslide drawn at least {self.positive_share:.0%} of the time",
        }
