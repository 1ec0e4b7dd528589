"""Susceptibility classes: the one owner of their names, colours and breaks.

Five classes by Jenks natural breaks (the paper's very low .. very high). The breaks of a model are
decided once, at training, and stored in its card; the map COG, the tiles and the reports classify
with those breaks through :func:`classify`, so they always agree. Names and colours are used by the
class COG's colour table, its QGIS/SLD styles, the server's legend and the dashboard's.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from slidemap.errors import ModelError

CLASS_NAMES = ("very low", "low", "moderate", "high", "very high")
# ColorBrewer RdYlGn reversed: green (safe) to red (susceptible); readable by the colour-blind
CLASS_COLOURS = ((26, 152, 80), (145, 207, 96), (254, 224, 139), (252, 141, 89), (215, 48, 39))
NODATA_CLASS = 0
JENKS_SAMPLE = 3000  # Fisher-Jenks is O(k n^2): fit on a random sample of this many values


def class_table() -> dict[int, tuple[str, tuple[int, int, int]]]:
    """``{class value: (name, rgb)}`` of the five classes."""
    return {i + 1: (name, CLASS_COLOURS[i]) for i, name in enumerate(CLASS_NAMES)}


def jenks_breaks(values: np.ndarray, k: int = 5, sample: int = JENKS_SAMPLE, seed: int = 0) -> list[float]:
    """Upper class bounds by Jenks natural breaks (mapclassify's Fisher-Jenks, the exact optimum)."""
    import mapclassify

    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) > sample:
        rng = np.random.default_rng(seed)
        values = np.concatenate([rng.choice(values, sample - 2, replace=False), [values.min(), values.max()]])
    if len(np.unique(values)) < k:
        qs = np.linspace(0, 1, k + 1)[1:]
        return [float(v) for v in np.quantile(values, qs)]
    return [float(b) for b in mapclassify.FisherJenks(values, k=k).bins]


def classify(values: np.ndarray, breaks: list[float]) -> np.ndarray:
    """Class 1..k for each value (0 for NaN); values above the last break go to class k."""
    classes = np.digitize(values, np.asarray(breaks[:-1]), right=True).astype(np.uint8) + 1
    classes[~np.isfinite(values)] = NODATA_CLASS
    return classes


def card_breaks(card: dict[str, Any], name: str = "", version: str = "") -> list[float]:
    """The five classes' upper bounds a susceptibility model's card carries (the trainer's natural
    breaks over its region): the one source the tiles, the map COG and the report classify with."""
    value = card.get("class_breaks")
    if isinstance(value, list) and len(value) == 5 and all(isinstance(v, (int, float)) for v in value):
        return [float(v) for v in value]
    raise ModelError(
        f"model {name} {version} has no class_breaks in its card, so it has no susceptibility "
        f"classes; retrain it with `slidemap train lsm REGION`"
    )


def jenks_classes(
    area_values: np.ndarray,
    landslide_values: np.ndarray | None,
    breaks: list[float] | None = None,
    cell_area_km2: float | None = None,
) -> dict[str, Any]:
    """Breaks, each class's share of the area (and km2), and each class's share of the landslides."""
    area_values = np.asarray(area_values, dtype=np.float64)
    area_values = area_values[np.isfinite(area_values)]
    breaks = breaks or jenks_breaks(area_values)
    k = len(breaks)
    area_counts = np.bincount(classify(area_values, breaks), minlength=k + 1)[1:]
    out: dict[str, Any] = {
        "method": "Jenks natural breaks (mapclassify.FisherJenks)",
        "breaks": breaks,
        "names": list(CLASS_NAMES[:k]) if k == len(CLASS_NAMES) else [str(i + 1) for i in range(k)],
        "area_share": (area_counts / max(area_counts.sum(), 1)).tolist(),
    }
    if cell_area_km2 is not None:
        out["area_km2"] = (area_counts * cell_area_km2).tolist()
    if landslide_values is not None:
        lv = np.asarray(landslide_values, dtype=np.float64)
        lv = lv[np.isfinite(lv)]
        counts = np.bincount(classify(lv, breaks), minlength=k + 1)[1:]
        out["landslide_cells"] = counts.tolist()
        out["landslide_share"] = (counts / max(counts.sum(), 1)).tolist()
    return out
