"""The region manifest (`region.toml`): a pydantic model and its validation.

A region is a folder with ``region.toml``; input paths are relative to that folder. Only the
DEM is required; the factor set follows the inputs present. Every problem a user can fix
becomes one :class:`~slidemap.errors.RegionError` line naming the file and the fix.
"""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import rasterio
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.warp import transform_bounds

from slidemap.compute.region.layout import MANIFEST, RegionLayout
from slidemap.errors import RegionError

RASTER_THEMES = ("rainfall",)
CATEGORICAL_THEMES = ("landcover", "soil", "lithology")
VECTOR_THEMES = ("roads", "rivers", "settlements", "water")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RasterInput(_Strict):
    path: str
    band: int = Field(1, ge=1, description="band to read")


class ImageryInput(_Strict):
    path: str
    bands: list[str] = Field(default_factory=lambda: ["B2", "B3", "B4", "B8"])
    scale: float = Field(10000.0, gt=0, description="divide digital numbers by this to get reflectance")
    nodata: float | None = None

    @field_validator("bands")
    @classmethod
    def _bands_unique(cls, bands: list[str]) -> list[str]:
        if not bands:
            raise ValueError("list at least one band, e.g. bands = [\"B2\", \"B3\", \"B4\", \"B8\"]")
        if len(set(bands)) != len(bands):
            raise ValueError(f"band names repeat: {bands}")
        return bands


class CategoricalInput(_Strict):
    path: str
    classes: str | None = Field(None, description="CSV with columns code,name")


class VectorInput(_Strict):
    path: str
    layer: str | None = None
    buffer: float | None = Field(None, ge=0, description="metres to buffer lines by for masks")


class InventoryInput(_Strict):
    path: str
    layer: str | None = None
    # CSV points only:
    x: str | None = None
    y: str | None = None
    crs: str | None = None
    # column holding true (landslide) / false (known non-landslide); absent: all are landslides
    label: str | None = None


def _as_table(value: Any) -> Any:
    return {"path": value} if isinstance(value, str) else value


class Inputs(_Strict):
    dem: RasterInput
    rainfall: RasterInput | None = None
    imagery: ImageryInput | None = None
    # a scene from before the landslides: NDVI (and any imagery-derived factor) comes from it, so
    # a susceptibility factor never carries the scars that the post-event `imagery` shows
    imagery_pre: ImageryInput | None = None
    landcover: CategoricalInput | None = None
    soil: CategoricalInput | None = None
    lithology: CategoricalInput | None = None
    roads: VectorInput | None = None
    rivers: VectorInput | None = None
    settlements: VectorInput | None = None
    water: VectorInput | None = None
    inventory: list[InventoryInput] = Field(default_factory=list)

    @field_validator(
        "dem", "rainfall", "imagery", "imagery_pre", "landcover", "soil", "lithology",
        "roads", "rivers", "settlements", "water", mode="before",
    )
    @classmethod
    def _path_or_table(cls, value: Any) -> Any:
        return _as_table(value)

    @field_validator("inventory", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, (str, dict)):
            value = [value]
        return [_as_table(v) for v in value]


class RegionMeta(_Strict):
    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.\- ]+$")]
    synthetic: bool = False
    resolution: float | Literal["dem"] = "dem"
    crs: str | None = None
    # Input paths must stay inside the region folder unless the manifest says otherwise (a
    # shared data folder, say): a manifest from elsewhere must not make prepare open any file.
    allow_outside: bool = False

    @field_validator("resolution")
    @classmethod
    def _positive(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and value <= 0:
            raise ValueError("resolution must be a positive number of metres or \"dem\"")
        return value


class Manifest(_Strict):
    region: RegionMeta
    inputs: Inputs


class Region:
    """A loaded, validated region: the manifest plus resolved absolute paths."""

    def __init__(self, root: Path, manifest: Manifest, analysis_crs: CRS):
        self.root = root
        self.manifest = manifest
        self.analysis_crs = analysis_crs

    @property
    def name(self) -> str:
        return self.manifest.region.name

    @property
    def synthetic(self) -> bool:
        return self.manifest.region.synthetic

    @property
    def inputs(self) -> Inputs:
        return self.manifest.inputs

    @property
    def build_dir(self) -> Path:
        return RegionLayout(self.root).build

    def path(self, relative: str) -> Path:
        return (self.root / relative).resolve()


# ---- loading and validation -----------------------------------------------------------------


def _format_validation_error(exc: ValidationError, manifest_path: Path) -> str:
    """Every problem of the manifest in one line: all unknown keys at once, then the others."""
    unknown: list[str] = []
    others: list[str] = []
    for err in exc.errors():
        # pydantic puts a union's member (e.g. "float") into the location; users know the key only
        loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p in ("float", "literal['dem']")))
        if err["type"] == "extra_forbidden":
            unknown.append(f"[{loc}]")
        elif err["type"] == "missing":
            others.append(f"[{loc}] required key missing")
        else:
            others.append(f"[{loc}] {err['msg']}")
    parts = []
    if unknown:
        noun = "unknown key" if len(unknown) == 1 else "unknown keys"
        parts.append(f"{', '.join(unknown)} {noun} (check the spelling against the README's region.toml example)")
    parts.extend(dict.fromkeys(others))
    return f"{manifest_path}: " + "; ".join(parts)


def load_manifest(region_dir: str | Path) -> tuple[Path, Manifest]:
    root = Path(region_dir).resolve()
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise RegionError(f"{root}: no such region folder; create it with a {MANIFEST} or run `slidemap demo-region {region_dir}`")
    if not manifest_path.is_file():
        raise RegionError(f"{manifest_path}: not found; a region folder needs a {MANIFEST} (see the README)")
    try:
        data = tomllib.loads(manifest_path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise RegionError(f"{manifest_path}: not valid TOML ({exc}); fix the syntax") from exc
    try:
        return root, Manifest.model_validate(data)
    except ValidationError as exc:
        raise RegionError(_format_validation_error(exc, manifest_path)) from exc


def load_region(region_dir: str | Path, check_files: bool = True) -> Region:
    """Load and validate ``region.toml`` and (by default) every input file it names."""
    root, manifest = load_manifest(region_dir)
    inputs = manifest.inputs
    _check_containment(root, manifest)
    dem_path = _existing(root, "dem", inputs.dem.path)
    dem_info = _check_raster(dem_path, "dem", band=inputs.dem.band)
    _check_has_data(dem_path, "dem", band=inputs.dem.band)
    if manifest.region.crs:
        try:
            analysis_crs = CRS.from_user_input(manifest.region.crs)
        except Exception as exc:  # rasterio raises CRSError; any failure is the same fix
            raise RegionError(f"{root / MANIFEST}: [region.crs] {manifest.region.crs!r} is not a CRS; use e.g. \"EPSG:32649\"") from exc
    else:
        analysis_crs = dem_info["crs"]
    if not analysis_crs.is_projected:
        raise RegionError(
            f"{root / MANIFEST}: analysis CRS {analysis_crs.to_string()} is geographic (degrees); "
            "set [region] crs to a projected CRS in metres, e.g. the UTM zone (\"EPSG:326NN\")"
        )
    _check_metric(analysis_crs, root / MANIFEST)
    if manifest.region.resolution == "dem" and not dem_info["crs"].is_projected:
        raise RegionError(
            f"{dem_path}: resolution = \"dem\" needs a DEM in a projected CRS; "
            "set [region] resolution to metres (e.g. 30) so it can be reprojected"
        )
    if manifest.region.resolution == "dem" and dem_info["crs"] != analysis_crs:
        _check_metric(dem_info["crs"], dem_path)
    region = Region(root, manifest, analysis_crs)
    if not check_files:
        return region
    dem_bounds = transform_bounds(dem_info["crs"], analysis_crs, *dem_info["bounds"], densify_pts=21)

    def overlaps(name: str, path: Path, crs: CRS, bounds: tuple[float, ...]) -> None:
        b = transform_bounds(crs, analysis_crs, *bounds, densify_pts=21)
        if b[0] >= dem_bounds[2] or b[2] <= dem_bounds[0] or b[1] >= dem_bounds[3] or b[3] <= dem_bounds[1]:
            raise RegionError(
                f"{path}: inputs.{name} does not overlap the DEM ({_fmt_bounds(b)} vs {_fmt_bounds(dem_bounds)} "
                f"in {analysis_crs.to_string()}); check its CRS and extent"
            )

    for name in RASTER_THEMES + CATEGORICAL_THEMES:
        spec = getattr(inputs, name)
        if spec is None:
            continue
        path = _existing(root, name, spec.path)
        info = _check_raster(path, name, band=getattr(spec, "band", 1))
        _check_has_data(path, name, band=getattr(spec, "band", 1))
        overlaps(name, path, info["crs"], info["bounds"])
        if name in CATEGORICAL_THEMES and spec.classes:
            read_classes(_existing(root, f"{name}.classes", spec.classes), name)
    for key in ("imagery", "imagery_pre"):
        spec = getattr(inputs, key)
        if spec is not None:
            path = _existing(root, key, spec.path)
            info = _check_raster(path, key)
            _check_bands(path, info, spec.bands, key)
            # prepare treats 0 as nodata in imagery without one (as it does here)
            _check_has_data(path, key, band=1, nodata=spec.nodata, default_nodata=0.0)
            overlaps(key, path, info["crs"], info["bounds"])
    for name in VECTOR_THEMES:
        spec = getattr(inputs, name)
        if spec is not None:
            path = _existing(root, name, spec.path)
            crs, bounds = _check_vector(path, name, spec.layer)
            if bounds is not None:
                overlaps(name, path, crs, bounds)
    for i, spec in enumerate(inputs.inventory):
        key = "inventory" if len(inputs.inventory) == 1 else f"inventory[{i}]"
        path = _existing(root, key, spec.path)
        if path.suffix.lower() in (".csv", ".txt"):
            crs, bounds = _check_csv_points(path, key, spec, analysis_crs)
        else:
            crs, bounds = _check_vector(path, key, spec.layer)
            _check_vector_labels(path, key, spec)
        if bounds is None:  # an inventory without a single landslide is a mistake, not a region
            raise RegionError(
                f"{path}: inputs.{key} has no {'rows (only a header)' if path.suffix.lower() in ('.csv', '.txt') else 'features'}; "
                "add the landslides (points or polygons) or remove the inventory entry"
            )
        overlaps(key, path, crs, bounds)
    return region


def _check_metric(crs: CRS, where: Path) -> None:
    """Terrain needs cells in metres with true distances: refuse feet and (Web) Mercator."""
    import pyproj

    units = crs.linear_units_factor if crs.is_projected else None
    if units is not None and abs(units[1] - 1.0) > 1e-9:
        raise RegionError(
            f"{where}: CRS {crs.to_string()} has units of {units[0]}, not metres; "
            "set [region] crs to a metric projected CRS such as the UTM zone (\"EPSG:326NN\")"
        )
    method = ""
    try:
        operation = pyproj.CRS.from_wkt(crs.to_wkt()).coordinate_operation
        method = operation.method_name if operation else ""
    except pyproj.exceptions.CRSError:
        pass
    if method.startswith(("Mercator", "Popular Visualisation")):
        raise RegionError(
            f"{where}: CRS {crs.to_string()} is a Mercator projection whose scale grows with latitude, "
            "so slopes and distances would be wrong; set [region] crs to the UTM zone (\"EPSG:326NN\") or another "
            "equidistant-enough metric CRS"
        )


def _fmt_bounds(b: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.0f}" for v in b) + ")"


def _input_paths(manifest: Manifest) -> list[tuple[str, str]]:
    """(key, relative path) of every file the manifest names, classes tables included."""
    inputs = manifest.inputs
    out: list[tuple[str, str]] = []
    for name in ("dem", "imagery", "imagery_pre", *RASTER_THEMES, *CATEGORICAL_THEMES, *VECTOR_THEMES):
        spec = getattr(inputs, name)
        if spec is None:
            continue
        out.append((name, spec.path))
        if getattr(spec, "classes", None):
            out.append((f"{name}.classes", spec.classes))
    for i, spec in enumerate(inputs.inventory):
        out.append(("inventory" if len(inputs.inventory) == 1 else f"inventory[{i}]", spec.path))
    return out


def _check_containment(root: Path, manifest: Manifest) -> None:
    """Every input path stays inside the region folder (links resolved), unless ``allow_outside``."""
    if manifest.region.allow_outside:
        return
    for key, relative in _input_paths(manifest):
        path = (root / relative).resolve()
        if not path.is_relative_to(root):
            raise RegionError(
                f"{root / MANIFEST}: inputs.{key} = {relative!r} points outside the region folder; move the file "
                "into the folder, or set `allow_outside = true` under [region] if that is intended"
            )


def _check_has_data(path: Path, key: str, band: int = 1, nodata: float | None = None,
                    default_nodata: float | None = None) -> None:
    """Refuse a raster without a single valid cell (all nodata), block by block: a usual raster
    stops at its first block, and memory stays one block whatever the raster's size."""
    with rasterio.open(path) as src:
        nd = nodata if nodata is not None else (src.nodata if src.nodata is not None else default_nodata)
        for _, window in src.block_windows(band):
            data = src.read(band, window=window, masked=True)
            values = data.compressed()
            valid = np.isfinite(values) if values.dtype.kind == "f" else np.ones(values.shape, bool)
            if nd is not None and np.isfinite(nd):
                valid &= values != nd
            if valid.any():
                return
    raise RegionError(
        f"{path}: inputs.{key} has no valid cells (all nodata{'' if nd is None else f' = {nd:g}'}); "
        "check the file and its nodata value"
    )


def _existing(root: Path, key: str, relative: str) -> Path:
    path = (root / relative).resolve()
    if not path.is_file():
        raise RegionError(f"{path}: inputs.{key} file not found; fix the path in {root / MANIFEST} (paths are relative to the region folder)")
    return path


def _check_raster(path: Path, key: str, band: int = 1) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if src.crs is None:
                    raise RegionError(f"{path}: inputs.{key} raster has no CRS; assign one (e.g. `gdal_edit.py -a_srs EPSG:32649 {path.name}`)")
                if band > src.count:
                    raise RegionError(f"{path}: inputs.{key} asks for band {band} but the file has {src.count}; fix `band`")
                # Read the last block row of every band: a truncated file fails here, not mid-build.
                h = min(src.height, 256)
                window = rasterio.windows.Window(0, src.height - h, src.width, h)
                src.read(window=window)
                return {
                    "crs": src.crs,
                    "bounds": tuple(src.bounds),
                    "count": src.count,
                    "descriptions": src.descriptions,
                    "dtype": src.dtypes[0],
                }
    except NotGeoreferencedWarning as exc:
        raise RegionError(f"{path}: inputs.{key} raster has no CRS or georeference; assign one (e.g. `gdal_edit.py -a_srs EPSG:32649 -a_ullr ...`)") from exc
    except RasterioIOError as exc:
        raise RegionError(f"{path}: inputs.{key} is unreadable or truncated ({_short(exc)}); re-export or re-download the file") from exc
    except rasterio.errors.RasterioError as exc:
        raise RegionError(f"{path}: inputs.{key} is unreadable ({_short(exc)}); re-export it as a GeoTIFF") from exc


def _short(exc: Exception, limit: int = 160) -> str:
    """The first line of an error, without a leading file path (the message names the file), cut
    at a word boundary."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    text = re.sub(r"^'?/[^\s']*'?:?\s*", "", text) or type(exc).__name__
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(".,;:") + " ..."


def _check_bands(path: Path, info: dict[str, Any], bands: list[str], key: str = "imagery") -> None:
    if info["count"] != len(bands):
        raise RegionError(
            f"{path}: inputs.{key} lists {len(bands)} bands {bands} but the file has {info['count']}; "
            "make `bands` name every band of the file in order"
        )
    described = [d for d in info["descriptions"] if d]
    if len(described) == info["count"]:
        normal = [d.upper().replace("B0", "B") for d in described]
        wanted = [b.upper().replace("B0", "B") for b in bands]
        if set(normal) == set(wanted) and normal != wanted:
            raise RegionError(
                f"{path}: inputs.{key} bands {bands} are not in the file's order {described}; "
                "list `bands` in the file's order"
            )


def _check_vector(path: Path, key: str, layer: str | None) -> tuple[CRS, tuple[float, ...] | None]:
    import pyogrio

    if path.stat().st_size == 0:
        raise RegionError(f"{path}: inputs.{key} is an empty file (0 bytes); re-export it (GeoPackage, Shapefile, GeoJSON)")
    try:
        info = pyogrio.read_info(path, layer=layer)
    except Exception as exc:  # pyogrio raises DataSourceError / DataLayerError
        raise RegionError(f"{path}: inputs.{key} is not a readable vector file ({_short(exc)}); use any OGR format (GeoPackage, Shapefile, GeoJSON)") from exc
    if not info.get("crs"):
        raise RegionError(f"{path}: inputs.{key} has no CRS; set one (e.g. `ogr2ogr -a_srs EPSG:32649 out.gpkg {path.name}`)")
    if info.get("features", 0) == 0:
        return CRS.from_user_input(info["crs"]), None
    bounds = info.get("total_bounds")
    if bounds is None:
        bounds = pyogrio.read_bounds(path, layer=layer)
        bounds = (float(np.min(bounds[0])), float(np.min(bounds[1])), float(np.max(bounds[2])), float(np.max(bounds[3])))
    return CRS.from_user_input(info["crs"]), tuple(float(v) for v in bounds)


def _check_csv_points(
    path: Path, key: str, spec: InventoryInput, analysis_crs: CRS
) -> tuple[CRS, tuple[float, float, float, float] | None]:
    """Columns, numeric coordinates, readable labels; returns (CRS, bounds) for the overlap check."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except Exception as exc:
        raise RegionError(f"{path}: inputs.{key} is not a readable CSV ({_short(exc)})") from exc
    columns = {}
    for option, default in (("x", "x"), ("y", "y")):
        column = getattr(spec, option) or default
        if column not in table.columns:
            raise RegionError(f"{path}: inputs.{key} has no column {column!r} (columns: {list(table.columns)}); set `{option} = \"...\"`")
        values = pd.to_numeric(table[column], errors="coerce")
        bad = values.isna() | ~np.isfinite(values)
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise RegionError(
                f"{path}: inputs.{key} column {column!r} row {row + 2} is not a number ({table[column].iloc[row]!r}); fix or drop that row"
            )
        columns[option] = values
    if spec.label:
        if spec.label not in table.columns:
            raise RegionError(f"{path}: inputs.{key} has no label column {spec.label!r} (columns: {list(table.columns)}); fix `label`")
        _check_labels(path, key, spec.label, table[spec.label])
    crs = analysis_crs
    if spec.crs:
        try:
            crs = CRS.from_user_input(spec.crs)
        except Exception as exc:
            raise RegionError(f"{path}: inputs.{key} crs {spec.crs!r} is not a CRS; use e.g. \"EPSG:32717\"") from exc
    if len(table) == 0:
        return crs, None
    xs, ys = columns["x"], columns["y"]
    return crs, (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def _check_vector_labels(path: Path, key: str, spec: InventoryInput) -> None:
    import pyogrio

    info = pyogrio.read_info(path, layer=spec.layer)
    column = spec.label or ("label" if "label" in list(info.get("fields", [])) else None)
    if column is None:
        return
    if column not in list(info.get("fields", [])):
        raise RegionError(f"{path}: inputs.{key} has no label column {column!r} (fields: {list(info.get('fields', []))}); fix `label`")
    frame = pyogrio.read_dataframe(path, layer=spec.layer, columns=[column], read_geometry=False)
    _check_labels(path, key, column, frame[column])


def _check_labels(path: Path, key: str, column: str, values: Any) -> None:
    for i, value in enumerate(values):
        try:
            parse_label(value)
        except ValueError as exc:
            raise RegionError(f"{path}: inputs.{key} column {column!r} row {i + 1}: {exc}; use true/false (or 1/0)") from exc


def read_classes(path: Path, key: str) -> dict[int, str]:
    """A class table CSV with columns ``code,name``."""
    import pandas as pd

    try:
        table = pd.read_csv(path)
    except Exception as exc:
        raise RegionError(f"{path}: inputs.{key}.classes is not a readable CSV ({_short(exc)})") from exc
    columns = {c.lower().strip(): c for c in table.columns}
    if "code" not in columns or "name" not in columns:
        raise RegionError(f"{path}: inputs.{key}.classes needs columns code,name (has {list(table.columns)})")
    return {int(c): str(n) for c, n in zip(table[columns["code"]], table[columns["name"]], strict=True)}


def parse_label(value: Any) -> bool:
    """``TRUE``/``true``/``1``/``yes`` -> True; ``FALSE``/``0``/``no`` -> False."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, float, np.integer, np.floating)):
        # Only 1/0: a blank cell (NaN) or another code (e.g. 2 = landslide in some exports) is an error.
        if value == 1:
            return True
        if value == 0:
            return False
        raise ValueError(f"cannot read {value!r} as true/false")
    text = "" if value is None else str(value).strip().lower()
    if text in ("true", "t", "1", "1.0", "yes", "y", "landslide"):
        return True
    if text in ("false", "f", "0", "0.0", "no", "n", "non-landslide"):
        return False
    raise ValueError(f"cannot read {value!r} as true/false")
