"""Training chips for the segmentation network: from a prepared region or from a chip folder.

A :class:`ChipSet` holds image chips ``[N, H, W, C]`` in the units they were read in
(reflectance for a region; whatever the files hold for a folder), masks ``[N, H, W]`` (0 background,
1 landslide, 255 no data / unlabelled) and a block id per chip for the spatially blocked split.

Splits (both reported, so leakage between neighbouring chips shows):

- random 80/20 over chips (the paper's);
- blocked 80/20: whole blocks go to the test side. Region chips are grouped into square location
  blocks of ``2 x chip`` pixels (smaller when the region is small); a chip folder is grouped into contiguous blocks of its file index
  (the number in the file name), or into location blocks when every chip is a georeferenced
  GeoTIFF. Training chips that overlap a test chip's footprint are dropped.

Normalisation (per band mean and standard deviation over valid pixels) is fitted on the training
split only and stored in the model card; NaN becomes 0 after normalisation.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.errors import BuildError, InputError

CHIP = 128
IGNORE = 255
IMAGE_EXTS = (".png", ".tif", ".tiff")
MASK_ENCODINGS = ("auto", "gt127", "binary", "sparse")
DEFAULT_BANDS = ("B2", "B3", "B4", "B8")


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


# ---- from a prepared region ------------------------------------------------------------------
def region_is_synthetic(region_dir: Path) -> bool:
    try:
        from slidemap.compute.region import load_region

        return bool(load_region(region_dir, check_files=False).synthetic)
    except Exception:  # fall back to what prepare wrote
        factors = region_dir / "build" / "factors.json"
        if factors.is_file():
            return bool(json.loads(factors.read_text()).get("synthetic", False))
        return False


def chips_from_region(
    region_dir: str | Path,
    size: int = CHIP,
    stride: int | None = None,
    bands: list[str] | None = None,
    max_nodata: float = 0.5,
) -> ChipSet:
    """Cut ``size`` x ``size`` chips (step ``stride``) from ``build/imagery.tif`` and ``labels_imagery.tif``.

    Chips with more than ``max_nodata`` of no-data pixels are skipped.
    """
    import rasterio

    region_dir = Path(region_dir)
    build = region_dir / "build"
    imagery, labels = build / "imagery.tif", build / "labels_imagery.tif"
    for path in (imagery, labels):
        if not path.is_file():
            raise BuildError(f"{path}: missing; run `slidemap prepare {region_dir}` (needs imagery and an inventory)")
    stride = stride or size
    with rasterio.open(imagery) as src:
        names = [d or f"B{i + 1}" for i, d in enumerate(src.descriptions)]
        wanted = list(bands) if bands else names
        missing = [b for b in wanted if b not in names]
        if missing:
            raise BuildError(f"{imagery}: bands {missing} not present (has {names}); choose --bands from these")
        img = src.read([names.index(b) + 1 for b in wanted]).astype(np.float32)
        if src.nodata is not None and not np.isnan(src.nodata):
            img[img == src.nodata] = np.nan
    with rasterio.open(labels) as src:
        lab = src.read(1)
    if lab.shape != img.shape[1:]:
        raise BuildError(f"{labels}: shape {lab.shape} differs from {imagery} {img.shape[1:]}; rerun prepare")
    h, w = lab.shape
    if h < size or w < size:
        raise BuildError(f"{imagery}: {w}x{h} px is smaller than one {size}x{size} chip; use a larger region")
    rows = list(range(0, h - size + 1, stride))
    cols = list(range(0, w - size + 1, stride))
    # cover the far edges too
    if rows[-1] != h - size:
        rows.append(h - size)
    if cols[-1] != w - size:
        cols.append(w - size)
    # Blocks of 2 chips, but small enough that a small region still has a few of them
    # (a blocked split needs at least two); overlapping train chips are dropped at split time.
    block = max(size, min(2 * size, -(-max(h, w) // 2)))
    n_block_cols = (w + block - 1) // block
    chips, masks, chip_names, blocks, footprints = [], [], [], [], []
    for r in rows:
        for c in cols:
            im = img[:, r : r + size, c : c + size]
            m = lab[r : r + size, c : c + size].copy()
            nodata = np.isnan(im).any(axis=0) | (m == IGNORE)
            if nodata.mean() > max_nodata:
                continue
            m[nodata] = IGNORE
            m[(m != IGNORE) & (m > 0)] = 1
            chips.append(np.moveaxis(im, 0, -1))
            masks.append(m.astype(np.uint8))
            chip_names.append(f"r{r:05d}_c{c:05d}")
            cr, cc = r + size // 2, c + size // 2
            blocks.append((cr // block) * n_block_cols + cc // block)
            footprints.append((r, c, r + size, c + size))
    if not chips:
        raise BuildError(f"{imagery}: no chip has enough valid pixels; check the imagery covers the region")
    return ChipSet(
        images=np.stack(chips).astype(np.float32),
        masks=np.stack(masks),
        names=chip_names,
        bands=wanted,
        blocks=np.asarray(blocks, dtype=np.int64),
        footprints=np.asarray(footprints, dtype=np.int64),
        source={
            "kind": "region",
            "path": str(region_dir.resolve()),
            "synthetic": region_is_synthetic(region_dir),
            "units": "reflectance",
            "chip": size,
            "stride": stride,
            "block_px": block,
            "blocking": f"location blocks of {block} px (2 chips, smaller on small regions)",
        },
    )


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


def read_image_file(path: Path) -> tuple[np.ndarray, list[str] | None, dict[str, Any]]:
    """Read one chip image as float32 ``[H, W, C]``; PNG alpha that is constant is dropped."""
    if path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im)
        if arr.ndim == 2:
            arr = arr[..., None]
        if arr.shape[-1] in (2, 4) and np.all(arr[..., -1] == arr[..., -1].flat[0]):
            arr = arr[..., :-1]  # constant alpha carries nothing
        names = ["R", "G", "B"] if arr.shape[-1] == 3 else None
        return arr.astype(np.float32), names, {"georef": None}
    import rasterio

    with rasterio.open(path) as src:
        arr = src.read().astype(np.float32)
        if src.nodata is not None and not np.isnan(src.nodata):
            arr[arr == src.nodata] = np.nan
        names = [d for d in src.descriptions] if all(src.descriptions) else None
        georef = None
        if src.crs is not None and not src.transform.is_identity:
            georef = {"crs": src.crs.to_string(), "x": src.transform.c, "y": src.transform.f,
                      "res": abs(src.transform.a), "width": src.width, "height": src.height}
    return np.moveaxis(arr, 0, -1), names, {"georef": georef}


def read_mask_file(path: Path, encoding: str = "auto") -> np.ndarray:
    """Read a mask as uint8 0/1/255 following ``encoding``.

    ``gt127``: first channel > 127 is landslide (8-bit masks, RGB(A) masks);
    ``binary``: any non-zero value is landslide; ``sparse``: 0 unlabelled (ignored),
    1 non-landslide, 2 landslide (ArcGIS classified tiles); ``auto`` picks ``gt127`` for
    multi-channel or 0/255 masks and ``binary`` for 0/1 masks.
    """
    if encoding not in MASK_ENCODINGS:
        raise InputError(f"mask encoding {encoding!r} unknown; use one of {', '.join(MASK_ENCODINGS)}")
    if path.suffix.lower() == ".png":
        from PIL import Image

        with Image.open(path) as im:
            arr = np.asarray(im)
    else:
        import rasterio

        with rasterio.open(path) as src:
            arr = np.moveaxis(src.read(), 0, -1)
    multi = arr.ndim == 3 and arr.shape[-1] > 1
    band = arr[..., 0] if arr.ndim == 3 else arr
    if encoding == "auto":
        values = np.unique(band)
        if multi or set(values.tolist()) <= {0, 255}:
            encoding = "gt127"
        elif set(values.tolist()) <= {0, 1}:
            encoding = "binary"
        else:
            raise InputError(
                f"{path}: mask values {values[:8].tolist()} are ambiguous; pass --mask-encoding "
                "gt127, binary or sparse (0 unlabelled, 1 background, 2 landslide)"
            )
    if encoding == "gt127":
        return (band > 127).astype(np.uint8)
    if encoding == "binary":
        return (band > 0).astype(np.uint8)
    out = np.full(band.shape, IGNORE, dtype=np.uint8)
    out[band == 1] = 0
    out[band == 2] = 1
    return out


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
        msk[nodata] = IGNORE
        images.append(img)
        masks.append(msk)
        names.append(path.name)
        georefs.append(meta["georef"])
    assert shape is not None
    h, w, c = shape
    if h % 16 or w % 16:
        raise InputError(f"{folder}: chips are {w}x{h}; the network needs sides that are multiples of 16")
    if bands:
        if len(bands) != c:
            raise InputError(f"{folder}: --bands names {len(bands)} bands but the chips have {c}")
        band_names = list(bands)
    else:
        band_names = file_names or [f"B{i + 1}" for i in range(c)]
    index = np.asarray([i for i, _ in indexed], dtype=np.int64)
    n = len(images)
    if all(g is not None for g in georefs):
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
            "index_range": [int(index.min()), int(index.max())],
        },
    )


# ---- splits --------------------------------------------------------------------------------
def random_split(n: int, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = max(1, int(round(n * test_fraction)))
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _overlaps(fp: np.ndarray, others: np.ndarray) -> np.ndarray:
    """For each footprint in ``fp``, whether it intersects any footprint in ``others``."""
    if len(others) == 0:
        return np.zeros(len(fp), dtype=bool)
    r0 = np.maximum(fp[:, None, 0], others[None, :, 0])
    c0 = np.maximum(fp[:, None, 1], others[None, :, 1])
    r1 = np.minimum(fp[:, None, 2], others[None, :, 2])
    c1 = np.minimum(fp[:, None, 3], others[None, :, 3])
    return ((r1 > r0) & (c1 > c0)).any(axis=1)


def blocked_split(
    chips: ChipSet, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Whole blocks to the test side (about ``test_fraction`` of chips); no train chip overlaps a test chip."""
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
    train = train[~_overlaps(chips.footprints[train], chips.footprints[test])]
    return train, test


def split(chips: ChipSet, kind: str, test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    if kind == "random":
        return random_split(len(chips), test_fraction, seed)
    if kind == "blocked":
        return blocked_split(chips, test_fraction, seed)
    raise ValueError(f"unknown split {kind!r}")


# ---- normalisation ---------------------------------------------------------------------------
def fit_normalisation(chips: ChipSet) -> dict[str, Any]:
    """Per-band mean and standard deviation over the valid pixels of (training) chips."""
    flat = chips.images.reshape(-1, chips.images.shape[-1]).astype(np.float64)
    mean = np.nanmean(flat, axis=0)
    std = np.nanstd(flat, axis=0)
    std = np.where(std > 1e-12, std, 1.0)
    return {
        "method": "standardise",
        "bands": list(chips.bands),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "units": chips.source.get("units", "reflectance"),
        "fitted_on": "training split only",
    }


def normalise(images: np.ndarray, norm: dict[str, Any], channel_axis: int = -1) -> np.ndarray:
    """``(x - mean) / std`` per band, NaN -> 0, float32. ``images`` has bands on ``channel_axis``."""
    shape = [1] * images.ndim
    shape[channel_axis] = -1
    mean = np.asarray(norm["mean"], dtype=np.float32).reshape(shape)
    std = np.asarray(norm["std"], dtype=np.float32).reshape(shape)
    out = (images.astype(np.float32) - mean) / std
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
