"""Susceptibility samples: which cells are landslides, which are not, and their weights.

Positives are the inventory's landslide cells (``labels.tif == 1``) and, when ``slidemap inventory``
has run, the cells of the newest detected inventory (``REGION/reports/inventory/*/*.gpkg``); each
sample records which kind it is. Negatives are the inventory's known non-landslide cells
(``labels.tif == 2``); when there are fewer than ``neg_ratio`` per positive (or none) and ``top_up``
is on, cells sampled at random farther than ``buffer_cells`` from every landslide cell fill the gap
(a handful of known negatives alone would leave most of the landscape unseen). Sample weights balance the classes
(``n / (2 n_class)``), so a weighted loss sees both classes with equal total weight.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage

from slidemap.compute.factors import Normalisation, load_normalisation, normalise
from slidemap.compute.grid import Grid
from slidemap.errors import BuildError

log = logging.getLogger(__name__)

SOURCES = ("inventory", "detected", "known_negative", "sampled_negative")
LANDSLIDE, KNOWN_NEGATIVE, OUTSIDE = 1, 2, 255


@dataclass
class RegionData:
    """The prepared factor stack and labels of a region, loaded once for training or mapping."""

    region_dir: Path
    grid: Grid
    stack: np.ndarray  # float32 [c, H, W] physical units, NaN nodata
    normalised: np.ndarray  # float32 [c, H, W] in [0, 1], NaN -> 0
    normalisation: Normalisation
    labels: np.ndarray  # uint8 [H, W]
    synthetic: bool
    fingerprint: str  # SHA-256 (first 16) of factors.tif + labels.tif

    @property
    def factor_names(self) -> list[str]:
        return self.normalisation.names

    @property
    def valid(self) -> np.ndarray:
        """Cells where every factor is known (the cells a map gives a value)."""
        return np.isfinite(self.stack).all(axis=0)


def load_region_data(region_dir: str | Path) -> RegionData:
    region_dir = Path(region_dir)
    build = region_dir / "build"
    factors_tif, labels_tif = build / "factors.tif", build / "labels.tif"
    for path in (factors_tif, labels_tif, build / "factors.json"):
        if not path.is_file():
            raise BuildError(f"{path}: not built; run `slidemap prepare {region_dir}` first")
    spec = load_normalisation(build)
    with rasterio.open(factors_tif) as src:
        names = [d or "" for d in src.descriptions]
        stack = src.read().astype(np.float32, copy=False)
        if src.nodata is not None and not np.isnan(src.nodata):
            stack[stack == src.nodata] = np.nan
        grid = Grid(src.crs, src.transform, src.width, src.height)
    if names != spec.names:
        raise BuildError(
            f"{factors_tif}: bands {names} do not match factors.json {spec.names}; rerun `slidemap prepare {region_dir}`"
        )
    with rasterio.open(labels_tif) as src:
        labels = src.read(1)
    if labels.shape != grid.shape:
        raise BuildError(f"{labels_tif}: shape {labels.shape} is not the factor grid's {grid.shape}; rerun prepare")
    meta = json.loads((build / "factors.json").read_text())
    digest = hashlib.sha256()
    for path in (factors_tif, labels_tif):
        digest.update(path.read_bytes())
    return RegionData(
        region_dir=region_dir,
        grid=grid,
        stack=stack,
        normalised=normalise(stack, spec),
        normalisation=spec,
        labels=labels,
        synthetic=bool(meta.get("synthetic", False)),
        fingerprint=digest.hexdigest()[:16],
    )


@dataclass
class SampleSet:
    rows: np.ndarray  # int64
    cols: np.ndarray  # int64
    y: np.ndarray  # int8, 1 landslide / 0 not
    source: np.ndarray  # uint8 index into SOURCES
    weight: np.ndarray  # float32, class-balancing

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> SampleSet:
        out = SampleSet(self.rows[idx], self.cols[idx], self.y[idx], self.source[idx], self.weight[idx])
        out.weight = balanced_weights(out.y)
        return out

    def counts(self) -> dict[str, int]:
        return {name: int((self.source == i).sum()) for i, name in enumerate(SOURCES)}


def balanced_weights(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    w = np.ones(len(y), dtype=np.float32)
    for cls in (0, 1):
        n = int((y == cls).sum())
        if n:
            w[y == cls] = len(y) / (2.0 * n)
    return w


def find_detected_inventory(region_dir: str | Path) -> Path | None:
    """The newest detected-inventory GeoPackage written by ``slidemap inventory``, if any."""
    candidates = sorted(
        (Path(region_dir) / "reports" / "inventory").glob("*/*.gpkg"), key=lambda p: p.stat().st_mtime
    )
    return candidates[-1] if candidates else None


def rasterise_detected(path: Path, grid: Grid) -> np.ndarray:
    """Cells of ``grid`` touched by the detected polygons (bool)."""
    import geopandas as gpd
    from rasterio.features import rasterize

    frame = gpd.read_file(path)
    if frame.empty:
        return np.zeros(grid.shape, dtype=bool)
    if frame.crs is not None:
        frame = frame.to_crs(grid.crs)
    shapes = ((geom, 1) for geom in frame.geometry if geom is not None and not geom.is_empty)
    return rasterize(shapes, out_shape=grid.shape, transform=grid.transform, fill=0, dtype="uint8").astype(bool)


def build_samples(
    labels: np.ndarray,
    valid: np.ndarray,
    *,
    detected: np.ndarray | None = None,
    neg_ratio: float = 1.0,
    buffer_cells: float = 3.0,
    max_samples: int | None = None,
    top_up: bool = True,
    seed: int = 0,
) -> SampleSet:
    """Positive and negative cells of a region (see the module docstring for the rules)."""
    rng = np.random.default_rng(seed)
    inside = valid & (labels != OUTSIDE)
    inv_pos = (labels == LANDSLIDE) & inside
    det_pos = (detected & inside & ~inv_pos) if detected is not None else np.zeros_like(inv_pos)
    positives = inv_pos | det_pos
    if not positives.any():
        raise BuildError("no landslide cells inside the factor stack (labels.tif has no 1s); check the inventory")
    known_neg = (labels == KNOWN_NEGATIVE) & inside & ~positives
    pr, pc = np.nonzero(positives)
    p_src = np.where(inv_pos[pr, pc], SOURCES.index("inventory"), SOURCES.index("detected"))
    target = max(1, int(round(neg_ratio * len(pr))))
    kr, kc = np.nonzero(known_neg)
    nr, nc = kr, kc
    n_src = np.full(len(kr), SOURCES.index("known_negative"))
    if len(kr) < target and top_up:
        # distance (cells) to the nearest landslide cell: sampled negatives stay clear of the scars
        far = ndimage.distance_transform_edt(~positives) > buffer_cells
        candidates = np.flatnonzero((far & inside & (labels == 0)).ravel())
        n_new = min(len(candidates), target - len(kr))
        if n_new == 0 and len(kr) == 0:
            raise BuildError("no cells are far enough from landslides to sample negatives; lower --set buffer=")
        pick = np.sort(rng.choice(candidates, size=n_new, replace=False))
        sr, sc = np.unravel_index(pick, labels.shape)
        nr, nc = np.concatenate([kr, sr]), np.concatenate([kc, sc])
        n_src = np.concatenate([n_src, np.full(n_new, SOURCES.index("sampled_negative"))])
    rows = np.concatenate([pr, nr]).astype(np.int64)
    cols = np.concatenate([pc, nc]).astype(np.int64)
    y = np.concatenate([np.ones(len(pr), np.int8), np.zeros(len(nr), np.int8)])
    source = np.concatenate([p_src, n_src]).astype(np.uint8)
    if max_samples is not None and len(y) > max_samples:
        # stratified subsample: class proportions kept
        keep = []
        for cls in (1, 0):
            idx = np.flatnonzero(y == cls)
            k = max(1, int(round(max_samples * len(idx) / len(y))))
            keep.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
        order = np.sort(np.concatenate(keep))
        rows, cols, y, source = rows[order], cols[order], y[order], source[order]
    return SampleSet(rows, cols, y, source, balanced_weights(y))
