"""The layer registry of one region: what can be served, from which file or model.

Layer ids are fixed strings built here from the region's build folder and model artefacts
(``imagery``, ``imagery/false-colour``, ``factors/<name>``, ``detection``, ``susceptibility``,
``susceptibility/classes``, ``inventory``). Requests name a layer by id and a model by name or
version (:func:`slidemap.compute.models.select.resolve_model`, never a path); both are looked up,
so nothing a client sends ever becomes a path.

The registry follows its inputs while it runs. Every request starts with :meth:`refresh`, which
stats the build files (microseconds); when one changed (``prepare`` ran again) the inputs are
probed and the layers rebuilt, and everything keyed by the old fingerprint (block engines, tile
cache keys) is simply not asked for again. An input that cannot be read (missing, truncated)
does not stop the server: the layers that need it answer 409 naming the file and the fix, the
others keep working, and :meth:`problems` feeds ``/health``'s "degraded".
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio

from slidemap.compute.region.layout import RegionLayout
from slidemap.compute import provenance
from slidemap.compute.maps.blocks import (
    BlockEngine,
    InferenceExecutor,
    ModelRunner,
    detector_runner,
    file_fingerprint,
    short_error,
    susceptibility_runner,
)
from slidemap.compute.maps.classes import CLASS_COLOURS, CLASS_NAMES, card_breaks
from slidemap.compute.region.grid import Grid
from slidemap.compute.region.inventory_layers import latest_detected, read_inventory
from slidemap.compute.region.raster_io import write_cog
from slidemap.compute.region.styles import DETECTION_COLORMAP, SUSCEPTIBILITY_COLORMAP
from slidemap.compute.models.runtime import ModelCache
from slidemap.compute.models.select import ROLES, VERSION_RE, default_model, has_skill, resolve_model, skill_note
from slidemap.compute.models.store import ModelInfo, list_models, verify
from slidemap.errors import BuildError, ModelError, SlidemapError
from slidemap.server.errors import LayerNotFound, ModelNotFound

log = logging.getLogger(__name__)

ROLE_OF_KIND = {kind: role for role, kind in ROLES.items()}
RENDER_VERSION = "3"  # bump when the same inputs would render different tile bytes (3: run-length PNG, no alpha when opaque)

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


class InputUnavailable(BuildError):
    """A layer's input file is missing or unreadable (HTTP 409)."""


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
    input: str | None = None  # key of the InputState the layer reads (factors | imagery | overlay)

    @property
    def computed(self) -> bool:
        return self.model_kind is not None

    @property
    def role(self) -> str | None:
        return ROLE_OF_KIND.get(self.model_kind or "")

    @property
    def resampling(self) -> str:
        # Categorical values and model cells are shown as they are; continuous rasters smoothly.
        return "nearest" if (self.categorical or self.computed or self.kind == "overlay") else "bilinear"

    def render_signature(self) -> str:
        """What, besides the data, decides this layer's tile bytes."""
        spec = (RENDER_VERSION, self.indexes, self.rescale, self.colormap_name,
                sorted((self.colormap or {}).items()), self.categorical, self.resampling, self.output)
        return hashlib.sha256(repr(spec).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class InputState:
    """One input raster as last probed: its fingerprint, grid and bands, or what is wrong with it."""

    key: str
    path: Path
    rel: str  # relative to the region folder, for messages
    fingerprint: str | None
    problem: str | None = None
    grid: Grid | None = None
    bands: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.problem is None and self.grid is not None


def _stat_fingerprint(path: Path) -> str | None:
    try:
        return file_fingerprint(path)
    except OSError:
        return None


def probe_raster(key: str, path: Path, rel: str) -> InputState:
    """Open ``path`` and read its last block row (a truncated file fails there)."""
    fp = _stat_fingerprint(path)
    if fp is None:
        return InputState(key, path, rel, None, f"{rel} is missing; re-run `slidemap prepare` on this region")
    try:
        with rasterio.open(path) as src:
            grid = Grid(src.crs, src.transform, src.width, src.height)
            bands = tuple(d or f"b{i}" for i, d in enumerate(src.descriptions, start=1))
            h = min(src.height, 256)
            src.read(window=rasterio.windows.Window(0, src.height - h, src.width, h))
    except (rasterio.errors.RasterioError, OSError) as exc:
        return InputState(key, path, rel, fp, f"{rel} is unreadable ({short_error(exc, 160)}); "
                                              "re-run `slidemap prepare` on this region")
    return InputState(key, path, rel, fp, None, grid, bands)


def _hex(rgb: tuple[int, ...]) -> str:
    return "#" + "".join(f"{v:02x}" for v in rgb[:3])


def _discrete_colormap(codes: list[int], name: str = "tab20") -> dict[int, tuple[int, int, int, int]]:
    from rio_tiler.colormap import cmap

    lut = cmap.get(name)
    n = max(1, len(codes))
    return {int(c): tuple(int(v) for v in lut[int(round(i * 255 / max(1, n - 1)))][:3]) + (255,) for i, c in enumerate(codes)}


def default_loaders() -> dict[str, Callable[[Path], Any]]:
    """Model loaders of the compute package (imported lazily: they import TensorFlow)."""

    def _load(kind: str) -> Callable[[Path], Any]:
        module, func = {
            "unet": ("slidemap.compute.maps.detection", "load_detector"),
            "lsm": ("slidemap.compute.maps.susceptibility", "load_susceptibility"),
        }[kind]

        def load(path: Path) -> Any:
            return getattr(importlib.import_module(module), func)(path)

        return load

    return {"unet": _load("unet"), "lsm": _load("lsm")}


def model_key(info: ModelInfo) -> str:
    """The model's identity for caches: its version, plus its card's fast form when it has one
    (``load_susceptibility`` then runs the fast form, so its choice changes the output)."""
    fast = info.card.get("fast_form")
    if isinstance(fast, dict) and fast:
        return f"{info.version}-f{hashlib.sha256(json.dumps(fast, sort_keys=True).encode()).hexdigest()[:6]}"
    return info.version


@dataclass(frozen=True)
class Catalog:
    """The layers of one state of the region's inputs (replaced whole when an input changes)."""

    signature: tuple
    inputs: dict[str, InputState]
    layers: dict[str, Layer]
    synthetic: bool
    factors_meta: dict[str, Any]


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
        max_loaded_models: int = 4,
    ) -> None:
        self.region_dir = Path(region_dir)
        self.layout = RegionLayout(self.region_dir)
        self.build = self.layout.build
        self.cache_dir = Path(cache_dir)
        self.executor = executor
        self.loaders = loaders or default_loaders()
        self.block_size = block_size
        self.wait_timeout = wait_timeout
        self.max_loaded_models = max(1, max_loaded_models)
        self._lock = threading.RLock()
        self._models: ModelCache[Any] = ModelCache(self.max_loaded_models)
        self._engines: OrderedDict[tuple, BlockEngine] = OrderedDict()
        self._model_lists: dict[str, tuple[tuple, list[ModelInfo]]] = {}
        self._resolved: dict[tuple, tuple[tuple, ModelInfo]] = {}
        self._faults: dict[str, tuple[str | None, str]] = {}  # input key -> (fingerprint, problem)
        self._model_faults: dict[str, str] = {}
        self.factors_path = self.layout.factors_tif
        self.imagery_path = self.layout.imagery_tif
        self.hillshade_path = self.layout.hillshade_tif
        if not self.factors_path.exists() and not self.imagery_path.exists():
            raise BuildError(f"{self.build}: no factors.tif or imagery.tif; run `slidemap prepare {self.region_dir}` first")
        self.region_name = self._region_name()
        self._watched = [str(p) for p in (self.factors_path, self.imagery_path, self.hillshade_path,
                                          self.layout.factors_json,
                                          self.layout.inventory_gpkg, self.layout.detected_fallback_gpkg)]
        self._inventory_runs = str(self.layout.inventory_runs)
        self._overlay_tmp: Path | None = None
        self._catalog: Catalog | None = None
        self.refresh()

    # ---- region -------------------------------------------------------------------------------
    def _region_name(self) -> str:
        manifest = self.layout.manifest
        if manifest.is_file():
            import tomllib

            try:
                data = tomllib.loads(manifest.read_text())
                return str(data.get("region", {}).get("name") or self.region_dir.name)
            except (tomllib.TOMLDecodeError, OSError):
                pass
        return self.region_dir.name

    @property
    def synthetic(self) -> bool:
        return self.refresh().synthetic

    @property
    def label(self) -> str:
        return ("SYNTHETIC " if self.synthetic else "") + self.region_name

    @property
    def layers(self) -> dict[str, Layer]:
        return self.refresh().layers

    @property
    def factors_meta(self) -> dict[str, Any]:
        return self.refresh().factors_meta

    def rel(self, path: Path) -> str:
        try:
            return Path(path).relative_to(self.region_dir).as_posix()
        except ValueError:
            return Path(path).name

    # ---- following the inputs ------------------------------------------------------------------
    def _detected_source(self) -> Path:
        """The newest `slidemap inventory` run's detected polygons (run ids start with a UTC timestamp)."""
        return latest_detected(self.region_dir) or self.layout.detected_fallback_gpkg

    def _signature(self) -> tuple:
        """(size, mtime, inode) of every file the layers are made from: a few stat calls."""
        out: list[Any] = []
        for path in self._watched:
            try:
                st = os.stat(path)
                out.append((st.st_size, st.st_mtime_ns, st.st_ino))
            except OSError:
                out.append(None)
        try:
            out.append(tuple(sorted((e.name, e.stat().st_mtime_ns) for e in os.scandir(self._inventory_runs))))
        except OSError:
            out.append(None)
        return tuple(out)

    def refresh(self) -> Catalog:
        """The current catalog; rebuilt first when an input file changed since the last call."""
        sig = self._signature()
        catalog = self._catalog
        if catalog is not None and catalog.signature == sig:
            return catalog
        with self._lock:
            if self._catalog is not None and self._catalog.signature == sig:
                return self._catalog
            if self._catalog is not None:
                log.info("region inputs changed; rebuilding the layer catalogue")
            self._catalog = self._build_catalog(sig)
            return self._catalog

    def _read_factors_json(self) -> tuple[dict[str, Any], str | None]:
        path = self.layout.factors_json
        if not path.is_file():
            return {"factors": []}, None
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return data, None
        except (OSError, ValueError) as exc:
            return {"factors": []}, f"build/factors.json is unreadable ({short_error(exc, 120)}); re-run `slidemap prepare` on this region"

    def _build_catalog(self, sig: tuple) -> Catalog:
        inputs: dict[str, InputState] = {}
        for key, path in (("factors", self.factors_path), ("imagery", self.imagery_path),
                          ("hillshade", self.hillshade_path)):
            if path.exists() or (self._catalog is not None and key in self._catalog.inputs):
                inputs[key] = probe_raster(key, path, self.rel(path))
        meta, meta_problem = self._read_factors_json()
        if meta_problem and "factors" in inputs and inputs["factors"].ok:
            inputs["factors"] = replace(inputs["factors"], problem=meta_problem)
        layers: dict[str, Layer] = {}
        synthetic = bool(meta.get("synthetic", False))
        tag = provenance.suffix(synthetic)
        if "hillshade" in inputs:
            layers["hillshade"] = Layer(
                "hillshade", f"Hillshade{tag}", "basemap", "", inputs["hillshade"].path, (1,),
                rescale=((1.0, 255.0),), colormap_name="greys_r", input="hillshade",
                description=f"Shaded relief of the DEM (gdaldem's: light from 315 deg at 45 deg){tag}",
            )
        if "imagery" in inputs:
            self._imagery_layers(inputs["imagery"], layers, tag)
        if "factors" in inputs:
            self._factor_layers(inputs["factors"], meta, layers, tag)
        overlay = self._overlay_input(inputs, sig)
        if overlay is not None:
            inputs["overlay"] = overlay
            self.layers_overlay(overlay, layers, tag)
        return Catalog(sig, inputs, layers, synthetic, meta)

    def _imagery_layers(self, state: InputState, layers: dict[str, Layer], tag: str) -> None:
        bands = list(state.bands) or ["B2", "B3", "B4", "B8"]  # unreadable: the usual bands, requests get 409
        rescale_ok = state.ok
        for lid, title, want in (
            ("imagery", "True colour (B4, B3, B2)", ("B4", "B3", "B2")),
            ("imagery/false-colour", "False colour (B8, B4, B3)", ("B8", "B4", "B3")),
        ):
            if not all(b in bands for b in want):
                continue
            idx = tuple(bands.index(b) + 1 for b in want)
            rescale = None
            if rescale_ok:
                try:
                    rescale = self._percentile_rescale(state.path, idx)
                except (rasterio.errors.RasterioError, OSError) as exc:
                    rescale_ok = False
                    self._faults["imagery"] = (state.fingerprint, f"{state.rel} is unreadable ({short_error(exc, 160)}); "
                                                                  "re-run `slidemap prepare` on this region")
            layers[lid] = Layer(
                lid, title + tag, "imagery", "reflectance", state.path, idx,
                rescale=rescale or tuple((0.0, 0.3) for _ in idx),
                description=f"Imagery {', '.join(want)}, rescaled to the 2-98 % percentiles{tag}", input="imagery",
            )
        layers["detection"] = Layer(
            "detection", f"Landslide probability (U-Net){tag}", "detection", "probability",
            rescale=((0.0, 1.0),), colormap_name=DETECTION_COLORMAP, model_kind="unet", output="probability",
            description=f"U-Net landslide probability, computed on request at the imagery resolution{tag}",
            input="imagery",
        )

    def _factor_layers(self, state: InputState, meta: dict[str, Any], layers: dict[str, Layer], tag: str) -> None:
        specs = {f["name"]: f for f in meta.get("factors", []) if isinstance(f, dict) and "name" in f}
        bands = list(state.bands) if state.bands else list(specs)  # unreadable: names from factors.json
        for i, name in enumerate(bands, start=1):
            spec = specs.get(name, {})
            lid = f"factors/{name}"
            units = str(spec.get("units", ""))
            if spec.get("kind") == "categorical":
                classes = {int(k): str(v) for k, v in (spec.get("classes") or {}).items()}
                lo, hi = int(spec.get("min", 1)), int(spec.get("max", 1))
                codes = sorted(set(classes) | set(range(lo, min(hi, lo + 255) + 1)))
                layers[lid] = Layer(
                    lid, f"{name.replace('_', ' ')}{tag}", "factor", units or "class", state.path, (i,),
                    colormap=_discrete_colormap(codes), categorical=True, classes=classes,
                    description=f"Conditioning factor {name} (categorical){tag}", input="factors",
                )
            else:
                lo, hi = float(spec.get("min", 0.0)), float(spec.get("max", 1.0))
                if name in DIVERGING:
                    m = max(abs(lo), abs(hi)) or 1.0
                    lo, hi = -m, m
                if not hi > lo:
                    hi = lo + 1.0
                layers[lid] = Layer(
                    lid, f"{name.replace('_', ' ')}{tag}", "factor", units, state.path, (i,),
                    rescale=((lo, hi),), colormap_name=FACTOR_COLORMAPS.get(name, "viridis"),
                    description=f"Conditioning factor {name} in {units or 'native units'}{tag}", input="factors",
                )
        layers["susceptibility"] = Layer(
            "susceptibility", f"Susceptibility probability{tag}", "susceptibility", "probability",
            rescale=((0.0, 1.0),), colormap_name=SUSCEPTIBILITY_COLORMAP, model_kind="lsm", output="probability",
            description=f"Landslide susceptibility probability on the analysis grid, computed on request{tag}",
            input="factors",
        )
        layers["susceptibility/classes"] = Layer(
            "susceptibility/classes", f"Susceptibility classes (natural breaks){tag}", "susceptibility", "class",
            colormap={i + 1: (*CLASS_COLOURS[i], 255) for i in range(5)}, categorical=True,
            model_kind="lsm", output="class", classes={i + 1: n for i, n in enumerate(CLASS_NAMES)},
            description=f"Five susceptibility classes (very low .. very high), class breaks from the model card{tag}",
            input="factors",
        )

    def layers_overlay(self, state: InputState, layers: dict[str, Layer], tag: str) -> None:
        classes = {1: "known landslide", 2: "detected landslide", 3: "known and detected"}
        layers["inventory"] = Layer(
            "inventory", f"Landslide inventory{tag}", "overlay", "class", state.path, (1,),
            colormap={1: (228, 26, 28, 220), 2: (255, 127, 0, 220), 3: (152, 78, 163, 220)},
            categorical=True, classes=classes, input="overlay",
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

    def _overlay_input(self, inputs: dict[str, InputState], sig: tuple) -> InputState | None:
        """Known (1) and detected (2) polygons rasterised once onto the finest grid; 3 = both."""
        known = self.layout.inventory_gpkg
        detected = self._detected_source()
        sources = [p for p in (known, detected) if p.is_file()]
        if not sources:
            return None
        base = inputs.get("imagery") if inputs.get("imagery") and inputs["imagery"].ok else inputs.get("factors")
        if base is None or not base.ok:
            return InputState("overlay", known, self.rel(known), None,
                              "the inventory overlay needs a readable build/imagery.tif or build/factors.tif; "
                              "re-run `slidemap prepare` on this region")
        fp = hashlib.sha256(repr((base.fingerprint, [(p.name, _stat_fingerprint(p)) for p in sources])).encode()).hexdigest()[:12]
        out = self.cache_dir / "overlays" / f"inventory-{fp}.tif"
        if self._overlay_tmp is not None and (self._overlay_tmp / out.name).is_file():
            out = self._overlay_tmp / out.name
        if not out.is_file():
            try:
                raster = self._rasterise_overlay(base.grid, known, detected)
            except Exception as exc:  # noqa: BLE001 - a broken optional overlay must not stop the server
                return InputState("overlay", known, self.rel(known), None,
                                  f"the inventory overlay could not be made ({short_error(exc, 160)}); "
                                  "re-run `slidemap prepare` on this region")
            try:
                write_cog(out, raster, base.grid, band_names=["inventory"], nodata=0, overview_resampling="nearest")
            except OSError as exc:
                # A read-only cache folder: keep the overlay in a private temporary folder instead.
                log.warning("%s: cannot write the inventory overlay (%s); using a temporary folder", out.parent,
                            short_error(exc))
                if self._overlay_tmp is None:
                    self._overlay_tmp = Path(tempfile.mkdtemp(prefix="slidemap-overlay-"))
                out = self._overlay_tmp / out.name
                write_cog(out, raster, base.grid, band_names=["inventory"], nodata=0, overview_resampling="nearest")
        return InputState("overlay", out, "inventory overlay", _stat_fingerprint(out), None, base.grid, ("inventory",))

    def _rasterise_overlay(self, grid: Grid, known: Path, detected: Path) -> np.ndarray:
        from rasterio.features import rasterize

        raster = np.zeros(grid.shape, dtype=np.uint8)
        for code, path in ((1, known), (2, detected)):
            if not path.is_file():
                continue
            try:
                gdf = read_inventory(path)
            except Exception as exc:  # noqa: BLE001 - a broken optional overlay source is skipped
                log.warning("%s: cannot read (%s); inventory overlay skips it", path.name, exc)
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
        return raster

    # ---- input faults -------------------------------------------------------------------------
    def input_state(self, layer: Layer, catalog: Catalog | None = None) -> InputState:
        catalog = catalog or self.refresh()
        state = catalog.inputs.get(layer.input or "")
        if state is None:
            raise InputUnavailable(f"layer {layer.id!r} has no input; re-run `slidemap prepare` on this region")
        return state

    def check_input(self, layer: Layer, catalog: Catalog | None = None) -> InputState:
        """The layer's input, or InputUnavailable (409) naming the file and the fix."""
        state = self.input_state(layer, catalog)
        problem = state.problem
        fault = self._faults.get(state.key)
        if problem is None and fault is not None and fault[0] == state.fingerprint:
            problem = fault[1]
        if problem is not None or state.grid is None:
            raise InputUnavailable(f"layer {layer.id!r}: {problem or state.rel + ' is not usable'}")
        return state

    def report_fault(self, state: InputState, exc: BaseException) -> InputUnavailable:
        """Remember that ``state``'s file failed a read (until it changes); return the error to raise."""
        problem = f"{state.rel} is unreadable ({short_error(exc, 160)}); re-run `slidemap prepare` on this region"
        with self._lock:
            if self._faults.get(state.key, (None, ""))[0] != state.fingerprint:
                log.warning("%s", problem)
            self._faults[state.key] = (state.fingerprint, problem)
        return InputUnavailable(problem)

    def problems(self) -> list[str]:
        """What is wrong with the region's inputs and models now (for /health)."""
        catalog = self.refresh()
        out = []
        for key, state in catalog.inputs.items():
            fault = self._faults.get(key)
            if state.problem:
                out.append(state.problem)
            elif fault is not None and fault[0] == state.fingerprint:
                out.append(fault[1])
        out.extend(self._model_faults.values())
        return out

    def store_problems(self) -> list[str]:
        """Block stores that cannot be written (their blocks are kept in memory only)."""
        with self._lock:
            engines = list(self._engines.values())
        return sorted({f"{e.name}: {e.store_error}" for e in engines if e.store_error})

    # ---- models -------------------------------------------------------------------------------
    def _models_signature(self, kind: str) -> tuple:
        root = self.layout.models
        sig: list[Any] = [_stat_fingerprint(root / "defaults.json")]
        try:
            with os.scandir(root / kind) as it:
                sig.extend(sorted((e.name, e.stat().st_mtime_ns) for e in it))
        except OSError:
            pass
        return tuple(sig)

    def models(self, kind: str) -> list[ModelInfo]:
        """Every artefact of ``kind``, newest first (re-read only when the models folder changed)."""
        sig = self._models_signature(kind)
        cached = self._model_lists.get(kind)
        if cached is not None and cached[0] == sig:
            return cached[1]
        found = list_models(self.region_dir, kind)
        self._model_lists[kind] = (sig, found)
        return found

    def default_info(self, kind: str) -> ModelInfo | None:
        self.models(kind)  # refreshes the signature cache
        return self._resolve(kind, None, soft=True)

    def _resolve(self, kind: str, spec: str | None, soft: bool = False) -> ModelInfo | None:
        sig = self._models_signature(kind)
        cached = self._resolved.get((kind, spec))
        if cached is not None and cached[0] == sig:
            return cached[1]
        role = ROLE_OF_KIND[kind]
        if spec is None:
            info = default_model(self.region_dir, role)
            if info is None and soft:
                return None
            if info is None:
                resolve_model(self.region_dir, role, None)  # raises the right BuildError / ModelError
        else:
            info = resolve_model(self.region_dir, role, spec, allow_path=False)
        self._resolved[(kind, spec)] = (sig, info)
        return info

    def model_info(self, layer: Layer, spec: str | None = None) -> ModelInfo:
        """The model ``spec`` names for a computed layer (a name or a version), or the region's default."""
        kind = layer.model_kind or ""
        role = ROLE_OF_KIND.get(kind, kind)
        if spec:
            models = self.models(kind)
            # resolve_model's rule: a name, or a version prefix of at least 6 hex digits
            if not any(m.name == spec or (VERSION_RE.match(spec) and m.version.startswith(spec)) for m in models):
                names = ", ".join(sorted({m.name for m in models})) or "none trained"
                raise ModelNotFound(f"no {role} model {spec!r} in this region (names: {names}); "
                                    "GET /models lists names and versions")
        try:
            info = self._resolve(kind, spec or None)
        except BuildError:
            raise BuildError(
                f"layer {layer.id!r} needs a {role} model and this region has none; "
                f"run `slidemap train {kind} REGION` first"
            ) from None
        assert info is not None
        return info

    def _load_model(self, info: ModelInfo) -> Any:
        """The loaded model of a version, from the one bounded model cache (compute's ModelCache);
        a model that does not load is remembered as the region's fault until it loads."""
        key = (info.kind, model_key(info))

        def load() -> Any:
            try:
                verify(info.path)
                model = self.loaders[info.kind](info.path)
            except SlidemapError as exc:
                self._model_faults[key[1]] = f"model {info.name} {info.version}: {exc}"
                raise
            except Exception as exc:  # noqa: BLE001 - a broken artefact is the user's to fix, not a 500
                log.exception("loading %s failed", info.path)
                problem = (f"{info.path.name}: cannot load the {info.kind} model ({type(exc).__name__}: "
                           f"{short_error(exc)}); retrain it with `slidemap train {info.kind} REGION` or pick another with ?model=")
                self._model_faults[key[1]] = problem
                raise ModelError(problem) from exc
            self._model_faults.pop(key[1], None)
            return model

        return self._models.get_or_load(key, load)

    def engine(self, layer: Layer, info: ModelInfo | None = None, catalog: Catalog | None = None) -> BlockEngine:
        """The block engine of a computed layer's model over its input as it is now
        (classes share the probability blocks)."""
        info = info or self.model_info(layer)
        state = self.check_input(layer, catalog)
        mkey = model_key(info)
        key = (info.kind, mkey, state.fingerprint, self.block_size)
        with self._lock:
            if key in self._engines:
                self._engines.move_to_end(key)
                return self._engines[key]
        model = self._load_model(info)
        if info.kind == "unet":
            runner = self._runner(model, state, list(getattr(model, "bands", [])), detector_runner, "bands")
            name = "detection"
        else:
            runner = self._runner(model, state, list(getattr(model, "factor_names", [])), susceptibility_runner, "factors")
            name = "susceptibility"
        # A model that runs best on larger blocks (the detector: one network pass per block) gets them;
        # block side and layout name the store, so blocks of another layout are never mixed in.
        block = self.block_size * max(1, runner.block_factor)
        layout = f"-{runner.layout}" if runner.layout else ""
        store = self.cache_dir / "blocks" / name / mkey / f"{state.fingerprint}-b{block}{layout}"
        assert state.grid is not None
        engine = BlockEngine(name, state.path, state.grid, runner, store, self.executor,
                             block_size=block, wait_timeout=self.wait_timeout,
                             fingerprint=state.fingerprint)
        with self._lock:
            # Two first requests may both have built one: the first stored wins, so every request
            # shares one engine (and its single flight) for the key.
            engine = self._engines.setdefault(key, engine)
            self._engines.move_to_end(key)
            while len(self._engines) > 2 * self.max_loaded_models:
                self._engines.popitem(last=False)
            return engine

    def _runner(self, model: Any, state: InputState, wanted: list[str], adapt: Callable, what: str) -> ModelRunner:
        bands = list(state.bands)
        missing = [b for b in wanted if b not in bands]
        if missing or not wanted:
            raise ModelError(
                f"model {getattr(model, 'version', '?')} needs {what} {wanted or '(none listed)'} but {state.rel} has "
                f"{bands}; retrain the model on this region"
            )
        return adapt(model, [bands.index(b) + 1 for b in wanted])

    def data_version(self, layer: Layer, info: ModelInfo | None = None, catalog: Catalog | None = None) -> str:
        """Everything a cached tile of ``layer`` depends on besides its request parameters."""
        state = self.check_input(layer, catalog)
        parts = [layer.render_signature(), str(state.fingerprint)]
        if layer.computed:
            assert info is not None
            parts.insert(0, model_key(info))
            if layer.output == "class":
                parts.append(hashlib.sha256(json.dumps(self.class_breaks(info)).encode()).hexdigest()[:8])
        return "-".join(parts)

    # ---- susceptibility classes ---------------------------------------------------------------
    def class_breaks(self, info: ModelInfo) -> list[float]:
        """Upper bounds of the five classes, from the model card (compute's one rule)."""
        return card_breaks(info.card, info.name, info.version)

    def classify(self, prob: np.ndarray, breaks: list[float]) -> np.ndarray:
        """Class 1..5 per value, 0 for NaN: the same rule as the susceptibility report."""
        from slidemap.compute.maps.classes import classify

        return classify(prob, breaks)

    # ---- discovery ------------------------------------------------------------------------------
    def legend(self, layer: Layer, info: ModelInfo | None = None) -> dict[str, Any]:
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
        if layer.computed:
            try:
                info = info or self.model_info(layer)
                out["model"] = info.version
                out["model_name"] = info.name
                out["skill"] = skill_note(info.card)
                out["has_skill"] = has_skill(info.card)
                if layer.output == "class":
                    out["breaks"] = self.class_breaks(info)
            except SlidemapError:
                out.setdefault("model", None)
                if layer.output == "class":
                    out["breaks"] = None  # known once a model with class breaks is trained
        return out

    def grid_of(self, layer: Layer, catalog: Catalog | None = None) -> Grid:
        return self.check_input(layer, catalog).grid  # type: ignore[return-value]

    def get(self, layer_id: str, catalog: Catalog | None = None) -> Layer:
        layer = (catalog or self.refresh()).layers.get(layer_id)
        if layer is None:
            raise LayerNotFound(f"unknown layer {layer_id!r}; GET /layers lists this region's layers")
        return layer
