"""Landslide inventories on disk: one owner of their GeoPackage layout and of "the latest detected".

A region's known inventory (``build/inventory.gpkg``, written by ``prepare``) keeps points and
polygons in separate layers -- ``inventory_polygons`` and ``inventory_points``, each with a boolean
``label`` (true: landslide, false: known non-landslide) and the ``source`` file -- so GIS clients see
typed layers, not "Unknown (any)" geometry; each layer carries its QGIS/SLD style. Readers use
:func:`read_inventory`, which also reads the single ``landslides`` layer of older builds and tests.

Detected inventories are the ``landslides_detected.gpkg`` of ``slidemap inventory`` runs under
``reports/inventory/<run_id>/``; run ids start with a UTC timestamp, so the latest is the last by
name (:func:`latest_detected`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slidemap.compute.region.layout import RegionLayout
from slidemap.compute.region.styles import VectorClass, write_gpkg_styles

LAYERS = {"polygon": "inventory_polygons", "point": "inventory_points"}
LEGACY_LAYER = "landslides"
DETECTED_NAME = "landslides_detected.gpkg"
DETECTED_LAYER = "landslides"
LANDSLIDE_RGB = (228, 26, 28)  # the server's inventory overlay red
NON_LANDSLIDE_RGB = (55, 126, 184)
DETECTED_RGB = (255, 127, 0)  # the overlay's "detected" orange
LABEL_CLASSES = (VectorClass("1", "landslide", LANDSLIDE_RGB), VectorClass("0", "not a landslide", NON_LANDSLIDE_RGB))


def geometry_kind(geom_type: str) -> str:
    return "point" if "Point" in geom_type else "polygon" if "Polygon" in geom_type else "other"


def write_inventory(path: Path, frame: Any, published_as: Path | None = None, **layer_options: Any) -> dict[str, int]:
    """Write ``frame`` (``label``, ``source``, geometry) as one layer per geometry kind, with styles
    (sidecars named after ``published_as`` when ``path`` is a temporary file); return the features
    per layer. Lines (or anything else) are refused by the caller's validation."""
    counts: dict[str, int] = {}
    kinds = frame.geometry.geom_type.map(geometry_kind)
    for kind, layer in LAYERS.items():
        part = frame[kinds == kind]
        if len(part):
            part.to_file(path, layer=layer, driver="GPKG", **layer_options)
            counts[layer] = int(len(part))
    write_gpkg_styles(path, {layer: ("label", LABEL_CLASSES, kind) for kind, layer in LAYERS.items() if layer in counts},
                      published_as)
    return counts


def read_inventory(path: Path) -> Any:
    """Every feature of an inventory GeoPackage (all its inventory layers, or the legacy one)."""
    import geopandas as gpd
    import pandas as pd
    import pyogrio

    names = [str(n) for n, _ in pyogrio.list_layers(path)]
    chosen = [n for n in LAYERS.values() if n in names] or [n for n in names if n != "layer_styles"][:1]
    frames = [gpd.read_file(path, layer=n) for n in chosen]
    if len(frames) == 1:
        return frames[0]
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)


def write_detected_styles(path: Path, published_as: Path | None = None) -> None:
    write_gpkg_styles(path, {DETECTED_LAYER: ("", (VectorClass(None, "detected landslide", DETECTED_RGB),), "polygon")},
                      published_as)


def latest_detected(region_dir: Path) -> Path | None:
    """The newest ``slidemap inventory`` run's detected polygons, or None."""
    runs = sorted(RegionLayout.of(region_dir).inventory_runs.glob(f"*/{DETECTED_NAME}"))
    return runs[-1] if runs else None
