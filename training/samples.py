"""Susceptibility samples: which cells are landslides, which are not, and their weights.

**Positives** are the inventory's landslide cells (``labels.tif == 1``) and, when ``slidemap
inventory`` has run, the cells of the current detected inventory; each sample records which kind
it is and its **polygon** (a connected patch of landslide cells, so a split can keep every polygon
wholly on one side). A large polygon would otherwise outweigh many small ones: at most
``per_polygon_cap`` of its cells are kept, chosen at random.

**Negatives** are the inventory's known non-landslide cells (``labels.tif == 2``) plus cells sampled
at random farther than ``buffer_cells`` from every landslide cell, up to ``neg_ratio`` per positive,
from one of two grounds:

* ``terrain`` (the default): ground where landslides *can* happen -- the slope range of the
  positives (2nd-98th percentile, never below 2 degrees: no flat floodplain) and the land covers
  that hold at least 1 % of them, never water or built-up land. A model must then tell unstable
  slopes from stable slopes, not hillsides from lakes.
* ``anywhere``: any valid cell away from landslides -- the easy negatives most studies use, which
  inflate every model's AUC. Reports show both.

Sample weights balance the classes (``n / (2 n_class)``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from scipy import ndimage

from slidemap.compute.region.layout import RegionLayout
from slidemap.compute.terrain.factors import Encoding, Normalisation, class_codes_present, load_normalisation
from slidemap.compute.region.grid import Grid
from slidemap.errors import BuildError

log = logging.getLogger(__name__)

SOURCES = ("inventory", "detected", "known_negative", "sampled_negative")
LANDSLIDE, KNOWN_NEGATIVE, OUTSIDE = 1, 2, 255
# land covers where a landslide sample would be an error and a negative a give-away
NEVER_GROUND = re.compile(r"water|built|artificial|urban|settlement|impervious|road|reservoir|river|lake", re.I)


@dataclass
class RegionData:
    """The prepared factor stack and labels of a region, loaded once for training or mapping."""

    region_dir: Path
    grid: Grid
    stack: np.ndarray  # float32 [factors, H, W] physical units, NaN nodata
    encoding: Encoding
    encoded: np.ndarray  # float32 [channels, H, W], the model input (NaN -> 0)
    labels: np.ndarray  # uint8 [H, W]
    synthetic: bool
    fingerprint: str  # SHA-256 (first 16) of factors.tif + labels.tif
    imagery_factors_from: str | None = None

    @property
    def normalisation(self) -> Normalisation:
        return self.encoding.normalisation

    @property
    def factor_names(self) -> list[str]:
        return self.normalisation.names

    @property
    def valid(self) -> np.ndarray:
        """Cells where every factor is known (the cells a map gives a value)."""
        return np.isfinite(self.stack).all(axis=0)

    def factor(self, name: str) -> np.ndarray | None:
        names = self.factor_names
        return self.stack[names.index(name)] if name in names else None


def load_region_data(region_dir: str | Path) -> RegionData:
    region_dir = Path(region_dir)
    layout = RegionLayout.of(region_dir)
    factors_tif, labels_tif = layout.factors_tif, layout.labels_tif
    for path in (factors_tif, labels_tif, layout.factors_json):
        if not path.is_file():
            raise BuildError(f"{path}: not built; run `slidemap prepare {region_dir}` first")
    spec = load_normalisation(layout.build)
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
    meta = json.loads(layout.factors_json.read_text())
    digest = hashlib.sha256()
    for path in (factors_tif, labels_tif):
        digest.update(path.read_bytes())
    valid = np.isfinite(stack).all(axis=0)
    encoding = Encoding.build(spec, class_codes_present(stack, spec, valid))
    return RegionData(
        region_dir=region_dir,
        grid=grid,
        stack=stack,
        encoding=encoding,
        encoded=encoding.encode(stack),
        labels=labels,
        synthetic=bool(meta.get("synthetic", False)),
        fingerprint=digest.hexdigest()[:16],
        imagery_factors_from=meta.get("imagery_factors_from"),
    )


@dataclass
class SampleSet:
    rows: np.ndarray  # int64
    cols: np.ndarray  # int64
    y: np.ndarray  # int8, 1 landslide / 0 not
    source: np.ndarray  # uint8 index into SOURCES
    weight: np.ndarray  # float32, class-balancing
    group: np.ndarray  # int64: the polygon of a positive; a unique id for every negative

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: np.ndarray) -> SampleSet:
        out = SampleSet(self.rows[idx], self.cols[idx], self.y[idx], self.source[idx], self.weight[idx], self.group[idx])
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
    """The newest detected-inventory GeoPackage written by ``slidemap inventory``, if any (the one
    rule: :func:`slidemap.compute.region.inventory_layers.latest_detected`)."""
    from slidemap.compute.region.inventory_layers import latest_detected

    return latest_detected(Path(region_dir))


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


@dataclass(frozen=True)
class Ground:
    """Where negatives may be drawn from, and the rule in words for the report."""

    mask: np.ndarray  # bool [H, W]
    rule: str


def susceptible_ground(data: RegionData, positives: np.ndarray) -> Ground:
    """Cells whose slope and land cover are those landslides occur on (see the module docstring)."""
    valid = data.valid
    mask = valid.copy()
    parts: list[str] = []
    slope = data.factor("slope")
    if slope is not None and positives.any():
        lo, hi = np.percentile(slope[positives & valid], [2, 98])
        lo = max(float(lo), 2.0)
        mask &= (slope >= lo) & (slope <= hi)
        parts.append(f"slope {lo:.1f}-{hi:.1f} deg (2nd-98th percentile of the landslide cells, at least 2)")
    landcover = data.factor("landcover")
    if landcover is not None and positives.any():
        spec = next(f for f in data.normalisation.factors if f.name == "landcover")
        codes, counts = np.unique(np.rint(landcover[positives & valid]), return_counts=True)
        keep = [int(c) for c, n in zip(codes, counts) if n >= 0.01 * counts.sum()]
        keep = [c for c in keep if not NEVER_GROUND.search(spec.classes.get(str(c), ""))]
        mask &= np.isin(np.rint(landcover), keep)
        parts.append("land cover " + ", ".join(spec.classes.get(str(c), str(c)) for c in keep)
                     + " (those holding >= 1 % of the landslide cells; never water or built-up)")
    if not parts:
        return Ground(valid, "any valid cell (no slope or land cover factor to narrow it)")
    return Ground(mask, "; ".join(parts))


def polygon_ids(positives: np.ndarray) -> np.ndarray:
    """Connected patches (8-neighbour) of landslide cells: 1..n, 0 elsewhere."""
    ids, _ = ndimage.label(positives, structure=np.ones((3, 3), dtype=bool))
    return ids


def cap_per_group(groups: np.ndarray, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices keeping at most ``cap`` random members of every group."""
    order = rng.permutation(len(groups))
    by_group = order[np.argsort(groups[order], kind="stable")]  # grouped, random within a group
    sorted_groups = groups[by_group]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    rank = np.arange(len(groups)) - np.repeat(starts, np.diff(np.r_[starts, len(groups)]))
    return np.sort(by_group[rank < cap])


def build_samples(
    data: RegionData,
    *,
    detected: np.ndarray | None = None,
    negatives: str = "terrain",
    neg_ratio: float = 1.0,
    buffer_cells: float = 3.0,
    per_polygon_cap: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> tuple[SampleSet, str]:
    """Positive and negative cells of a region and the negatives' rule in words."""
    rng = np.random.default_rng(seed)
    labels, valid = data.labels, data.valid
    inside = valid & (labels != OUTSIDE)
    inv_pos = (labels == LANDSLIDE) & inside
    det_pos = (detected & inside & ~inv_pos) if detected is not None else np.zeros_like(inv_pos)
    positives = inv_pos | det_pos
    if not positives.any():
        raise BuildError("no landslide cells inside the factor stack (labels.tif has no 1s); check the inventory")
    ids = polygon_ids(positives)
    pr, pc = np.nonzero(positives)
    groups = ids[pr, pc].astype(np.int64)
    if per_polygon_cap is not None:
        keep = cap_per_group(groups, per_polygon_cap, rng)
        pr, pc, groups = pr[keep], pc[keep], groups[keep]
    p_src = np.where(inv_pos[pr, pc], SOURCES.index("inventory"), SOURCES.index("detected"))

    known_neg = (labels == KNOWN_NEGATIVE) & inside & ~positives
    kr, kc = np.nonzero(known_neg)
    target = max(1, int(round(neg_ratio * len(pr))))
    far = ndimage.distance_transform_edt(~positives) > buffer_cells
    if negatives == "terrain":
        ground = susceptible_ground(data, positives)
    elif negatives == "anywhere":
        ground = Ground(valid, "any valid cell")
    else:
        raise ValueError(f"negatives must be terrain or anywhere, not {negatives!r}")
    candidates = np.flatnonzero((far & inside & ground.mask & (labels == 0)).ravel())
    n_new = min(len(candidates), max(0, target - len(kr)))
    if n_new == 0 and len(kr) == 0:
        raise BuildError(
            "no cells are far enough from landslides to sample negatives; lower --set neg_buffer= "
            "or use --set negatives=anywhere"
        )
    pick = np.sort(rng.choice(candidates, size=n_new, replace=False))
    sr, sc = np.unravel_index(pick, labels.shape)
    nr, nc = np.concatenate([kr, sr]), np.concatenate([kc, sc])
    n_src = np.concatenate([np.full(len(kr), SOURCES.index("known_negative")),
                            np.full(n_new, SOURCES.index("sampled_negative"))])
    rule = (f"known non-landslide cells (labels.tif == 2, {len(kr)}), topped up to {neg_ratio:g} per positive with "
            f"random cells more than {buffer_cells:g} cells from any landslide on: {ground.rule}")

    rows = np.concatenate([pr, nr]).astype(np.int64)
    cols = np.concatenate([pc, nc]).astype(np.int64)
    y = np.concatenate([np.ones(len(pr), np.int8), np.zeros(len(nr), np.int8)])
    source = np.concatenate([p_src, n_src]).astype(np.uint8)
    # negatives are single cells: each its own group, numbered after the polygons
    group = np.concatenate([groups, int(ids.max()) + 1 + np.arange(len(nr), dtype=np.int64)])
    if max_samples is not None and len(y) > max_samples:
        keep = []
        for cls in (1, 0):  # stratified: class proportions kept
            idx = np.flatnonzero(y == cls)
            k = max(1, int(round(max_samples * len(idx) / len(y))))
            keep.append(rng.choice(idx, size=min(k, len(idx)), replace=False))
        order = np.sort(np.concatenate(keep))
        rows, cols, y, source, group = rows[order], cols[order], y[order], source[order], group[order]
    return SampleSet(rows, cols, y, source, balanced_weights(y), group), rule
