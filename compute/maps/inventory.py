"""`slidemap inventory REGION_DIR`: a landslide inventory map from the region's imagery.

Steps (stage-1 post-processing of ``../shared/method.md``):

1. detect over ``build/imagery.tif`` (streamed, seamless: :mod:`slidemap.compute.maps.detection`);
2. threshold at the model card's threshold (chosen on validation data when it was trained; the
   same number ``detect`` writes into its output's tags and cuts its mask at);
3. remove detections on roads, water and settlements (``build/exclusion_imagery.tif``, when the
   region has such layers);
4. vectorise connected areas (``rasterio.features.shapes``) into ``landslides_detected.gpkg`` with
   the area (CRS units squared) and the mean probability of each polygon;
5. compare with the known inventory (``build/inventory.gpkg``, label True) at object level:
   recall = known landslides touched by a detected area / known landslides;
   precision = detected areas touching a known landslide / detected areas.
   Pixel-level metrics against ``build/labels_imagery.tif`` are reported too.

Outputs go to ``REGION/reports/inventory/<run_id>/`` (report.json, report.md, the GeoPackage and
the probability COG).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.compute.region.layout import RegionLayout
from slidemap.compute import provenance
from slidemap.compute.region.inventory_layers import DETECTED_LAYER, DETECTED_NAME, read_inventory, write_detected_styles
from slidemap.errors import BuildError

log = logging.getLogger(__name__)


def pick_detector(region_dir: Path, spec: str | Path | None) -> Path:
    """The detector ``spec`` names (a name, a version, a folder) or the region's default (the best by
    blocked F1 with skill), through :func:`slidemap.compute.models.select.resolve_model`."""
    from slidemap.compute.models.select import resolve_model

    if spec is not None and Path(spec).is_dir() and (Path(spec) / "card.json").is_file():
        return Path(spec)
    return resolve_model(region_dir, "detection", None if spec is None else str(spec), allow_path=True).path


def vectorise(
    prob: np.ndarray, keep: np.ndarray, transform: Any, min_pixels: int
) -> tuple[list[dict[str, Any]], int]:
    """Polygons of connected ``keep`` areas (8-connected) with pixel count and mean probability."""
    from rasterio import features
    from scipy import ndimage
    from shapely.geometry import shape

    labels, n = ndimage.label(keep, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return [], 0
    idx = np.arange(1, n + 1)
    counts = ndimage.sum_labels(np.ones_like(prob, dtype=np.float64), labels, idx)
    means = ndimage.mean(np.nan_to_num(prob), labels, idx)
    large = np.zeros(n + 1, dtype=bool)
    large[1:] = counts >= min_pixels
    labels = np.where(large[labels], labels, 0).astype(np.int32)
    polys: dict[int, list[Any]] = {}
    for geom, value in features.shapes(labels, mask=labels > 0, transform=transform, connectivity=8):
        polys.setdefault(int(value), []).append(shape(geom))
    from shapely.ops import unary_union

    rows = []
    for value, parts in polys.items():
        geom = parts[0] if len(parts) == 1 else unary_union(parts)
        rows.append({"id": value, "pixels": int(counts[value - 1]), "mean_probability": float(means[value - 1]),
                     "geometry": geom})
    return rows, n


def object_metrics(detected: Any, inventory: Any, pixel_size: float) -> dict[str, Any]:
    """Object-level recall and precision; points count as hit when inside (or within one pixel of) an area."""
    if inventory is None or len(inventory) == 0:
        return {"known_landslides": 0, "recall": None, "precision": None,
                "note": "no known landslides in the inventory"}
    known = inventory.copy()
    point_like = known.geometry.geom_type.isin(["Point", "MultiPoint"])
    known.loc[point_like, "geometry"] = known.loc[point_like].geometry.buffer(pixel_size)
    if len(detected) == 0:
        return {"known_landslides": int(len(known)), "detected_areas": 0, "known_hit": 0,
                "detected_matching": 0, "recall": 0.0, "precision": None}
    import geopandas as gpd

    pairs = gpd.sjoin(detected[["geometry"]].reset_index(names="det"), known[["geometry"]].reset_index(names="known"),
                      how="inner", predicate="intersects")
    known_hit = int(pairs["known"].nunique())
    det_hit = int(pairs["det"].nunique())
    return {
        "known_landslides": int(len(known)),
        "detected_areas": int(len(detected)),
        "known_hit": known_hit,
        "detected_matching": det_hit,
        "recall": known_hit / len(known),
        "precision": det_hit / len(detected),
        "matching_rule": "a detected polygon and a known landslide match when they intersect "
                         "(points buffered by one pixel)",
    }


def map_inventory(
    region_dir: str | Path,
    model_dir: str | Path | None = None,
    threshold: float | None = None,
    min_pixels: int = 4,
    progress: bool = True,
    run_id: str | None = None,
) -> dict[str, Any]:
    import geopandas as gpd
    import rasterio

    from slidemap.compute.maps.detection import detect_file, load_detector
    from slidemap.compute.models.store import new_run_id
    from slidemap.compute.region.raster_io import atomic_path, write_bytes_atomic, write_json_atomic
    from slidemap.compute.region.image_files import region_is_synthetic

    region_dir = Path(region_dir)
    layout = RegionLayout.of(region_dir)
    imagery = layout.imagery_tif
    if not imagery.is_file():
        raise BuildError(f"{imagery}: missing; add imagery to region.toml and run `slidemap prepare {region_dir}`")
    model_path = pick_detector(region_dir, model_dir)
    det = load_detector(model_path)
    thr = float(det.threshold if threshold is None else threshold)
    out_dir = layout.report_dir("inventory", run_id or new_run_id())
    out_dir.mkdir(parents=True, exist_ok=True)
    prob_path = out_dir / "probability.tif"
    detect_file(model_path, imagery, prob_path, progress=progress, detector=det)
    with rasterio.open(prob_path) as src:
        prob = src.read(1)
        transform, crs = src.transform, src.crs
        pixel_area = abs(transform.a * transform.e)
        pixel_size = abs(transform.a)
    detected_mask = np.isfinite(prob) & (prob >= thr)
    exclusion_path = layout.exclusion_imagery_tif
    excluded_pixels = 0
    if exclusion_path.is_file():
        with rasterio.open(exclusion_path) as src:
            excl = src.read(1) == 1
        if excl.shape != prob.shape:
            raise BuildError(f"{exclusion_path}: grid differs from imagery.tif; rerun `slidemap prepare {region_dir}`")
        excluded_pixels = int((detected_mask & excl).sum())
        keep = detected_mask & ~excl
    else:
        keep = detected_mask
    rows, n_detected = vectorise(prob, keep, transform, min_pixels)
    frame = gpd.GeoDataFrame(rows, geometry="geometry", crs=crs) if rows else gpd.GeoDataFrame(
        {"id": [], "pixels": [], "mean_probability": []}, geometry=[], crs=crs)
    frame["area"] = frame.geometry.area if len(frame) else []
    gpkg = out_dir / DETECTED_NAME
    marked = region_is_synthetic(region_dir) or bool(det.card.get("synthetic"))
    with atomic_path(gpkg, suffix=".gpkg") as tmp:
        frame.to_file(tmp, layer=DETECTED_LAYER, driver="GPKG",
                      **provenance.gpkg_metadata(marked))
        write_detected_styles(tmp, published_as=gpkg)
    inventory = None
    inv_path = layout.inventory_gpkg
    if inv_path.is_file():
        inv = read_inventory(inv_path)
        if "label" in inv.columns:
            inv = inv[inv["label"].astype(bool)]
        inventory = inv.to_crs(crs) if inv.crs is not None and crs is not None else inv
    obj = object_metrics(frame, inventory, pixel_size)
    pixel = None
    labels_path = layout.labels_imagery_tif
    if labels_path.is_file():
        with rasterio.open(labels_path) as src:
            lab = src.read(1)
        if lab.shape == prob.shape:
            pixel = _pixel_metrics(lab, keep, np.isfinite(prob))
            pixel["threshold"] = thr
            pixel["note"] = "pixel metrics of the kept (masked, size-filtered pixels not removed) detections vs labels_imagery.tif"
    synthetic = region_is_synthetic(region_dir) or bool(det.card.get("synthetic"))
    trained_here = det.card.get("training_data", {}).get("source", {}).get("path") == str(region_dir.resolve())
    report = {
        "kind": "inventory",
        "synthetic": synthetic,
        "data": {"region": str(region_dir.resolve()), "imagery": str(imagery)},
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model_versions": {str(det.card.get("name", "unet")): det.version},
        "model_path": str(model_path),
        "threshold": thr,
        "min_pixels": min_pixels,
        "areas_detected": int(n_detected),
        "areas_kept": int(len(frame)),
        "detected_pixels": int(detected_mask.sum()),
        "excluded_pixels": excluded_pixels,
        "exclusion_layer": exclusion_path.is_file(),
        "total_area": float(frame["area"].sum()) if len(frame) else 0.0,
        "area_units": f"{crs.linear_units if crs else 'unit'}^2",
        "pixel_area": pixel_area,
        "trained_on_this_region": trained_here,
        "object_level": obj,
        "pixel_level": pixel,
        "outputs": {"gpkg": gpkg.name, "probability": prob_path.name},
    }
    write_json_atomic(out_dir / "report.json", report)
    write_bytes_atomic(out_dir / "report.md", _markdown(report).encode())
    return {**report, "gpkg": str(gpkg), "report_dir": str(out_dir)}


def _pixel_metrics(labels: np.ndarray, detected: np.ndarray, valid: np.ndarray) -> dict[str, Any]:
    """Pooled pixel counts of the kept detections against the labels (255 and no-data pixels left out)."""
    ok = valid & (labels != 255)
    y, d = labels[ok] > 0, detected[ok]
    tp, fp = int((y & d).sum()), int((~y & d).sum())
    fn, tn = int((y & ~d).sum()), int((~y & ~d).sum())

    def ratio(a: float, b: float) -> float:
        return float(a / b) if b > 0 else 0.0

    iou, iou_bg = ratio(tp, tp + fp + fn), ratio(tn, tn + fp + fn)
    return {"accuracy": ratio(tp + tn, tp + tn + fp + fn), "precision": ratio(tp, tp + fp),
            "recall": ratio(tp, tp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn), "iou": iou,
            "miou": (iou + iou_bg) / 2, "pixels": int(ok.sum()), "landslide_pixels": int(y.sum()),
            "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn}}


def _markdown(r: dict[str, Any]) -> str:
    def f(v: Any) -> str:
        return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    title = ("SYNTHETIC DATA — " if r["synthetic"] else "") + "Landslide inventory map"
    o = r["object_level"]
    lines = [f"# {title}", ""]
    if r["synthetic"]:
        lines += ["**SYNTHETIC**: generated demo data or a model trained on it.", ""]
    lines += [
        f"- model: `{r['model_path']}` (version {next(iter(r['model_versions'].values()))}), threshold {r['threshold']:.3f}",
        f"- areas: {r['areas_detected']} connected areas detected, {r['areas_kept']} kept "
        f"(>= {r['min_pixels']} px, after removing {r['excluded_pixels']} px on roads/water/settlements"
        f"{'' if r['exclusion_layer'] else ' — no exclusion layer in this region'})",
        f"- total kept area: {r['total_area']:.0f} {r['area_units']}",
        "",
        "## Object level (against the known inventory)",
        "",
        "| known landslides | hit | recall | detected areas | matching | precision |",
        "|---|---|---|---|---|---|",
        f"| {o.get('known_landslides')} | {o.get('known_hit', '-')} | {f(o.get('recall'))} | "
        f"{o.get('detected_areas', '-')} | {o.get('detected_matching', '-')} | {f(o.get('precision'))} |",
        "",
        o.get("matching_rule", o.get("note", "")),
        "",
    ]
    if r.get("trained_on_this_region"):
        lines += ["Note: the detector was trained on chips of this region, so these figures include its "
                  "training areas and are optimistic; the U-Net report's blocked-split figures are the honest ones.", ""]
    p = r.get("pixel_level")
    if p:
        lines += ["## Pixel level (kept detections vs labels_imagery.tif)", "",
                  "| accuracy | precision | recall | F1 | mIoU |", "|---|---|---|---|---|",
                  f"| {f(p['accuracy'])} | {f(p['precision'])} | {f(p['recall'])} | {f(p['f1'])} | {f(p['miou'])} |", ""]
    return "\n".join(lines)
