"""The fixed layer registry of one region: what can be served, from which file or model.

Layer ids are fixed strings built here from the region's build folder and model artefacts
(``imagery``, ``imagery/false-colour``, ``factors/<name>``, ``detection``, ``susceptibility``,
``susceptibility/classes``, ``inventory``). Requests name a layer by id and a model by version;
both are looked up in dictionaries, so nothing a client sends ever becomes a path.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from slidemap.compute.blocks import (
    BlockEngine,
    InferenceExecutor,
    ModelRunner,
    detector_runner,
    susceptibility_runner,
)
from slidemap.compute.grid import Grid
from slidemap.compute.io import write_cog, write_json_atomic
from slidemap.errors import BuildError, ModelError, SlidemapError
from slidemap.compute.models.store import ModelInfo, latest_model, list_models, verify
from slidemap.server.errors import LayerNotFound, ModelNotFound

log = logging.getLogger(__name__)

SUSCEPTIBILITY_PREFERENCE = ("multiscale_dense", "multiscale")
CLASS_NAMES = ("very low", "low", "moderate", "high", "very high")
CLASS_COLOURS = ((26, 152, 80), (145, 207, 96), (254, 224, 139), (252, 141, 89), (215, 48, 39))

# Colormaps chosen per factor: sequential for magnitudes, diverging for signed curvature,
# cyclic for aspect, green-brown for NDVI, blues for water-related factors.
FACTOR_COLORMAPS = {
    "altitude": "terrain",
    "slope": "ylorrd",
    "aspect": "twilight",
    "plan_curvature": "rdbu",
    "profile_curvature": "rdbu",
    "roughness": "magma",
    "rainfall": "blues",
    "twi": "ylgnbu",
    "ndvi": "rdylgn",
    "distance_to_roads": "viridis_r",
    "distance_to_rivers": "viridis_r",
}
DIVERGING = ("plan_curvature", "profile_curvature")


@dataclass(frozen=True)
class Layer:
    id: str
    title: str
    kind: str  # imagery | factor | detection | susceptibility | overlay
    units: str
    source: Path | None = None  # raster behind file-backed layers
    indexes: tuple[int, ...] = (1,)
    rescale: tuple[tuple[float, float], ...] | None = None
    colormap_name: str | None = None
    colormap: dict[int, tuple[int, int, int, int]] | None = None
    categorical: bool = False
    model_kind: str | None = None  # unet | lsm for computed layers
    output: str = "value"  # value | probability | class
    description: str = ""
    classes: dict[int, str] = field(default_factory=dict)

    @property
    def computed(self) -> bool:
        return self.model_kind is not None

    @property
    def resampling(self) -> str:
        # Categorical values and model cells are shown as they are; continuous rasters smoothly.
        return "nearest" if (self.categorical or self.computed or self.kind == "overlay") else "bilinear"


def _hex(rgb: tuple[int, ...]) -> str:
    return "#" + "".join(f"{v:02x}" for v in rgb[:3])


def _fingerprint(*paths: Path) -> str:
    """Cheap identity of input files (name, size, mtime): changes whenever `prepare` rewrites them."""
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:10]


def _discrete_colormap(codes: list[int], name: str = "tab20") -> dict[int, tuple[int, int, int, int]]:
    from rio_tiler.colormap import cmap

    lut = cmap.get(name)
    n = max(1, len(codes))
    return {int(c): tuple(int(v) for v in lut[int(round(i * 255 / max(1, n - 1)))][:3]) + (255,) for i, c in enumerate(codes)}


def default_loaders() -> dict[str, Callable[[Path], Any]]:
    """Model loaders of the compute package (imported lazily: they import TensorFlow)."""

    def _load(kind: str) -> Callable[[Path], Any]:
        module, func = {
            "unet": ("slidemap.compute.detection", "load_detector"),
            "lsm": ("slidemap.compute.susceptibility", "load_susceptibility"),
        }[kind]

        def load(path: Path) -> Any:
            for mod_name in (module, "slidemap.compute.inference"):
                try:
                    mod = importlib.import_module(mod_name)
                except ModuleNotFoundError:
                    continue
                if hasattr(mod, func):
                    return getattr(mod, func)(path)
            raise ModelError(f"{path}: this slidemap build has no `{func}`; cannot serve {kind} models yet")

        return load

    return {"unet": _load("unet"), "lsm": _load("lsm")}


class LayerRegistry:
    """Layers, models and block engines of one region."""

    def __init__(
        self,
        region_dir: Path,
        cache_dir: Path,
        executor: InferenceExecutor,
        loaders: dict[str, Callable[[Path], Any]] | None = None,
        block_size: int = 256,
        wait_timeout: float = 300.0,
    ) -> None:
        self.region_dir = Path(region_dir)
        self.build = self.region_dir / "build"
        self.cache_dir = Path(cache_dir)
        self.executor = executor
        self.loaders = loaders or default_loaders()
        self.block_size = block_size
        self.wait_timeout = wait_timeout
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], Any] = {}
        self._engines: dict[tuple[str, str], BlockEngine] = {}
        self._breaks: dict[str, list[float]] = {}
        self.factors_path = self.build / "factors.tif"
        self.imagery_path = self.build / "imagery.tif"
        if not self.factors_path.is_file() and not self.imagery_path.is_file():
            raise BuildError(f"{self.build}: no factors.tif or imagery.tif; run `slidemap prepare {self.region_dir}` first")
        self.factors_meta = self._read_factors_json()
        self.synthetic = bool(self.factors_meta.get("synthetic", False))
        self.region_name = self._region_name()
        self.layers: dict[str, Layer] = {}
        self._build_layers()

    # ---- region -------------------------------------------------------------------------------
    def _read_factors_json(self) -> dict[str, Any]:
        path = self.build / "factors.json"
        if not path.is_file():
            return {"factors": []}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise BuildError(f"{path}: unreadable ({exc.msg}); rerun `slidemap prepare {self.region_dir}`") from exc

    def _region_name(self) -> str:
        manifest = self.region_dir / "region.toml"
        if manifest.is_file():
            import tomllib

            try:
                data = tomllib.loads(manifest.read_text())
                return str(data.get("region", {}).get("name") or self.region_dir.name)
            except (tomllib.TOMLDecodeError, OSError):
                pass
        return self.region_dir.name

    @property
    def label(self) -> str:
        return ("SYNTHETIC " if self.synthetic else "") + self.region_name

    def _band_names(self, path: Path) -> list[str]:
        with rasterio.open(path) as src:
            return [d or f"b{i}" for i, d in enumerate(src.descriptions, start=1)]

    # ---- layers -------------------------------------------------------------------------------
    def _build_layers(self) -> None:
        tag = " (SYNTHETIC)" if self.synthetic else ""
        if self.imagery_path.is_file():
            bands = self._band_names(self.imagery_path)
            for lid, title, want in (
                ("imagery", "True colour (B4, B3, B2)", ("B4", "B3", "B2")),
                ("imagery/false-colour", "False colour (B8, B4, B3)", ("B8", "B4", "B3")),
            ):
                if all(b in bands for b in want):
                    idx = tuple(bands.index(b) + 1 for b in want)
                    self.layers[lid] = Layer(
                        lid, title + tag, "imagery", "reflectance", self.imagery_path, idx,
                        rescale=self._percentile_rescale(self.imagery_path, idx),
                        description=f"Imagery {', '.join(want)}, rescaled to the 2-98 % percentiles{tag}",
                    )
        if self.factors_path.is_file():
            bands = self._band_names(self.factors_path)
            specs = {f["name"]: f for f in self.factors_meta.get("factors", [])}
            for i, name in enumerate(bands, start=1):
                spec = specs.get(name, {})
                lid = f"factors/{name}"
                units = str(spec.get("units", ""))
                if spec.get("kind") == "categorical":
                    classes = {int(k): str(v) for k, v in (spec.get("classes") or {}).items()}
                    lo, hi = int(spec.get("min", 1)), int(spec.get("max", 1))
                    codes = sorted(set(classes) | set(range(lo, hi + 1)))
                    self.layers[lid] = Layer(
                        lid, f"{name.replace('_', ' ')}{tag}", "factor", units or "class", self.factors_path, (i,),
                        colormap=_discrete_colormap(codes), categorical=True, classes=classes,
                        description=f"Conditioning factor {name} (categorical){tag}",
                    )
                else:
                    lo, hi = float(spec.get("min", 0.0)), float(spec.get("max", 1.0))
                    if name in DIVERGING:
                        m = max(abs(lo), abs(hi)) or 1.0
                        lo, hi = -m, m
                    if hi <= lo:
                        hi = lo + 1.0
                    self.layers[lid] = Layer(
                        lid, f"{name.replace('_', ' ')}{tag}", "factor", units, self.factors_path, (i,),
                        rescale=((lo, hi),), colormap_name=FACTOR_COLORMAPS.get(name, "viridis"),
                        description=f"Conditioning factor {name} in {units or 'native units'}{tag}",
                    )
        if self.imagery_path.is_file():
            self.layers["detection"] = Layer(
                "detection", f"Landslide probability (U-Net){tag}", "detection", "probability",
                rescale=((0.0, 1.0),), colormap_name="magma", model_kind="unet", output="probability",
                description=f"U-Net landslide probability, computed on request at the imagery resolution{tag}",
            )
        if self.factors_path.is_file():
            self.layers["susceptibility"] = Layer(
                "susceptibility", f"Susceptibility probability{tag}", "susceptibility", "probability",
                rescale=((0.0, 1.0),), colormap_name="rdylgn_r", model_kind="lsm", output="probability",
                description=f"Landslide susceptibility probability on the analysis grid, computed on request{tag}",
            )
            self.layers["susceptibility/classes"] = Layer(
                "susceptibility/classes", f"Susceptibility classes (natural breaks){tag}", "susceptibility", "class",
                colormap={i + 1: (*CLASS_COLOURS[i], 255) for i in range(5)}, categorical=True,
                model_kind="lsm", output="class", classes={i + 1: n for i, n in enumerate(CLASS_NAMES)},
                description=f"Five susceptibility classes (very low .. very high) by natural breaks (Jenks){tag}",
            )
        overlay = self._inventory_overlay()
        if overlay is not None:
            path, classes = overlay
            self.layers["inventory"] = Layer(
                "inventory", f"Landslide inventory{tag}", "overlay", "class", path, (1,),
                colormap={1: (228, 26, 28, 220), 2: (255, 127, 0, 220), 3: (152, 78, 163, 220)},
                categorical=True, classes=classes,
                description=f"Known (and detected, when present) landslide polygons rasterised as an overlay{tag}",
            )

    def _percentile_rescale(self, path: Path, idx: tuple[int, ...]) -> tuple[tuple[float, float], ...]:
        from rio_tiler.io import Reader

        with Reader(str(path)) as src:
            img = src.preview(indexes=idx, max_size=512)
        out = []
        for band in range(img.data.shape[0]):
            vals = img.array[band].compressed()
            vals = vals[np.isfinite(vals)]
            if vals.size == 0:
                out.append((0.0, 0.3))
                continue
            lo, hi = (float(v) for v in np.percentile(vals, [2, 98]))
            out.append((lo, hi if hi > lo else lo + 1e-6))
        return tuple(out)

    def _inventory_overlay(self) -> tuple[Path, dict[int, str]] | None:
        """Rasterise known (1) and detected (2) polygons once onto the finest grid; 3 = both."""
        known = self.build / "inventory.gpkg"
        detected = self._latest_detected()
        sources = [p for p in (known, detected) if p.is_file()]
        if not sources:
            return None
        grid_path = self.imagery_path if self.imagery_path.is_file() else self.factors_path
        grid = Grid.from_raster(grid_path)
        fp = _fingerprint(grid_path, *sources)
        out = self.cache_dir / "overlays" / f"inventory-{fp}.tif"
        classes = {1: "known landslide", 2: "detected landslide", 3: "known and detected"}
        if out.is_file():
            return out, classes
        import geopandas as gpd
        from rasterio.features import rasterize

        raster = np.zeros(grid.shape, dtype=np.uint8)
        for code, path in ((1, known), (2, detected)):
            if not path.is_file():
                continue
            try:
                gdf = gpd.read_file(path)
            except Exception as exc:  # noqa: BLE001 - a broken optional overlay must not stop the server
                log.warning("%s: cannot read (%s); inventory overlay skips it", path, exc)
                continue
            if code == 1 and "label" in gdf.columns:  # known non-landslides are not drawn
                gdf = gdf[gdf["label"].astype(bool)]
            if gdf.empty:
                continue
            if gdf.crs is not None and grid.crs is not None and gdf.crs != grid.crs:
                gdf = gdf.to_crs(grid.crs)
            # Points become one cell; polygons every cell they touch.
            geoms = [g for g in gdf.geometry if g is not None and not g.is_empty]
            burned = rasterize(((g, 1) for g in geoms), out_shape=grid.shape, transform=grid.transform,
                               fill=0, all_touched=True, dtype="uint8")
            raster |= (burned * code).astype(np.uint8)
        write_cog(out, raster, grid, band_names=["inventory"], nodata=0, overview_resampling="nearest")
        return out, classes

    def _latest_detected(self) -> Path:
        """The newest `slidemap inventory` run's detected polygons (run ids start with a UTC timestamp)."""
        runs = sorted((self.region_dir / "reports" / "inventory").glob("*/landslides_detected.gpkg"))
        return runs[-1] if runs else self.build / "detected.gpkg"

    def get(self, layer_id: str) -> Layer:
        layer = self.layers.get(layer_id)
        if layer is None:
            raise LayerNotFound(f"unknown layer {layer_id!r}; GET /layers lists this region's layers")
        return layer

    # ---- models -------------------------------------------------------------------------------
    def models(self, kind: str) -> list[ModelInfo]:
        return list_models(self.region_dir, kind)

    def model_info(self, layer: Layer, version: str | None = None) -> ModelInfo:
        kind = layer.model_kind or ""
        if version:
            for info in self.models(kind):
                if info.version == version:
                    return info
            known = ", ".join(m.version for m in self.models(kind)) or "none"
            raise ModelNotFound(f"no {kind} model with version {version!r} in {self.region_dir / 'models' / kind}; known: {known}")
        info = None
        if kind == "lsm":
            info = latest_model(self.region_dir, kind, SUSCEPTIBILITY_PREFERENCE)
        info = info or latest_model(self.region_dir, kind)
        if info is None:
            trainer = "unet" if kind == "unet" else "lsm"
            raise BuildError(
                f"layer {layer.id!r} needs a {kind} model and {self.region_dir / 'models' / kind} has none; "
                f"run `slidemap train {trainer} {self.region_dir}` first"
            )
        return info

    def _load_model(self, info: ModelInfo) -> Any:
        key = (info.kind, info.version)
        with self._lock:
            if key in self._models:
                return self._models[key]
        verify(info.path)
        try:
            model = self.loaders[info.kind](info.path)
        except SlidemapError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken artefact is the user's to fix, not a 500
            log.exception("loading %s failed", info.path)
            raise ModelError(
                f"{info.path}: cannot load the {info.kind} model ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                f"retrain it with `slidemap train {info.kind} {self.region_dir}` or pick another with ?model="
            ) from exc
        with self._lock:
            self._models.setdefault(key, model)
            return self._models[key]

    def engine(self, layer: Layer, version: str | None = None) -> BlockEngine:
        """The block engine of a computed layer's model (classes share the probability blocks)."""
        info = self.model_info(layer, version)
        key = (info.kind, info.version)
        with self._lock:
            if key in self._engines:
                return self._engines[key]
        model = self._load_model(info)
        if info.kind == "unet":
            source = self.imagery_path
            runner = self._runner(model, source, list(getattr(model, "bands", [])), detector_runner, "bands")
            name = "detection"
        else:
            source = self.factors_path
            runner = self._runner(model, source, list(getattr(model, "factor_names", [])), susceptibility_runner, "factors")
            name = "susceptibility"
        store = self.cache_dir / "blocks" / name / info.version / _fingerprint(source)
        engine = BlockEngine(name, source, Grid.from_raster(source), runner, store, self.executor,
                             block_size=self.block_size, wait_timeout=self.wait_timeout)
        with self._lock:
            self._engines.setdefault(key, engine)
            return self._engines[key]

    def _runner(self, model: Any, source: Path, wanted: list[str], adapt: Callable, what: str) -> ModelRunner:
        bands = self._band_names(source)
        missing = [b for b in wanted if b not in bands]
        if missing or not wanted:
            raise ModelError(
                f"model {getattr(model, 'version', '?')} needs {what} {wanted or '(none listed)'} but {source} has {bands}; "
                "retrain the model on this region"
            )
        return adapt(model, [bands.index(b) + 1 for b in wanted])

    def data_version(self, layer: Layer, version: str | None = None) -> str:
        """What a cached tile of ``layer`` depends on besides its render parameters."""
        if not layer.computed:
            return _fingerprint(layer.source) if layer.source else "none"
        info = self.model_info(layer, version)
        source = self.imagery_path if info.kind == "unet" else self.factors_path
        dv = f"{info.version}-{_fingerprint(source)}"
        if layer.output == "class":
            dv += "-" + hashlib.sha256(json.dumps(self.class_breaks(layer, version)).encode()).hexdigest()[:8]
        return dv

    # ---- susceptibility classes ---------------------------------------------------------------
    def class_breaks(self, layer: Layer, version: str | None = None, budget: int | None = None) -> list[float]:
        """Upper bounds of the five classes (as ``training.lsm_report.jenks_breaks`` gives them).

        Taken from the model card when the trainer recorded them (``class_breaks``), otherwise
        natural breaks (Fisher-Jenks, mapclassify) of the whole-region probability, computed once
        per model version and stored beside its blocks. That needs every block: when more are
        missing than ``budget`` allows, a BuildError says how to seed them.
        """
        info = self.model_info(layer, version)
        for key in ("class_breaks", "jenks_breaks", "breaks"):
            value = info.card.get(key) or (info.card.get("metrics") or {}).get(key)
            if isinstance(value, list) and len(value) == 5:
                return [float(v) for v in value]
        engine = self.engine(layer, version)
        if engine.store.as_posix() in self._breaks:
            return self._breaks[engine.store.as_posix()]
        path = engine.store / "class_breaks.json"
        if path.is_file():
            breaks = json.loads(path.read_text())["breaks"]
        else:
            all_blocks = [(r, c) for r in range(engine.n_rows) for c in range(engine.n_cols)]
            missing = engine.missing_native(all_blocks, 0)
            if budget is not None and len(missing) > budget:
                raise BuildError(
                    f"susceptibility classes need natural breaks over the whole region and {len(missing)} "
                    f"blocks are not computed yet; run `slidemap seed {self.region_dir} --layer susceptibility` first"
                )
            engine.ensure(missing)
            values = np.concatenate([engine.load(0, r, c).ravel() for r, c in all_blocks])
            values = values[np.isfinite(values)]
            from slidemap.training.lsm_report import jenks_breaks

            breaks = jenks_breaks(values, k=5)
            write_json_atomic(path, {"breaks": breaks, "method": "Jenks natural breaks (mapclassify.FisherJenks)",
                                     "k": 5, "cells": int(values.size)})
        self._breaks[engine.store.as_posix()] = breaks
        return breaks

    def classify(self, prob: np.ndarray, breaks: list[float]) -> np.ndarray:
        """Class 1..5 per value, 0 for NaN: the same rule as the susceptibility report."""
        from slidemap.training.lsm_report import classify

        return classify(prob, breaks)

    # ---- discovery ------------------------------------------------------------------------------
    def legend(self, layer: Layer) -> dict[str, Any]:
        from rio_tiler.colormap import cmap

        out: dict[str, Any] = {"id": layer.id, "title": layer.title, "units": layer.units, "synthetic": self.synthetic}
        if layer.colormap is not None:
            out["type"] = "categorical"
            out["classes"] = [
                {"value": int(v), "label": layer.classes.get(int(v), str(v)), "color": _hex(rgba)}
                for v, rgba in sorted(layer.colormap.items())
            ]
        elif layer.colormap_name:
            lut = cmap.get(layer.colormap_name)
            lo, hi = layer.rescale[0] if layer.rescale else (0.0, 1.0)
            out.update(
                type="continuous", colormap=layer.colormap_name, min=lo, max=hi,
                stops=[[lo + (hi - lo) * i / 8, _hex(lut[min(255, i * 32)])] for i in range(9)],
            )
        else:
            out["type"] = "rgb"
            out["bands"] = list(layer.indexes)
            out["rescale"] = [list(r) for r in layer.rescale or ()]
        if layer.output == "class":
            try:
                out["breaks"] = self.class_breaks(layer, budget=0)
            except SlidemapError:
                out["breaks"] = None  # known once the region's probabilities are computed
        return out

    def grid_of(self, layer: Layer) -> Grid:
        if layer.source is not None:
            return Grid.from_raster(layer.source)
        return Grid.from_raster(self.imagery_path if layer.model_kind == "unet" else self.factors_path)
