"""Susceptibility inference: the model interface the block engine uses, and whole-region maps.

``load_susceptibility(model_dir)`` returns a :class:`SusceptibilityModel` for any ``lsm`` artefact:

* window models (``small``/``medium``/``large``/``multiscale``): every inner cell's windows are cut
  by the numba extractor in batches and run through the 3D-CNN -- the reference path;
* the dense model (``multiscale_dense``): one fully convolutional pass over the halo-padded block;
* scikit-learn baselines: the centre cell's factor values (halo 0).

``predict_block(stack)`` takes float32 ``[c, H + 2*halo, W + 2*halo]`` in physical units (NaN =
nodata), normalises it with the card's recorded ranges (``compute.factors.normalise``, so training
and serving agree), and returns float32 ``[H, W]``; a cell with any factor missing gives NaN.

``map_region`` writes the whole-region probability COG (with overviews), the 5-class Jenks map and a
JSON of class breaks, class areas and the share of known landslides per class.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.compute.factors import Normalisation, normalise
from slidemap.compute.windows import block_centres, iter_windows
from slidemap.errors import BuildError, InputError, ModelError

log = logging.getLogger(__name__)

WINDOW_BATCH = 2048


@dataclass
class SusceptibilityModel:
    name: str
    version: str
    factor_names: list[str]
    halo: int
    mode: str  # "window" | "dense" | "centre"
    card: dict[str, Any]
    model: Any = field(repr=False)
    normalisation: Normalisation = field(repr=False)
    sizes: tuple[int, ...] = ()
    out_size: int = 12
    predict_fn: Any = field(default=None, repr=False)  # numpy -> numpy, traced once (Keras models)

    def predict_block(self, stack: np.ndarray) -> np.ndarray:
        stack = np.asarray(stack)
        if stack.ndim != 3 or stack.shape[0] != len(self.factor_names):
            raise ModelError(
                f"model {self.name}-{self.version} needs [{len(self.factor_names)}, H+2h, W+2h] "
                f"({', '.join(self.factor_names)}), got shape {stack.shape}"
            )
        h = self.halo
        height, width = stack.shape[1] - 2 * h, stack.shape[2] - 2 * h
        if height <= 0 or width <= 0:
            raise ModelError(f"block {stack.shape[1:]} is smaller than twice the halo ({h})")
        inner = stack[:, h : h + height, h : h + width]
        known = np.isfinite(inner).all(axis=0)
        out = np.full((height, width), np.nan, dtype=np.float32)
        if not known.any():
            return out
        norm = normalise(stack, self.normalisation)
        if self.mode == "dense":
            x = np.ascontiguousarray(norm.transpose(1, 2, 0)[np.newaxis])
            prob = self.predict_fn(x)[0, :, :, 0]
            out[known] = prob[known]
        elif self.mode == "centre":
            values = norm[:, h : h + height, h : h + width][:, known].T
            out[known] = self.model.predict_proba(values)[:, 1]
        else:
            rows, cols = block_centres(height, width, h)
            sel = known.ravel()
            rows, cols = rows[sel], cols[sel]
            flat = np.empty(len(rows), dtype=np.float32)
            for start, windows in iter_windows(norm, rows, cols, self.sizes, self.out_size, WINDOW_BATCH):
                flat[start : start + len(windows)] = self.predict_fn(windows).reshape(-1)
            out[known] = flat
        return out


def load_susceptibility(model_dir: str | Path) -> SusceptibilityModel:
    from slidemap.compute.models.store import verify

    model_dir = Path(model_dir)
    card = verify(model_dir)
    if card.get("kind") != "lsm":
        raise ModelError(f"{model_dir}: a {card.get('kind')!r} model, not a susceptibility (lsm) model")
    arch = card.get("architecture", "")
    weights = model_dir / card["weights"]
    if card["weights"].endswith(".joblib"):
        import joblib

        model, mode = joblib.load(weights), "centre"
    else:
        from slidemap.compute.inference import configure_tensorflow

        configure_tensorflow()
        import keras

        # the artefact's own hash was just verified; safe_mode stays on (no lambdas in these models)
        model = keras.models.load_model(weights, compile=False)
        mode = "dense" if arch == "dense_fcn" else "window"
    from slidemap.training.lsm import compiled_predict

    predict_fn = compiled_predict(model) if mode != "centre" else None
    windows = card.get("windows") or {}
    return SusceptibilityModel(
        name=card["name"],
        version=card["version"],
        factor_names=list(card["factor_names"]),
        halo=int(card.get("halo", 0)),
        mode=mode,
        card=card,
        model=model,
        normalisation=Normalisation.from_list(card["normalisation"]),
        sizes=tuple(windows.get("sizes", ())),
        out_size=int(windows.get("out_size", 12)),
        predict_fn=predict_fn,
    )


DEFAULT_MODEL = {"window": "multiscale", "dense": "multiscale_dense"}


def resolve_model(region_dir: str | Path, model: str | None, mode: str) -> Path:
    """A model folder from a path, an artefact name (newest version) or the mode's default name."""
    from slidemap.compute.models.store import latest_model

    if model and Path(model).is_dir():
        return Path(model)
    name = model or DEFAULT_MODEL[mode]
    info = latest_model(region_dir, "lsm", (name,))
    if info is None:
        raise BuildError(
            f"{Path(region_dir) / 'models' / 'lsm'}: no {name!r} model; run `slidemap train lsm {region_dir}` first"
        )
    return info.path


def predict_region(
    model: SusceptibilityModel, stack: np.ndarray, block: int = 256, progress: bool = True
) -> np.ndarray:
    """Probability map of a whole ``[c, H, W]`` physical stack, block by block with the model's halo.

    Edge blocks are padded with NaN (nodata) to the full block size, so every call has one shape.
    """
    from tqdm.auto import tqdm

    c, height, width = stack.shape
    h = model.halo
    padded = np.full((c, height + 2 * h + block, width + 2 * h + block), np.nan, dtype=np.float32)
    padded[:, h : h + height, h : h + width] = stack
    out = np.full((height, width), np.nan, dtype=np.float32)
    tiles = [(r, col) for r in range(0, height, block) for col in range(0, width, block)]
    for r, col in tqdm(tiles, desc=f"map {model.name} ({model.mode})", unit="block", disable=not progress):
        prob = model.predict_block(padded[:, r : r + block + 2 * h, col : col + block + 2 * h])
        hh, ww = min(block, height - r), min(block, width - col)
        out[r : r + hh, col : col + ww] = prob[:hh, :ww]
    return out


def map_region(
    region_dir: str | Path,
    model: str | None = None,
    mode: str = "dense",
    out: str | Path | None = None,
    block: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write the probability COG, the Jenks class COG and the classes JSON; return the summary."""
    import rasterio

    from slidemap.compute.grid import Grid
    from slidemap.compute.io import write_cog, write_json_atomic
    from slidemap.training.lsm_report import classify, jenks_classes

    if mode not in DEFAULT_MODEL:
        raise InputError(f"--mode {mode}: choose window or dense")
    region_dir = Path(region_dir)
    factors_tif = region_dir / "build" / "factors.tif"
    if not factors_tif.is_file():
        raise BuildError(f"{factors_tif}: not built; run `slidemap prepare {region_dir}` first")
    model_dir = resolve_model(region_dir, model, mode)
    sm = load_susceptibility(model_dir)
    if block is not None and block <= 0:
        raise InputError(f"--block {block}: give a positive block side in cells, e.g. --block 256")
    if mode == "dense" and sm.mode == "window":
        raise InputError(
            f"--mode dense: {sm.name} is a window model; use --mode window, or --model multiscale_dense"
        )
    if mode == "window" and sm.mode == "dense":
        raise InputError(
            f"--mode window: {sm.name} is the dense model; use --mode dense, or a window model such as --model multiscale"
        )
    if sm.mode == "centre":
        log.info("%s works on centre-cell values; --mode %s has no effect", sm.name, mode)
    with rasterio.open(factors_tif) as src:
        names = list(src.descriptions)
        stack = src.read().astype(np.float32)
        grid = Grid(src.crs, src.transform, src.width, src.height)
    missing = [n for n in sm.factor_names if n not in names]
    if missing:
        raise ModelError(f"{model_dir}: trained on factors {missing} that {factors_tif} lacks; retrain on this region")
    stack = stack[[names.index(n) for n in sm.factor_names]]
    labels_tif = region_dir / "build" / "labels.tif"
    labels = rasterio.open(labels_tif).read(1) if labels_tif.is_file() else None
    synthetic = bool(sm.card.get("synthetic"))
    t0 = time.perf_counter()
    prob = predict_region(sm, stack, block=block or (512 if sm.mode == "dense" else 128), progress=progress)
    seconds = time.perf_counter() - t0
    n_cells = int(np.isfinite(prob).sum())
    out = Path(out) if out else region_dir / "maps" / f"susceptibility_{sm.name}-{sm.version}.tif"
    tags = {"synthetic": str(synthetic).lower(), "model": sm.name, "model_version": sm.version, "mode": sm.mode}
    write_cog(out, prob, grid, band_names=["susceptibility"], nodata=float("nan"), tags=tags)
    cell_km2 = grid.res[0] * grid.res[1] / 1e6
    slides = prob[labels == 1] if labels is not None else None
    classes = jenks_classes(prob.ravel(), slides, cell_area_km2=cell_km2)
    class_map = classify(prob, classes["breaks"])
    classes_tif = out.with_name(out.stem + "_classes.tif")
    write_cog(classes_tif, class_map, grid, band_names=["susceptibility_class"], nodata=0, tags=tags,
              overview_resampling="mode")
    summary = {
        "kind": "lsm_map",
        "synthetic": synthetic,
        "model": sm.name,
        "model_versions": {sm.name: sm.version},
        "mode": sm.mode,
        "probability": str(out),
        "classes_raster": str(classes_tif),
        "cells": n_cells,
        "seconds": round(seconds, 2),
        "cells_per_s": round(n_cells / seconds, 1) if seconds > 0 else None,
        "classes": {**classes, "landslides_from": "labels.tif == 1 (inventory cells)",
                    "fitted_on": "a random sample of the map's values (Fisher-Jenks is O(k n^2))"},
    }
    write_json_atomic(out.with_name(out.stem + "_classes.json"), summary)
    return summary
