"""Susceptibility inference: the model interface the block engine uses, and whole-region maps.

``load_susceptibility(model_dir, mode)`` returns a :class:`SusceptibilityModel` for any ``lsm``
artefact:

* window 3D-CNNs (``small``/``medium``/``large``/``multiscale``): every inner cell's windows are cut
  by the numba extractor in batches and run through the network with the cell's own values -- the
  reference path (``mode="window"``);
* their fast form (``mode="dense"``): the dense network distilled from the window model, one pass
  over the halo-padded block. By default (``mode=None``) a window model is served by its fast form
  when the card records that the two agree (``fast_form.use``: Pearson r >= 0.97 on cells the fast
  form was not trained on), else by the window path;
* scikit-learn peers: the centre cell's encoded values (halo 0).

``predict_block(stack)`` takes float32 ``[factors, H + 2*halo, W + 2*halo]`` in physical units
(NaN = nodata), encodes it with the card's recorded encoding (``compute.factors.Encoding``, so
training and serving agree), and returns float32 ``[H, W]``; a cell with any factor missing gives NaN.

``map_region`` writes the whole-region probability COG (with overviews), the 5-class map (class
breaks from the model card, the one place they are decided) and a JSON of class areas and the share
of known landslides per class.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from slidemap.compute.region.layout import RegionLayout
from slidemap.compute.terrain.factors import Encoding
from slidemap.compute.models.runtime import ModelCache
from slidemap.compute.maps.windows import block_centres, iter_windows
from slidemap.errors import BuildError, InputError, ModelError

log = logging.getLogger(__name__)

WINDOW_BATCH = 2048
MODES = ("auto", "window", "dense")


@dataclass
class SusceptibilityModel:
    name: str
    version: str  # the model's version (a fast form serves under its window model's version)
    factor_names: list[str]
    halo: int
    mode: str  # "window" | "dense" | "centre"
    card: dict[str, Any]
    model: Any = field(repr=False)
    encoding: Encoding = field(repr=False)
    window_channels: tuple[int, ...] = ()
    centre_channels: tuple[int, ...] = ()
    sizes: tuple[int, ...] = ()
    out_size: int = 12
    predict_fn: Any = field(default=None, repr=False)  # numpy -> numpy, traced once (Keras models)
    computed_by: str = ""  # the artefact whose weights run: the fast form's version, or ``version``

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
        encoded = self.encoding.encode(stack)
        if self.mode == "dense":
            x = np.ascontiguousarray(encoded.transpose(1, 2, 0)[np.newaxis])
            prob = self.predict_fn(x)[0, :, :, 0]
            out[known] = prob[known]
        elif self.mode == "centre":
            values = encoded[list(self.centre_channels), h : h + height, h : h + width][:, known].T
            out[known] = self.model.predict_proba(values)[:, 1]
        else:
            rows, cols = block_centres(height, width, h)
            sel = known.ravel()
            rows, cols = rows[sel], cols[sel]
            window_stack = np.ascontiguousarray(encoded[list(self.window_channels)])
            centre = np.ascontiguousarray(encoded[:, rows, cols][list(self.centre_channels)].T)
            flat = np.empty(len(rows), dtype=np.float32)
            for start, windows in iter_windows(window_stack, rows, cols, self.sizes, self.out_size, WINDOW_BATCH):
                stop = start + len(windows)
                flat[start:stop] = self.predict_fn([windows, centre[start:stop]]).reshape(-1)
            out[known] = flat
        return out


def _load_weights(model_dir: Path, card: dict[str, Any]) -> Any:
    weights = model_dir / card["weights"]
    if card["weights"].endswith(".joblib"):
        import joblib

        return joblib.load(weights)
    from slidemap.compute.models.runtime import configure_tensorflow, with_compute_policy

    configure_tensorflow()
    import keras

    # the artefact's own hash was just verified; safe_mode stays on (no lambdas in these models)
    return with_compute_policy(keras.models.load_model(weights, compile=False))


def load_susceptibility(model_dir: str | Path, mode: str | None = None) -> SusceptibilityModel:
    """Load an ``lsm`` artefact for inference; ``mode`` (None/"auto", "window", "dense") as in the
    module docstring."""
    from slidemap.compute.models.store import verify

    if mode == "auto":
        mode = None
    if mode not in (None, "window", "dense"):
        raise InputError(f"--mode {mode}: choose auto, window or dense")
    model_dir = Path(model_dir)
    card = verify(model_dir)
    if card.get("kind") != "lsm":
        raise ModelError(f"{model_dir.name}: a {card.get('kind')!r} model, not a susceptibility (lsm) model")
    if "encoding" not in card:
        raise ModelError(f"{model_dir.name}: trained by an older slidemap (no input encoding in its card); "
                         "retrain with `slidemap train lsm`")
    encoding = Encoding.from_dict(card["encoding"])
    arch = card.get("architecture", "")
    fast = card.get("fast_form") or {}
    name, version = card["name"], card["version"]
    run_dir, run_card = model_dir, card
    if arch == "window_cnn" and (mode == "dense" or (mode is None and fast.get("use"))):
        if not fast:
            raise InputError(f"--mode dense: {name} has no fast form; use --mode window (or retrain with distillation)")
        run_dir = model_dir.parent / f"{fast['name']}-{fast['version']}"
        if not run_dir.is_dir():
            raise ModelError(f"{model_dir.name}: its fast form {run_dir.name} is missing; retrain, or use --mode window")
        run_card = verify(run_dir)
    elif mode == "window" and arch == "dense_fcn":
        of = card.get("fast_form_of") or {}
        raise InputError(f"--mode window: {name} is a fast form; name its window model ({of.get('name', 'e.g. multiscale')})")
    elif mode == "dense" and arch.startswith("centre"):
        log.info("%s works on centre-cell values; --mode dense has no effect", name)
    model = _load_weights(run_dir, run_card)
    run_arch = run_card.get("architecture", "")
    kind = "centre" if run_arch.startswith("centre") else "dense" if run_arch == "dense_fcn" else "window"
    from slidemap.compute.models.runtime import compiled_predict

    windows = card.get("windows") or {}
    n = len(encoding.channels)
    return SusceptibilityModel(
        name=name,
        version=version,
        factor_names=list(card["factor_names"]),
        halo=int(run_card.get("halo", 0)) if kind != "centre" else 0,
        mode=kind,
        card=card,
        model=model,
        encoding=encoding,
        window_channels=tuple(windows.get("window_channels", range(n))),
        centre_channels=tuple(card.get("centre_channels", range(n))),
        sizes=tuple(windows.get("sizes", ())),
        out_size=int(windows.get("out_size", 12)),
        predict_fn=compiled_predict(model) if kind != "centre" else None,
        computed_by=run_card["version"],
    )


def resolve_model(region_dir: str | Path, model: str | None) -> Path:
    """A model folder from a name, a version hash, a folder, or the region's default."""
    from slidemap.compute.models.select import resolve_model as resolve

    return resolve(region_dir, "susceptibility", model, allow_path=True).path


def fitted_block(height: int, width: int, target: int, multiple: int = 16) -> tuple[int, int]:
    """Block rows and columns near ``target`` that tile a ``height`` x ``width`` grid with little
    padding: as many blocks per side as ``target`` needs, each as small as covers the side (rounded
    up to ``multiple``). Every block keeps one shape (no retracing), and a 667-cell side takes two
    blocks of 336 instead of two of 512 (which computed 2.4x the cells; measured in BENCHMARKS.md)."""

    def side(n: int) -> int:
        per = math.ceil(n / max(1, math.ceil(n / target)))
        return max(multiple, math.ceil(per / multiple) * multiple)

    return side(height), side(width)


def predict_region(
    model: SusceptibilityModel, stack: np.ndarray, block: int | tuple[int, int] = 256, progress: bool = True
) -> np.ndarray:
    """Probability map of a whole ``[c, H, W]`` physical stack, block by block with the model's halo.

    ``block``: a side, or (rows, columns) (see :func:`fitted_block`). Edge blocks are padded with NaN
    (nodata) to the full block size, so every call has one shape.
    """
    from tqdm.auto import tqdm

    c, height, width = stack.shape
    bh, bw = (block, block) if isinstance(block, int) else block
    h = model.halo
    padded = np.full((c, height + 2 * h + bh, width + 2 * h + bw), np.nan, dtype=np.float32)
    padded[:, h : h + height, h : h + width] = stack
    out = np.full((height, width), np.nan, dtype=np.float32)
    tiles = [(r, col) for r in range(0, height, bh) for col in range(0, width, bw)]
    for r, col in tqdm(tiles, desc=f"map {model.name} ({model.mode})", unit="block", disable=not progress):
        prob = model.predict_block(padded[:, r : r + bh + 2 * h, col : col + bw + 2 * h])
        hh, ww = min(bh, height - r), min(bw, width - col)
        out[r : r + hh, col : col + ww] = prob[:hh, :ww]
    return out


_loaded: ModelCache = ModelCache()  # per process: the models this process's Dask tasks loaded


def map_block(model_dir: str, mode: str | None, factors_tif: str, indexes: list[int], block: int,
              row: int, col: int) -> tuple[int, int, np.ndarray]:
    """One ``block`` x ``block`` cell block of a susceptibility map at (row, col) (a Dask task): the
    block plus the model's halo read from ``factors_tif`` (NaN beyond the raster, as
    :func:`predict_region` pads), the inner cells predicted; ``(row, col, prob)`` cropped to the grid."""
    import rasterio
    from rasterio.windows import Window

    sm = _loaded.get_or_load((model_dir, mode), lambda: load_susceptibility(model_dir, None if mode == "auto" else mode))
    h = sm.halo
    with rasterio.open(factors_tif) as src:
        window = src.read(indexes, window=Window(col - h, row - h, block + 2 * h, block + 2 * h), boundless=True,
                          fill_value=np.nan, out_dtype="float32")
        height, width = src.height, src.width
    prob = sm.predict_block(window)
    return row, col, prob[: min(block, height - row), : min(block, width - col)]


def _map_on_dask(address: Any, model_dir: Path, mode: str, factors_tif: Path, indexes: list[int], grid: Any,
                 block: int, progress: bool) -> np.ndarray:
    from slidemap.compute.maps.dask_run import dask_client, run_tasks

    height, width = grid.shape
    tasks = [(str(model_dir), mode, str(factors_tif), indexes, block, r, c)
             for r in range(0, height, block) for c in range(0, width, block)]
    out = np.full((height, width), np.nan, dtype=np.float32)
    with dask_client(address) as client:
        for r, c, prob in run_tasks(client, map_block, tasks, progress, "map blocks"):
            out[r : r + prob.shape[0], c : c + prob.shape[1]] = prob
    return out


def map_region(
    region_dir: str | Path,
    model: str | None = None,
    mode: str = "auto",
    out: str | Path | None = None,
    block: int | None = None,
    progress: bool = True,
    dask: Any = None,
) -> dict[str, Any]:
    """Write the probability COG, the class COG and the classes JSON; return the summary.

    With ``dask`` (``local``, a scheduler address or a Client) the blocks are computed by the
    cluster's workers (:func:`map_block`, reading the factors from the region's path) and assembled
    here; every block sees what it sees in-process, so the maps are identical.
    """
    import rasterio

    from slidemap.compute.region.grid import Grid
    from slidemap.compute.region.raster_io import write_cog, write_json_atomic
    from slidemap.compute.maps.classes import card_breaks, class_table, classify, jenks_classes
    from slidemap.compute.region.styles import (
        SUSCEPTIBILITY_COLORMAP,
        Stop,
        colormap_stops,
        write_category_names,
        write_raster_styles,
    )

    if mode not in MODES:
        raise InputError(f"--mode {mode}: choose auto, window or dense")
    region_dir = Path(region_dir)
    layout = RegionLayout.of(region_dir)
    factors_tif = layout.factors_tif
    if not factors_tif.is_file():
        raise BuildError(f"{factors_tif}: not built; run `slidemap prepare {region_dir}` first")
    if block is not None and block <= 0:
        raise InputError(f"--block {block}: give a positive block side in cells, e.g. --block 256")
    model_dir = resolve_model(region_dir, model)
    sm = load_susceptibility(model_dir, mode)
    with rasterio.open(factors_tif) as src:
        names = list(src.descriptions)
        grid = Grid(src.crs, src.transform, src.width, src.height)
    missing = [n for n in sm.factor_names if n not in names]
    if missing:
        raise ModelError(f"{model_dir}: trained on factors {missing} that {factors_tif} lacks; retrain on this region")
    indexes = [names.index(n) + 1 for n in sm.factor_names]
    # the card's breaks: the tiles, the map and the report classify alike (one owner of the rule);
    # a card without them fails here, before any compute
    breaks = card_breaks(sm.card, sm.name, sm.version)
    labels_tif = layout.labels_tif
    labels = rasterio.open(labels_tif).read(1) if labels_tif.is_file() else None
    synthetic = bool(sm.card.get("synthetic"))
    given = block
    block = block or (128 if sm.mode == "window" else 512)
    t0 = time.perf_counter()
    if dask is None:
        with rasterio.open(factors_tif) as src:
            stack = src.read(indexes).astype(np.float32)
        # a block size the user gives is used as it is; else blocks fitted to the grid (no padding waste)
        shape = (given, given) if given else fitted_block(grid.height, grid.width, block)
        prob = predict_region(sm, stack, block=shape, progress=progress)
    else:
        prob = _map_on_dask(dask, Path(model_dir).resolve(), mode, factors_tif.resolve(), indexes, grid, block, progress)
    seconds = time.perf_counter() - t0
    n_cells = int(np.isfinite(prob).sum())
    out = Path(out) if out else layout.maps / f"susceptibility_{sm.name}-{sm.version}.tif"
    tags = {"synthetic": str(synthetic).lower(), "model": sm.name, "model_version": sm.version, "mode": sm.mode}
    write_cog(out, prob, grid, band_names=["susceptibility"], nodata=float("nan"), tags=tags)
    cell_km2 = grid.res[0] * grid.res[1] / 1e6
    slides = prob[labels == 1] if labels is not None else None
    classes = jenks_classes(prob.ravel(), slides, breaks=breaks, cell_area_km2=cell_km2)
    class_map = classify(prob, classes["breaks"])
    classes_tif = out.with_name(out.stem + "_classes.tif")
    table = class_table()
    write_cog(classes_tif, class_map, grid, band_names=["susceptibility_class"], nodata=0, tags=tags,
              overview_resampling="mode", colormap={0: (0, 0, 0, 0), **{v: (*rgb, 255) for v, (_, rgb) in table.items()}})
    # styles beside both maps, so QGIS opens them as the server shows them
    write_category_names(classes_tif, {0: "no data", **{v: name for v, (name, _) in table.items()}})
    styles = write_raster_styles(classes_tif, [Stop(v, rgb, name) for v, (name, rgb) in table.items()], classes=True)
    styles += write_raster_styles(out, colormap_stops(SUSCEPTIBILITY_COLORMAP, units="probability"), classes=False)
    summary = {
        "kind": "lsm_map",
        "synthetic": synthetic,
        "model": sm.name,
        "model_versions": {sm.name: sm.version},
        "mode": sm.mode,
        "computed_by": sm.computed_by,
        "probability": str(out),
        "classes_raster": str(classes_tif),
        "styles": [str(p) for p in styles],
        "cells": n_cells,
        "seconds": round(seconds, 2),
        "cells_per_s": round(n_cells / seconds, 1) if seconds > 0 else None,
        "classes": {**classes, "landslides_from": "labels.tif == 1 (inventory cells)",
                    "breaks_from": "the model card (Jenks natural breaks of the training region's served probabilities)"
                    if breaks else "this map (Jenks natural breaks on a random sample of its values)"},
    }
    write_json_atomic(out.with_name(out.stem + "_classes.json"), summary)
    return summary
